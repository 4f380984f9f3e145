"""Read an offline wandb run here, without an account or the network.

    python -m lic.training.show_run RUN                     # what the run holds
    python -m lic.training.show_run RUN --config            # and its whole config
    python -m lic.training.show_run RUN --plot curves.png --keys train/loss val/loss

RUN: a training run's folder (its newest ``wandb/offline-run-*``), an ``offline-run-*`` folder or
its ``run-*.wandb`` file.  Prints the run's name, group and job type, the config's groups, every
logged metric (points, first and last value), the media (reconstruction panels, RD pictures and
RD tables: their files under ``files/media``) and the newest RD table.  ``--plot`` draws scalars
against the step.  ``wandb sync RUN`` uploads the same run to a wandb server, if wanted.

The ``.wandb`` file is wandb's transaction log: LevelDB's log format (32 KiB blocks of records,
each with a CRC-32, a length and a type: full, first, middle or last part), after a 7-byte
header (``:W&B``, 0xBEE1, version 0); each record is a ``wandb.proto.wandb_internal_pb2.Record``.
wandb (0.31) reads it only in its Go core, so the few lines of ``read_records`` do it here.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")   # crc32, length, type
_FILE_HEADER = struct.Struct("<4sHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class RunFileError(ValueError):
    """Not a readable wandb run."""


def read_records(path: str | Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order (a torn last record is dropped)."""
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise RunFileError(f"{path}: too short for a wandb run file")
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise RunFileError(f"{path}: not a wandb run file (header {data[:7]!r})")
    pos, parts = _FILE_HEADER.size, []
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:   # the tail of a block too short for a header is padding
            pos += left
            continue
        crc, length, kind = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size: pos + _HEADER.size + length]
        if len(body) < length or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            return   # the run was still writing: the log ends here
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            raise RunFileError(f"{path}: checksum mismatch at byte {pos}")
        pos += _HEADER.size + length
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            parts = [body]
        else:
            parts.append(body)
            if kind == _LAST:
                yield b"".join(parts)
                parts = []


@dataclass
class Run:
    folder: Path
    info: dict = field(default_factory=dict)           # id, name, group, job_type, project
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per logged row
    summary: dict = field(default_factory=dict)

    def scalars(self) -> dict[str, list[tuple[float, float]]]:
        """key -> [(step, value)], step = Lightning's trainer/global_step where logged, else wandb's _step."""
        out: dict[str, list[tuple[float, float]]] = {}
        for row in self.history:
            step = row.get("trainer/global_step", row.get("_step"))
            for k, v in row.items():
                if k.startswith("_") or k == "trainer/global_step" or isinstance(v, (dict, list, str)) or v is None:
                    continue
                out.setdefault(k, []).append((step, float(v)))
        return out

    def media(self) -> dict[str, list[tuple[float, dict]]]:
        """key -> [(step, media record)] for images and tables (``path`` relative to ``files/``)."""
        out: dict[str, list[tuple[float, dict]]] = {}
        for row in self.history:
            step = row.get("trainer/global_step", row.get("_step"))
            for k, v in row.items():
                if isinstance(v, dict) and v.get("_type") in ("image-file", "table-file", "images/separated"):
                    out.setdefault(k, []).append((step, v))
        return out


def _find_run_file(path: Path) -> Path:
    if path.is_file():
        return path
    runs = sorted(path.glob("wandb/offline-run-*")) or sorted(path.glob("offline-run-*"))
    folder = runs[-1] if runs else path
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise RunFileError(f"no offline wandb run in {path} (looked for wandb/offline-run-*/run-*.wandb)")
    return files[-1]


def _items(items) -> dict:
    """wandb's key / nested_key + value_json items -> a dict."""
    out: dict = {}
    for it in items:
        keys = list(it.nested_key) or [it.key]
        d = out
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = json.loads(it.value_json)
    return out


