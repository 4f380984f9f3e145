"""Evaluation harness: encode every image with every codec at every setting.

A *codec* is any object with

* ``name: str`` (unique; used as curve label and file name),
* ``settings: Sequence`` (one RD point per setting, e.g. JPEG qualities or the
  learned codec's compression modes),
* ``encode(pixels: np.ndarray, setting) -> bytes``: pixels are uint8 (H, W, 3);
  the return value is the *whole* file (bpp counts every byte of it),
* ``decode(data: bytes) -> np.ndarray``: back to uint8 (H, W, 3) of the same size,
* optionally ``description: str``,
* optionally ``cache_id(setting) -> str``: a deterministic codec's promise that its file at
  ``setting`` depends on nothing but this string and the pixels; with a :class:`RecordCache`
  the harness then reuses the result of an earlier run (the classical baselines have it; the
  learned codec, whose weights change between runs, does not).

For each (image, codec, setting) the harness records bytes, bpp, PSNR, MS-SSIM and
encode / decode wall-clock seconds (:class:`ImageRecord`); per setting it averages
over images (CompressAI convention: per-image PSNR, then the mean) into an
:class:`~lic.eval.metrics.RDCurve`.  :func:`evaluate` can write, into one folder:

* ``per_image.csv``: one row per (codec, setting, image),
* ``<codec>.json``: CompressAI's results schema, one file per codec,
* ``rd_psnr.{png,svg}``, ``rd_msssim.{png,svg}``: RD plots (published curves dashed),
* ``bd_rate.md`` / ``bd_rate.json``: BD-rates of each curve vs JPEG and vs each other.

Its command line is ``evaluate.py`` (:mod:`lic.eval.run`); where the images come from is
:mod:`lic.eval.datasets`.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from lic.eval.bdrate import BDTable, bd_table
from lic.eval.datasets import read_pixels
from lic.eval.metrics import RDCurve, ms_ssim, psnr

__all__ = [
    "Codec",
    "EvalResult",
    "ImageRecord",
    "RecordCache",
    "aggregate",
    "evaluate",
    "run_codecs",
    "write_outputs",
]


@runtime_checkable
class Codec(Protocol):
    """What the harness needs of a codec (structural: no base class required)."""

    name: str
    settings: Sequence[Any]

    def encode(self, pixels: np.ndarray, setting: Any) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...


# --------------------------------------------------------------------------- records


@dataclass
class ImageRecord:
    """One image coded by one codec at one setting."""

    codec: str
    setting: Any
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_seconds: float
    decode_seconds: float


ImageSpec = Union[str, Path, tuple[str, np.ndarray]]


def _metrics_id() -> str:
    """What decides PSNR / MS-SSIM besides the pixels: lic's metrics code and the libraries under it."""
    import inspect

    import pytorch_msssim
    import torch

    from lic.eval import metrics

    src = hashlib.sha256(inspect.getsource(metrics).encode()).hexdigest()[:16]
    return f"metrics {src}, pytorch_msssim {getattr(pytorch_msssim, '__version__', '?')}, torch {torch.__version__}"


class RecordCache:
    """Records of deterministic codecs (those with ``cache_id``) from earlier runs, in one SQLite
    file, so that re-running an evaluation codes only what changed (on Kodak the five classical
    codecs take most of ``evaluate.py``'s time).

    The key is a hash of the codec's ``cache_id(setting)`` (its libraries' versions and options),
    the image's pixels (sha256 of shape and bytes), whether MS-SSIM is measured, and
    :func:`_metrics_id` (the metrics code and its libraries), so a new Pillow, libwebp or metric
    misses the cache instead of returning a stale number.  A record keeps the encode / decode
    seconds of the run that measured it.  Writers replace whole rows; several runs may share a file.
    """

    SCHEMA = 1

    def __init__(self, path: str | Path):
        import sqlite3

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
        self._db.commit()
        self._metrics = _metrics_id()
        self.hits = self.misses = 0

    def key(self, codec_id: str, pixels_sha: str, with_ms_ssim: bool) -> str:
        parts = [self.SCHEMA, codec_id, pixels_sha, bool(with_ms_ssim), self._metrics]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT record FROM records WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, record: "ImageRecord") -> None:
        self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", (key, json.dumps(asdict(record))))
        self._db.commit()

    def summary(self) -> str:
        return f"record cache {self.path}: {self.hits} classical-codec results reused, {self.misses} coded"

    def close(self) -> None:
        self._db.close()


