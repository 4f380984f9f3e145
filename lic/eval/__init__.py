"""Evaluation: metrics, classical baselines, BD-rate, RD plots and the harness.

Submodules: :mod:`~lic.eval.metrics`, :mod:`~lic.eval.baselines`,
:mod:`~lic.eval.bdrate`, :mod:`~lic.eval.datasets`, :mod:`~lic.eval.plot` (matplotlib),
:mod:`~lic.eval.runner` (the harness), :mod:`~lic.eval.run` (the body of ``evaluate.py``), and
two reporting tools for run folders, ``python -m lic.eval.rd_per_mode`` and
``python -m lic.eval.merge_runs``.  The names below are imported lazily, so ``import lic.eval``
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "available_baselines": "baselines",
    "NoOverlapError": "bdrate",
    "bd_psnr": "bdrate",
    "bd_rate": "bdrate",
    "bd_table": "bdrate",
    "ImageQuality": "metrics",
    "RDCurve": "metrics",
    "bpp": "metrics",
    "compare": "metrics",
    "ms_ssim": "metrics",
    "psnr": "metrics",
    "Codec": "runner",
    "EvalResult": "runner",
    "ImageRecord": "runner",
    "aggregate": "runner",
    "evaluate": "runner",
    "resolve_dataset": "datasets",
    "run_codecs": "runner",
    "shared_dir": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lic.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lic.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
