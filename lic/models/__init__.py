from lic.models.cheng2020 import Cheng2020GMM, Compressed, ModelConfig, RDOutput

__all__ = ["Cheng2020GMM", "Compressed", "ModelConfig", "RDOutput"]