def pixels_sha(pixels: np.ndarray) -> str:
    """sha256 of an image's shape, dtype and bytes (the record cache's image key)."""
    h = hashlib.sha256(repr((pixels.shape, str(pixels.dtype))).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _center_crop(pixels: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return pixels
    h, w = pixels.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(pixels[top : top + ch, left : left + cw])


def _load_images(images: Iterable[ImageSpec], crop: int | None) -> list[tuple[str, np.ndarray]]:
    out = []
    for spec in images:
        if isinstance(spec, tuple):
            name, pixels = spec
            pixels = np.asarray(pixels)
        else:
            name, pixels = Path(spec).stem, read_pixels(spec)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"{name}: expected uint8 HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
        out.append((str(name), _center_crop(pixels, crop)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"image names must be unique: {names}")
    return out


def _code_one(codec: Any, setting: Any, name: str, pixels: np.ndarray, with_ms_ssim: bool) -> ImageRecord:
    """Encode, decode and measure one (codec, setting, image)."""
    t0 = time.perf_counter()
    data = codec.encode(pixels, setting)
    t1 = time.perf_counter()
    rec = codec.decode(bytes(data))
    t2 = time.perf_counter()
    rec = np.asarray(rec)
    if rec.shape != pixels.shape or rec.dtype != np.uint8:
        raise ValueError(
            f"{codec.name} @ {setting} on {name}: decoded {rec.dtype} "
            f"{rec.shape}, expected uint8 {pixels.shape}"
        )
    h, w = pixels.shape[:2]
    return ImageRecord(
        codec=codec.name,
        setting=setting,
        image=name,
        width=int(w),
        height=int(h),
        bytes=len(data),
        bpp=8.0 * len(data) / (h * w),
        psnr=psnr(pixels, rec),
        ms_ssim=ms_ssim(pixels, rec) if with_ms_ssim else math.nan,
        encode_seconds=t1 - t0,
        decode_seconds=t2 - t1,
    )


_WORKER: dict[str, Any] = {}   # what a worker process of run_codecs was given, once


def _worker_init(codecs: Sequence[Any], loaded: list[tuple[str, np.ndarray]], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(codecs=codecs, loaded=loaded)


def _worker_code(ci: int, setting: Any, ii: int, with_ms_ssim: bool) -> ImageRecord:
    name, pixels = _WORKER["loaded"][ii]
    return _code_one(_WORKER["codecs"][ci], setting, name, pixels, with_ms_ssim)


def run_codecs(
    images: Iterable[ImageSpec],
    codecs: Sequence[Any],
    *,
    with_ms_ssim: bool = True,
    progress: bool = True,
    crop: int | None = None,
    cache: RecordCache | None = None,
    workers: int = 1,
) -> list[ImageRecord]:
    """Encode / decode every image with every codec at every setting; one record each.

    ``images``: paths, or ``(name, pixels)`` pairs.  ``crop``: centre-crop each image
    to at most ``crop`` x ``crop`` first (for quick runs).  ``cache``: reuse (and store) the
    records of codecs that have ``cache_id``.  ``workers`` > 1: code in that many processes
    (spawned, each given the codecs and images once, with torch's threads shared out among
    them); the records are the same and in the same order, but encode / decode seconds are
    then measured side by side with other work.

    Progress: one bar per codec (its images x settings still to code), so that each bar's rate
    and time left come from jobs of one kind: the learned codec takes a second or a minute an
    image where a classical one takes milliseconds, and one bar over both promised hours at the
    start and minutes at the end.
    """
    from tqdm import tqdm

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    loaded = _load_images(images, crop)
    shas = {name: pixels_sha(px) for name, px in loaded} if cache is not None else {}
    names = [c.name for c in codecs]
    if len(set(names)) != len(names):
        raise ValueError(f"codec names must be unique: {names}")
    records: list[ImageRecord | None] = []
    jobs: list[tuple[int, int, Any, int, str | None]] = []   # (slot, codec, setting, image, cache key)
    for ci, codec in enumerate(codecs):
        for setting in codec.settings:
            cache_id = getattr(codec, "cache_id", None) if cache is not None else None
            codec_id = cache_id(setting) if cache_id is not None else None
            for ii, (name, _) in enumerate(loaded):
                key = cache.key(codec_id, shas[name], with_ms_ssim) if codec_id is not None else None
                hit = cache.get(key) if key is not None else None
                if hit is not None:
                    cache.hits += 1
                    records.append(ImageRecord(**{**hit, "codec": codec.name, "setting": setting, "image": name}))
                else:
                    records.append(None)
                    jobs.append((len(records) - 1, ci, setting, ii, key))

    def done(job: tuple[int, int, Any, int, str | None], record: ImageRecord) -> None:
        records[job[0]] = record
        if job[4] is not None:
            cache.misses += 1
            cache.put(job[4], record)

    left = collections.Counter(job[1] for job in jobs)   # codec -> jobs not finished
    bars: dict[int, Any] = {}

    def started(ci: int, setting: Any) -> None:
        if ci not in bars:
            bars[ci] = tqdm(total=left[ci], desc=codecs[ci].name, disable=not progress, unit="img",
                            dynamic_ncols=True)
        bars[ci].set_postfix_str(f"setting {setting}", refresh=False)

    def finished(ci: int) -> None:
        bars[ci].update(1)
        left[ci] -= 1
        if not left[ci]:
            bars.pop(ci).close()

    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                _, ci, setting, ii, _ = job
                started(ci, setting)
                done(job, _code_one(codecs[ci], setting, *loaded[ii], with_ms_ssim))
                finished(ci)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            import torch

            threads = max(1, torch.get_num_threads() // workers)
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(list(codecs), loaded, threads)) as pool:
                futures = {pool.submit(_worker_code, job[1], job[2], job[3], with_ms_ssim): job for job in jobs}
                for fut in as_completed(futures):
                    job = futures[fut]
                    started(job[1], job[2])
                    done(job, fut.result())
                    finished(job[1])
    finally:
        for bar in bars.values():
            bar.close()
    return [r for r in records if r is not None]


def aggregate(records: Sequence[ImageRecord], codecs: Sequence[Any] | None = None) -> list[RDCurve]:
    """One curve per codec, one point per setting: the mean over that setting's images.

    With ``codecs``, curves follow their order, settings follow ``codec.settings`` and
    descriptions come from ``codec.description``; otherwise order of first appearance.
    """
    groups: dict[str, dict[Any, list[ImageRecord]]] = {}
    for r in records:
        groups.setdefault(r.codec, {}).setdefault(_setting_key(r.setting), []).append(r)
    by_name = {c.name: c for c in codecs} if codecs is not None else {}
    order = [c.name for c in codecs if c.name in groups] if codecs is not None else list(groups)
    curves = []
    for cname in order:
        per_setting = groups[cname]
        codec = by_name.get(cname)
        keys = (
            [_setting_key(s) for s in codec.settings if _setting_key(s) in per_setting]
            if codec is not None
            else list(per_setting)
        )
        mean = lambda rs, f: float(np.mean([getattr(r, f) for r in rs]))  # noqa: E731
        curves.append(
            RDCurve(
                name=cname,
                description=str(getattr(codec, "description", cname)) if codec else cname,
                settings=[per_setting[k][0].setting for k in keys],
                bpp=[mean(per_setting[k], "bpp") for k in keys],
                psnr=[mean(per_setting[k], "psnr") for k in keys],
                ms_ssim=[mean(per_setting[k], "ms_ssim") for k in keys],
                encoding_time=[mean(per_setting[k], "encode_seconds") for k in keys],
                decoding_time=[mean(per_setting[k], "decode_seconds") for k in keys],
            )
        )
    return curves


def _setting_key(s: Any) -> Any:
    try:
        hash(s)
        return s
    except TypeError:
        return repr(s)


# --------------------------------------------------------------------------- outputs


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "codec"


def write_csv(records: Sequence[ImageRecord], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [f.name for f in fields(ImageRecord)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            row = asdict(r)
            for k in ("bpp", "psnr", "ms_ssim"):
                row[k] = repr(float(row[k]))
            for k in ("encode_seconds", "decode_seconds"):
                row[k] = f"{row[k]:.6f}"
            w.writerow(row)
    return path


def read_csv(path: str | Path) -> list[ImageRecord]:
    """Records back from :func:`write_csv` (settings come back as int/float/str)."""

    def parse_setting(s: str) -> Any:
        for t in (int, float):
            try:
                return t(s)
            except ValueError:
                pass
        return s

    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append(
                ImageRecord(
                    codec=row["codec"],
                    setting=parse_setting(row["setting"]),
                    image=row["image"],
                    width=int(row["width"]),
                    height=int(row["height"]),
                    bytes=int(row["bytes"]),
                    bpp=float(row["bpp"]),
                    psnr=float(row["psnr"]),
                    ms_ssim=float(row["ms_ssim"]),
                    encode_seconds=float(row["encode_seconds"]),
                    decode_seconds=float(row["decode_seconds"]),
                )
            )
    return out


def default_anchor(labels: Sequence[str]) -> str | None:
    """``JPEG (published)`` if present, else measured ``JPEG``, else the first label."""
    for want in ("JPEG (published)", "JPEG"):
        if want in labels:
            return want
    return labels[0] if labels else None


@dataclass
class EvalResult:
    records: list[ImageRecord]
    curves: list[RDCurve]
    references: list[RDCurve] = field(default_factory=list)
    bd: BDTable | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def curve(self, label: str) -> RDCurve:
        for c in self.curves + self.references:
            if c.label == label or c.name == label:
                return c
        raise KeyError(label)


def write_outputs(
    out_dir: str | Path,
    records: Sequence[ImageRecord],
    curves: Sequence[RDCurve],
    references: Sequence[RDCurve] = (),
    *,
    anchor: str | None = None,
    title: str | None = None,
) -> tuple[BDTable | None, dict[str, Path]]:
    """Write CSV, per-codec JSON, RD plots and the BD table into ``out_dir``."""
    from lic.eval.plot import plot_rd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"csv": write_csv(records, out / "per_image.csv")}
    for c in curves:
        p = out / f"{slugify(c.name)}.json"
        p.write_text(json.dumps(c.to_compressai_dict(), indent=2, allow_nan=False) + "\n")
        files[f"json:{c.name}"] = p
    everything = list(curves) + list(references)
    suffix = f" - {title}" if title else ""
    for metric, stem in (("psnr", "rd_psnr"), ("ms-ssim", "rd_msssim")):
        for p in plot_rd(everything, out / stem, metric=metric,
                         title=("PSNR" if metric == "psnr" else "MS-SSIM") + " vs rate" + suffix):
            files[f"{stem}.{p.suffix[1:]}"] = p
    table = None
    usable = [c for c in everything if sum(math.isfinite(p) for p in c.psnr) >= 2]
    if len(usable) >= 2:
        labels = [c.label for c in usable]
        table = bd_table(usable, anchor=anchor or default_anchor(labels))
        files["bd.md"] = out / "bd_rate.md"
        files["bd.md"].write_text(table.to_markdown())
        files["bd.json"] = out / "bd_rate.json"
        files["bd.json"].write_text(table.to_json() + "\n")
    return table, files


def evaluate(
    images: Iterable[ImageSpec],
    codecs: Sequence[Any],
    out_dir: str | Path | None = None,
    *,
    references: Sequence[RDCurve] = (),
    anchor: str | None = None,
    with_ms_ssim: bool = True,
    progress: bool = True,
    crop: int | None = None,
    title: str | None = None,
    cache: RecordCache | None = None,
    workers: int = 1,
) -> EvalResult:
    """Run every codec on every image, aggregate, and (with ``out_dir``) write everything.

    ``references``: extra curves drawn and tabulated beside the measured ones (e.g.
    :func:`lic.eval.plot.load_reference_curves` for Kodak; only meaningful when the
    images are the same full-size set).  ``anchor``: label of the BD-rate anchor
    (default "JPEG (published)" if among the curves, else "JPEG").  ``cache``: see
    :class:`RecordCache`.  ``workers``: see :func:`run_codecs`.
    """
    records = run_codecs(images, codecs, with_ms_ssim=with_ms_ssim, progress=progress, crop=crop, cache=cache,
                         workers=workers)
    curves = aggregate(records, codecs)
    result = EvalResult(records=records, curves=curves, references=list(references))
    if out_dir is not None:
        result.bd, result.files = write_outputs(
            out_dir, records, curves, references, anchor=anchor, title=title
        )
    return result
