"""lic: learned image compression (training, evaluation, and the .lic codec)."""
import warnings

__version__ = "0.1.0"

# compressai 1.2.8 imports torch_geometric (for its point-cloud datasets), and that import calls
# torch.jit.script, deprecated in torch 2.14: a FutureWarning on every run that no user of lic can
# act on. Only that message is silenced; every other warning is shown as usual.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
