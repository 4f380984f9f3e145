"""Command-line tools ``lic-encode`` (encode.py) and ``lic-decode`` (decode.py).

    lic-encode INPUT [-o OUT] [-q MODE] [--refine STEPS] [--no-adapt] [--model NAME] [--checkpoint PATH]
               [-v | --quiet] [--max-pixels N]
    lic-decode INPUT [-o OUT] [--checkpoint PATH] [-v | --quiet] [--max-pixels N]

INPUT or OUT may be ``-`` for stdin / stdout (with INPUT ``-``, ``-o`` is
required).  The default OUT is INPUT with its extension replaced by ``.lic``
(encode) or ``.png`` (decode); decode writes the format named by OUT's
extension (PNG for stdout).  A ``.lic`` file names its model and mode, so
decode needs no options.  ``--checkpoint`` (or the environment variable
``LIC_CHECKPOINT``) uses the weights in that file instead of the shipped ones.
``--refine STEPS`` makes encoding slower and the file smaller for its quality: the
encoder searches STEPS gradient steps per tile for a better latent than the
analysis transform's (``lic.refine``); any decoder reads the file as usual.
The encoder also refits the synthesis transform's last layer (its 1x1 part) to the image and
sends the update when it pays at the mode's rate-distortion trade-off (``lic.adapt``; such a
file is format version 3); ``--no-adapt`` never sends one (version 2 files, slightly faster).

stdout carries data only.  The tools are quiet by default; ``-v`` prints one
summary line on stderr (the time is wall time after argument parsing,
model loading included).  Notes about input conversions (alpha dropped,
16-bit reduced, ...) are printed on stderr as ``lic: note: ...`` unless
``--quiet``.

Output is written to a temporary file beside OUT and renamed into place, so
a failed run never leaves a partial or truncated OUT behind.

Exit status:
    0  success
    1  runtime failure: missing or bad weights, cannot write the output,
       missing or unwritable output directory, unexpected error
    2  usage error: bad arguments, unknown mode or model, output would
       overwrite the input, unknown output image extension
    3  invalid or corrupt input: unreadable or unsupported image, not a
       .lic file, corrupt .lic file, a .lic file these weights cannot decode

Errors are one line on stderr, ``lic-encode: error: ...`` (a usage error ends
with a hint to ``-h``; argparse's usage block is not printed); set LIC_DEBUG=1
for a traceback.  What is cheap is checked first: the arguments, then the model
and mode against the registry, then whether OUT can be written (a temporary
file is created beside it and removed), then the input is read, and only then
are torch, CompressAI and the weights loaded; so ``--help``, ``--version`` and
every usage error import nothing heavy.  With ``--checkpoint`` the mode is
checked once the weights are read.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Callable, NoReturn, Sequence

from lic import __version__

# The decoder networks run on a fixed number of threads (lic.models.base.DECODER_THREADS);
# OpenMP's default spin-waiting makes that crawl on cores busy with other work. Passive waiting
# changes timing only, never results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["encode_main", "decode_main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3

_EPILOG = """\
exit status:
  0  success
  1  runtime failure (missing or bad weights, cannot write output, unexpected error)
  2  usage error (bad arguments, unknown mode or model, output would overwrite input)
  3  invalid or corrupt input

environment:
  LIC_CHECKPOINT  weights to use when --checkpoint is not given
  LIC_DEBUG=1     print a traceback on errors
"""


class _Exit(Exception):
    """Stop with an exit code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # Library messages carry a "lic: " prefix of their own; the tool prints its name.
    return text[5:] if text.startswith("lic: ") else text


