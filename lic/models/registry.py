"""Architectures by name (CompressAI-style ``@register``), and building one from its config.

    @register("mbt2018-mean")
    class Mbt2018Mean(LicModel, ...): ...

    net = build("mbt2018-mean", {"N": 128, "M": 192})      # what weights and checkpoints record
"""
from __future__ import annotations

from typing import Callable

from lic import container
from lic.models.base import LicModel

ARCHITECTURES: dict[str, type[LicModel]] = {}

# operations every registered class must define itself (the base only documents them)
_REQUIRED = ("forward", "encode_latent", "decode_latent", "latent_channels")


def register(name: str) -> Callable[[type[LicModel]], type[LicModel]]:
    """Class decorator: register an architecture under ``name``.  The container's model table
    (``lic.container.MODELS``, append-only) must already list at least one id for it: files name
    their model by id."""
    def wrap(cls: type[LicModel]) -> type[LicModel]:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
            raise ValueError(f"architecture {name!r} is already registered ({ARCHITECTURES[name].__name__})")
        if not any(m.arch == name for m in container.MODELS.values()):
            raise ValueError(f"architecture {name!r} has no model id in lic.container.MODELS: append one")
        missing = [op for op in _REQUIRED if _defined_by(cls, op) is LicModel]
        if missing:
            raise TypeError(f"{cls.__name__} does not implement {', '.join(missing)}")
        cls.arch = name
        ARCHITECTURES[name] = cls
        return cls
    return wrap


def _defined_by(cls: type, attr: str) -> type | None:
    for k in cls.__mro__:
        if attr in vars(k):
            return k
    return None


def get(arch: str) -> type[LicModel]:
    """The class registered as ``arch``; KeyError listing the known names."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r} (known: {', '.join(sorted(ARCHITECTURES))})") from None


def build(arch: str, config: dict | None = None) -> LicModel:
    """A fresh network of architecture ``arch`` with these hyperparameters (its ``Config``'s
    ``to_dict`` form; None: the defaults)."""
    cls = get(arch)
    return cls(cls.Config.from_dict(config or {}))
