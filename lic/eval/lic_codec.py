"""The learned codec as an evaluation-harness codec: settings are compression modes, and
``encode`` returns the whole ``.lic`` file, produced by the same code path as ``encode.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lic import codec, container
from lic.models.base import can_adapt
from lic.refine import RefineConfig
from lic.weights import LEGACY_ARCH, LoadedModel, fingerprint, ladder_modes, load_checkpoint, load_model, read_registry


@dataclass
class LicCodec:
    """mode -> model. One variable-rate model serves every mode; a sweep of single-rate models
    gives one model per mode (the decoder picks by the mode in the file's header)."""

    name: str
    models: dict[float, LoadedModel]
    description: str = ""
    settings: list[float] = field(default_factory=list)
    refine: RefineConfig | None = None     # the encoder's latent refinement (lic.refine); None: off
    adapt: bool = False                    # send a per-image update of g_s's last layer (lic.adapt)
    recipe: tuple | None = None            # how a builder made it: worker processes rebuild from this

    def __post_init__(self) -> None:
        self.settings = self.settings or sorted(self.models)

    def __reduce__(self):
        """Pickle as the builder call that made it (CompressAI's modules do not pickle), so that
        ``run_codecs(workers=N)`` can hand it to worker processes; each loads the weights itself."""
        if self.recipe is None:
            raise TypeError("this LicCodec was not made by LicCodec.shipped / from_checkpoints, so it "
                            "cannot be sent to worker processes: use workers=1")
        return _rebuild, (self.recipe, self.name, self.refine, self.adapt)

    def encode(self, pixels: np.ndarray, mode: float) -> bytes:
        lm = self.models[mode]     # at the model's own mode for this setting
        return codec.encode_with_net(lm.net, pixels, lm.mode_value, lm.fingerprint,
                                     refine=self.refine, adapt_layer=self.adapt)

    def decode(self, data: bytes) -> np.ndarray:
        header = container.peek_header(data)
        lm = next(m for m in self.models.values() if m.fingerprint == header.fingerprint)
        return codec.decode_with_net(lm.net, data, fp=lm.fingerprint)

    # ------------------------------------------------------------ builders
    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], modes: Sequence[float] | None = None,
                         name: str | None = None, refine: RefineConfig | None = None,
                         adapt: bool = False) -> "LicCodec":
        """From training checkpoints (.ckpt) or exported .safetensors: one variable-rate file,
        or several single-rate files (mode i+1 for the i-th)."""
        models: dict[float, LoadedModel] = {}
        for i, p in enumerate(paths):
            net = load_checkpoint(p)
            lm = LoadedModel(net, net.model_id, net.format.name, i + 1, 0, fingerprint(net), str(p))
            if net.num_modes > 1:
                for m in (modes or range(1, net.num_modes + 1)):
                    models[float(m)] = lm.with_mode(float(m))
            else:
                models[float(modes[i] if modes else i + 1)] = lm
        adapt = _adapts(models, adapt)
        label = name or (f"lic {models[min(models)].name} {widths_label(models[min(models)].net.config)}"
                         + refine_label(refine) + adapt_label(adapt))
        return cls(label, models, description=f"lic checkpoints: {', '.join(map(str, paths))}",
                   refine=_active(refine), adapt=adapt,
                   recipe=("checkpoints", tuple(map(str, paths)), tuple(modes) if modes else None))

    @classmethod
    def shipped(cls, model: str | None = None, modes: Sequence[float] | None = None,
                name: str | None = None, refine: RefineConfig | None = None, adapt: bool = False) -> "LicCodec":
        """The shipped registry model(s): ``model`` None, the registry's mode ladder (``encode.py -q``);
        else the entries of that container model name or architecture, at their own modes."""
        if model is None:
            models = {float(m): load_model(mode=float(m)) for m in (modes or ladder_modes())}
        else:
            entries = [e for e in read_registry() if model in (e["name"], e.get("arch", LEGACY_ARCH))]
            all_modes = sorted({m for e in entries for m in e["modes"]})
            models = {float(m): load_model(mode=float(m), model=model) for m in (modes or all_modes)}
        first = models[min(models)]
        adapt = _adapts(models, adapt)
        label = name or f"lic {first.name} {widths_label(first.net.config)}" + refine_label(refine) + adapt_label(adapt)
        return cls(label, models, description=f"lic shipped weights: weights/{Path(first.source).name}",
                   refine=_active(refine), adapt=adapt, recipe=("shipped", model, tuple(modes) if modes else None))


def _rebuild(recipe: tuple, name: str, refine: RefineConfig | None, adapt: bool) -> LicCodec:
    kind, source, modes = recipe
    if kind == "shipped":
        return LicCodec.shipped(source, modes, name, refine=refine, adapt=adapt)
    return LicCodec.from_checkpoints(list(source), modes, name, refine=refine, adapt=adapt)


def _adapts(models: dict[float, LoadedModel], adapt: bool) -> bool:
    """The per-image last-layer update is asked for and every model can send one (a model without
    ``last_layer`` is coded without it, so its curve is not labelled with it)."""
    return adapt and all(can_adapt(m.net) for m in models.values())


def _active(refine: RefineConfig | None) -> RefineConfig | None:
    return refine if refine is not None and refine.steps > 0 else None


def refine_label(refine: RefineConfig | None) -> str:
    """What a curve label adds for a refining encoder: ", refined (50 steps)" (", refined (50 steps,
    sga)" for another stand-in than the default), or nothing."""
    if not _active(refine):
        return ""
    other = refine.proxy != RefineConfig().proxy
    return f", refined ({refine.steps} steps" + (f", {refine.proxy}" if other else "") + ")"


def adapt_label(adapt: bool) -> str:
    """What a curve label adds for an encoder that sends per-image last-layer updates (lic.adapt)."""
    return ", per-image last layer" if adapt else ""


def widths_label(config) -> str:
    """N=64, or N=64 M=192 where y is wider than the transforms (N_s=... where g_s's entry is)."""
    n_s = getattr(config, "N_s", config.N)
    return (f"N={config.N}" + (f" M={config.M}" if config.M != config.N else "")
            + (f" N_s={n_s}" if n_s != config.N else ""))