@dataclass(frozen=True)
class _Common:
    """Options shared by both tools, after validation."""

    input: str
    output: str
    checkpoint: str | None
    verbose: bool
    quiet: bool
    max_pixels: int | None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid positive integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of steps: {text!r}") from None
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 0 to 100000: {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid mode: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``prog: error: ...``, a hint to -h),
    without the usage block, like every other error of the tools."""

    def error(self, message: str) -> NoReturn:
        raise _Exit(EXIT_USAGE, f"{message} (see {self.prog} -h)")


def _parser(prog: str, description: str, default_ext: str,
            extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description, epilog=_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="input file, or - for stdin")
    p.add_argument("-o", "--output", metavar="OUT",
                   help=f"output file, or - for stdout (default: INPUT with {default_ext})")
    if extra is not None:
        extra(p)
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="weights file (.safetensors or training .ckpt); default: $LIC_CHECKPOINT, "
                        "else the shipped weights")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="print a summary line on stderr")
    talk.add_argument("--quiet", action="store_true", help="do not print notes on stderr")
    p.add_argument("--max-pixels", metavar="N", type=_positive_int, default=None,
                   help="refuse images with more than N pixels (default 16384*16384)")
    p.add_argument("-V", "--version", action="version", version=f"lic {__version__}")
    return p


def _parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    try:
        return p.parse_args(argv)
    except SystemExit as e:  # --help, --version (0): return, don't exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
        raise _Exit(code, "") from None


def _usage(p: argparse.ArgumentParser, message: str) -> NoReturn:
    p.error(message)


def _common(p: argparse.ArgumentParser, args: argparse.Namespace, default_ext: str) -> _Common:
    src: str = args.input
    if args.output is not None:
        out: str = args.output
    elif src == "-":
        _usage(p, "-o OUT is required when INPUT is - (stdin)")
    else:
        root, ext = os.path.splitext(src)
        out = (root if ext else src) + default_ext
    if out == "":
        _usage(p, "empty output path")
    if out != "-" and src != "-" and _same_file(src, out):
        _usage(p, f"output {out!r} is the input file; choose another with -o")
    if out == "-" and sys.stdout.isatty():
        _usage(p, "refusing to write binary data to a terminal; redirect stdout or use -o")
    checkpoint = args.checkpoint or os.environ.get("LIC_CHECKPOINT") or None
    return _Common(input=src, output=out, checkpoint=checkpoint, verbose=args.verbose,
                   quiet=args.quiet, max_pixels=args.max_pixels)


def _check_writable(path: str) -> None:
    """Fail now, before any work, when OUT cannot be written: its directory must exist, OUT must not
    be a directory, and a temporary file is created beside it (where the output will be written,
    then renamed) and removed at once."""
    if path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _Exit(EXIT_FAILURE, f"output directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise _Exit(EXIT_FAILURE, f"cannot write {path!r}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _Exit(EXIT_FAILURE, f"cannot write {path!r}: {e.strerror or _one_line(e)}") from None
    os.close(fd)
    os.unlink(tmp)


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _limits(max_pixels: int | None):
    from lic.container import Limits

    return Limits() if max_pixels is None else Limits(max_pixels=max_pixels)


def _read_bytes(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        name = "stdin" if path == "-" else repr(path)
        raise _Exit(EXIT_BAD_INPUT, f"cannot read {name}: {e.strerror or _one_line(e)}") from None


def _write_output(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write via ``write(file)`` to stdout, or to a temp file in path's directory renamed onto path."""
    if path == "-":
        try:
            write(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            # Nobody is reading; keep Python from complaining again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise _Exit(EXIT_FAILURE, "cannot write to stdout: broken pipe") from None
        except OSError as e:
            raise _Exit(EXIT_FAILURE, f"cannot write to stdout: {e.strerror or _one_line(e)}") from None
        return
    from lic.atomic import atomic_write

    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as e:
        raise _Exit(EXIT_FAILURE, f"cannot write {path!r}: {e.strerror or _one_line(e)}") from None


def _display(path: str, stdio: str) -> str:
    return stdio if path == "-" else path


def _run(prog: str, body: Callable[[], int]) -> int:
    debug = os.environ.get("LIC_DEBUG") == "1"
    try:
        with warnings.catch_warnings():
            if not debug and not sys.warnoptions:
                # Library chatter (e.g. torch deprecations) would break "one line on stderr";
                # lic.io turns image decoder warnings into notes by itself.
                warnings.simplefilter("ignore")
            return body()
    except _Exit as e:
        if str(e):
            cause = e.__cause__ or e.__context__
            if debug and cause is not None:
                traceback.print_exception(cause)
            print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, unless LIC_DEBUG=1
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: unexpected {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


def _shipped_models() -> list[str]:
    """'3=cheng2020-gmm-vr-checkerboard (modes 1-8)' for each model the registry ships (no torch)."""
    from lic.container import MODEL_IDS
    from lic.registry import describe_modes, mode_ranges, read_registry

    ids = {name: i for i, name in MODEL_IDS.items()}
    return [f"{ids.get(name, '?')}={name} ({describe_modes(mode_ranges(name))})"
            for name in dict.fromkeys(e["name"] for e in read_registry())]


def _model_of(p: argparse.ArgumentParser, arg: str | None, checkpoint: str | None) -> str | None:
    """The model ``--model`` asks for (a container model name or an architecture): a shipped one,
    or with a checkpoint any the format knows (the checkpoint must then hold it); a usage error
    otherwise."""
    if arg is None:
        return None
    from lic.container import ARCHS, MODEL_IDS
    from lic.registry import mode_ranges, read_registry

    name = MODEL_IDS.get(int(arg)) if arg.isdigit() else arg
    if checkpoint is not None:
        if name not in MODEL_IDS.values() and name not in ARCHS:
            _usage(p, f"unknown model {arg!r} (the format's models: "
                      + ", ".join(f"{k}={v}" for k, v in MODEL_IDS.items()) + "; architectures: "
                      + ", ".join(ARCHS) + ")")
    elif read_registry() and (name is None or not mode_ranges(name)):   # no registry: exit 1 when loading
        _usage(p, f"no shipped model {arg}; shipped: " + ", ".join(_shipped_models()))
    return name


def _check_shipped_mode(p: argparse.ArgumentParser, model: str | None, mode: float) -> None:
    """A usage error unless a shipped entry of ``model`` (None: the default) codes ``mode``."""
    from lic.registry import describe_modes, mode_ranges

    ranges = mode_ranges(model)
    if ranges and not any(lo <= mode <= hi for lo, hi in ranges):
        _usage(p, f"mode {mode:g} is not a mode of the shipped {model or 'default'} model "
                  f"({describe_modes(ranges)})")


def _load_weights_errors():
    from lic.weights import UnknownModeError, WeightsError

    return UnknownModeError, WeightsError


# ---------------------------------------------------------------------------- encode


def encode_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lic-encode``; returns the exit status."""
    prog = "lic-encode"

    def body() -> int:
        from lic.container import ARCHS, MODEL_IDS  # (standard library only)

        def extra(p: argparse.ArgumentParser) -> None:
            p.add_argument("-q", "--quality", metavar="MODE", type=_finite_float, default=None,
                           help="compression mode: higher is better quality and larger; variable-rate "
                                "models accept fractional modes (default: the shipped model's default_mode in "
                                "weights/registry.json)")
            p.add_argument("--refine", metavar="STEPS", type=_steps, default=0,
                           help="search each tile's latent for STEPS gradient steps before coding it: "
                                "slower to encode (about 1 s per step per Kodak image here), fewer bits "
                                "for more quality; the decoder is the same (default: 0, off; 50 is a "
                                "good setting, docs/refine.md)")
            p.add_argument("--no-adapt", dest="adapt", action="store_false",
                           help="never send a per-image update of the synthesis transform's last layer (by "
                                "default one is sent where it pays at the mode's rate-distortion trade-off, "
                                "about 3 %% fewer bits for the same PSNR on Kodak for 0.2-0.4 s more "
                                "encoding; lic.adapt, docs/adapt.md)")
            p.add_argument("--model", metavar="NAME", default=None,
                           help="a shipped model by number, container name or architecture: "
                                + (", ".join(_shipped_models()) or "none") + "; -q is then that model's own "
                                "mode (default: the registry's ladder of modes). With --checkpoint, the model the "
                                "checkpoint must hold: " + ", ".join(f"{k}={v}" for k, v in MODEL_IDS.items())
                                + ", or an architecture (" + ", ".join(ARCHS) + ")")

        p = _parser(prog, "Compress an image into a .lic file.", ".lic", extra)
        args = _parse(p, argv)
        opts = _common(p, args, ".lic")
        # what can be checked from the arguments and the registry, before the image or any model is read
        model = _model_of(p, args.model, opts.checkpoint)
        if args.quality is not None and opts.checkpoint is None:
            _check_shipped_mode(p, model, args.quality)
        _check_writable(opts.output)
        start = time.perf_counter()

        from lic.io import InputError, read_image

        limits = _limits(opts.max_pixels)
        try:
            source = _read_bytes(opts.input) if opts.input == "-" else opts.input
            image = read_image(source, limits=limits)
        except InputError as e:
            raise _Exit(EXIT_BAD_INPUT, _one_line(e)) from e
        if not opts.quiet:
            for note in image.notes:
                print(f"lic: note: {note}", file=sys.stderr)

        UnknownModeError, WeightsError = _load_weights_errors()
        from lic.container import FormatError
        from lic.weights import load_model

        try:
            loaded = load_model(mode=args.quality, model=model, checkpoint=opts.checkpoint)
        except UnknownModeError as e:
            raise _Exit(EXIT_USAGE, _one_line(e)) from e
        except WeightsError as e:
            raise _Exit(EXIT_FAILURE, _one_line(e)) from e
        if model is not None and model not in (loaded.name, loaded.net.arch):
            raise _Exit(EXIT_USAGE, f"the checkpoint holds model {loaded.name}, not {model}")

        from lic.codec import encode_image
        from lic.models import can_adapt, can_refine
        from lic.refine import RefineConfig, mode_lmbda

        if args.refine:
            if not can_refine(loaded.net):
                raise _Exit(EXIT_USAGE, f"the {loaded.net.arch} model cannot refine its latent (--refine)")
            try:
                mode_lmbda(loaded.net.lmbdas, None)
            except ValueError as e:
                raise _Exit(EXIT_USAGE, _one_line(e)) from e
        if args.adapt and not can_adapt(loaded.net):
            if not opts.quiet:
                print(f"lic: note: the {loaded.net.arch} model has no per-image update of its last layer "
                      "(lic.adapt); encoding without it", file=sys.stderr)
            args.adapt = False
        try:
            data = encode_image(loaded, image.pixels, refine=RefineConfig(steps=args.refine) if args.refine else None,
                                adapt_layer=args.adapt)
        except FormatError as e:
            raise _Exit(EXIT_BAD_INPUT, _one_line(e)) from e
        _write_output(opts.output, lambda f: f.write(data))

        if opts.verbose:
            h, w = image.pixels.shape[:2]
            print(f"{_display(opts.input, '<stdin>')} -> {_display(opts.output, '<stdout>')}: "
                  f"{w}x{h}, {len(data) / 1024:.1f} KiB, {8 * len(data) / (h * w):.3f} bpp, "
                  f"{time.perf_counter() - start:.2f} s", file=sys.stderr)
        return EXIT_OK

    return _run(prog, body)


# ---------------------------------------------------------------------------- decode


def describe(data: bytes, name: str, limits=None) -> str:
    """What ``decode.py --info`` prints: the file's header, its streams and the weights that made
    it (from the registry, by fingerprint), without decoding anything or importing torch."""
    from lic import container
    from lic.registry import read_registry

    h, streams = container.unpack(data, limits or container.Limits())
    mode = f"{h.mode_value:g}"
    spt = h.streams_per_tile
    update = streams.pop() if h.has_update and streams else None    # the last stream (lic.adapt)
    kinds = [h.model.streams[i % spt] for i in range(len(streams))]
    tiles = "untiled" if h.tile_size == 0 else f"tiles of {h.tile_size}"
    if len(streams) > spt:                                          # tiled: totals per kind
        totals = {kind: sum(len(st) for st, k in zip(streams, kinds) if k == kind) for kind in dict.fromkeys(kinds)}
        listed = (f"{len(streams) // spt} tiles x {spt}: "
                  + ", ".join(f"{kind} {n:,} B" for kind, n in totals.items()) + " in all")
    else:
        listed = ", ".join(f"{k} {len(st):,} B" for k, st in zip(kinds, streams))
    if update is not None:
        listed += f"; synthesis update {len(update):,} B"
    known = [e for e in read_registry() if e.get("fingerprint") == h.fingerprint]
    weights = (f"{known[0]['file']} ({known[0]['name']}, in the registry)" if known
               else "not in the registry (decode with --checkpoint)")
    return "\n".join([
        f"file:     {name}: {len(data):,} bytes, {8 * len(data) / (h.height * h.width):.4f} bpp",
        f"format:   .lic version {h.version}: {container.VERSIONS[h.version]}",
        f"model:    {h.model_name}, mode {mode}",
        f"image:    {h.width}x{h.height}, {h.channels} channels; latents {h.latent_channels} x "
        f"{h.latent_height} x {h.latent_width}; {tiles}",
        f"streams:  {len(streams) + (update is not None)} ({listed})",
        f"weights:  fingerprint {h.fingerprint:08x} = {weights}",
    ]) + "\n"


def decode_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lic-decode``; returns the exit status."""
    prog = "lic-decode"

    def body() -> int:
        def extra(p: argparse.ArgumentParser) -> None:
            p.add_argument("--info", action="store_true",
                           help="print what the file holds (format version, model, mode, size, streams, "
                                "weights) on stdout and decode nothing")
        p = _parser(prog, "Decompress a .lic file into an image (PNG unless OUT's extension says "
                          "otherwise).", ".png", extra)
        args = _parse(p, argv)
        if args.info:
            if args.output is not None:
                _usage(p, "--info writes its report to stdout; -o is not allowed with it")
            from lic import container

            data = _read_bytes(args.input)
            try:
                report = describe(data, _display(args.input, "<stdin>"), _limits(args.max_pixels))
            except container.FormatError as e:
                raise _Exit(EXIT_BAD_INPUT, _one_line(e)) from e
            sys.stdout.write(report)
            return EXIT_OK
        opts = _common(p, args, ".png")

        from lic.io import output_format

        try:
            fmt = output_format("out.png" if opts.output == "-" else opts.output)
        except ValueError as e:
            _usage(p, _one_line(e))
        _check_writable(opts.output)
        start = time.perf_counter()

        from lic import container

        limits = _limits(opts.max_pixels)
        data = _read_bytes(opts.input)
        try:
            container.unpack(data, limits)  # cheap: reject bad files before loading any model
        except container.FormatError as e:
            raise _Exit(EXIT_BAD_INPUT, _one_line(e)) from e

        UnknownModeError, WeightsError = _load_weights_errors()
        from lic.codec import decode_image
        from lic.io import write_image

        try:
            pixels = decode_image(data, checkpoint=opts.checkpoint, limits=limits)
        except container.FormatError as e:  # CodecError included
            raise _Exit(EXIT_BAD_INPUT, _one_line(e)) from e
        except WeightsError as e:
            raise _Exit(EXIT_FAILURE, _one_line(e)) from e
        _write_output(opts.output, lambda f: write_image(f, pixels, format=fmt))

        if opts.verbose:
            h, w = pixels.shape[:2]
            print(f"{_display(opts.input, '<stdin>')} -> {_display(opts.output, '<stdout>')}: "
                  f"{w}x{h}, {time.perf_counter() - start:.2f} s", file=sys.stderr)
        return EXIT_OK

    return _run(prog, body)