def load_run(path: str | Path) -> Run:
    from wandb.proto import wandb_internal_pb2

    run_file = _find_run_file(Path(path))
    run = Run(folder=run_file.parent)
    for raw in read_records(run_file):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.info = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "job_type": r.job_type,
                        "project": r.project}
            if r.config.update:
                run.config.update({k: v.get("value", v) if isinstance(v, dict) else v
                                   for k, v in _items(r.config.update).items()})
        elif kind == "config":
            run.config.update({k: v.get("value", v) if isinstance(v, dict) else v
                               for k, v in _items(rec.config.update).items()})
        elif kind == "history":
            run.history.append(_items(rec.history.item))
        elif kind == "summary":
            run.summary.update(_items(rec.summary.update))
    run.config.pop("_wandb", None)
    return run


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def describe(run: Run, full_config: bool = False) -> str:
    lines = [f"run {run.info.get('id', '?')}  name {run.info.get('name') or '-'}  group {run.info.get('group') or '-'}"
             f"  job_type {run.info.get('job_type') or '-'}  ({run.folder})"]
    if full_config:
        lines.append("config:\n" + json.dumps(run.config, indent=2, sort_keys=True, default=str))
    else:
        groups = ", ".join(f"{k}" + (f" ({len(v)} keys)" if isinstance(v, dict) else f"={v}")
                           for k, v in run.config.items())
        lines.append(f"config: {groups or '(none)'}")
    scalars = run.scalars()
    lines.append(f"metrics ({len(scalars)}):")
    for k in sorted(scalars):
        pts = scalars[k]
        lines.append(f"  {k:32s} {len(pts):5d} points  first {_fmt(pts[0][1])} (step {pts[0][0]})  "
                     f"last {_fmt(pts[-1][1])} (step {pts[-1][0]})")
    media = run.media()
    lines.append(f"media ({len(media)}):")
    for k in sorted(media):
        step, rec = media[k][-1]
        path = rec.get("path") or (rec.get("filenames") or ["?"])[0]
        lines.append(f"  {k:32s} {len(media[k]):5d} x {rec['_type']}, newest (step {step}): files/{path}")
    tables = [k for k in media if media[k][-1][1].get("_type") == "table-file"]
    for k in sorted(tables):
        step, rec = media[k][-1]
        table_file = run.folder / "files" / rec["path"]
        if table_file.is_file():
            t = json.loads(table_file.read_text())
            lines.append(f"{k} at step {step}:")
            lines.append("  " + " | ".join(t["columns"]))
            lines += ["  " + " | ".join(str(x) for x in row) for row in t["data"]]
    return "\n".join(lines)


def plot(run: Run, keys: list[str], out: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scalars = run.scalars()
    missing = [k for k in keys if k not in scalars]
    if missing:
        raise RunFileError(f"no metric {missing} in the run (it has {sorted(scalars)})")
    fig = Figure(figsize=(8, 2.6 * len(keys)), dpi=100)
    for i, k in enumerate(keys):
        ax = fig.add_subplot(len(keys), 1, i + 1)
        steps, values = zip(*scalars[k])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_ylabel(k)
        ax.grid(True, alpha=0.3)
    fig.axes[-1].set_xlabel("step")
    FigureCanvasAgg(fig).print_png(str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic.training.show_run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a training run folder, an offline-run-* folder or a run-*.wandb file")
    ap.add_argument("--config", action="store_true", help="print the whole config")
    ap.add_argument("--plot", metavar="PNG", help="draw --keys against the step into this file")
    ap.add_argument("--keys", nargs="+", default=["train/loss", "val/loss"])
    args = ap.parse_args(argv)
    try:
        run = load_run(args.run)
        print(describe(run, args.config))
        if args.plot:
            print(f"plot: {plot(run, args.keys, args.plot)}")
    except (RunFileError, FileNotFoundError) as e:
        print(f"show_run: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # the output piped into head or less, closed early
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
