"""The architectures ``lic`` trains, codes and evaluates, by name (``python -m lic.models`` lists
them).  Every module of this package is imported here, so a new architecture is one new file
that registers itself (``@register("name")``, ``lic.models.registry``) plus one config
(``configs/model/NAME.yaml``) and its id in the container's table (docs/models.md)."""
from __future__ import annotations

import importlib
import pkgutil

from lic.models.base import Coded, LicModel, RDOutput, can_adapt, can_refine
from lic.models.registry import ARCHITECTURES, build, get, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("__main__",):
        importlib.import_module(f"{__name__}.{_module.name}")

from lic.models.cheng2020 import Cheng2020GMM, ModelConfig  # noqa: E402  (the shipped model, by its class)

__all__ = ["ARCHITECTURES", "Cheng2020GMM", "Coded", "LicModel", "ModelConfig", "RDOutput", "build",
           "can_adapt", "can_refine", "get", "register"]
