"""Guards for CompressAI's rANS decoder: streams are replayed with bounds checks before it runs.

CompressAI's entropy models (``EntropyBottleneck``, ``GaussianConditional``) code their symbols
with a 64-bit rANS coder (``compressai.ans``, 16-bit precision, a 4-bit bypass code for values
outside a table).  Its decoder trusts its input: it reads 32-bit words past the end of a short or
corrupt string (out of bounds of the buffer) and decodes garbage without complaint.  So every
stream a ``.lic`` decoder hands it is first replayed here, symbol by symbol, exactly as that
decoder will read it, with every read bounds-checked:

* every word read lies inside the stream;
* every bypass run is one a real encoder writes (at most 8 nibbles: an int32);
* the stream ends where the last symbol ends, in the state the encoder started from.

A stream that passes is read by CompressAI's decoder without reading past its end (the two read
the same words).  :class:`RansReplay` advances in steps, for decoders that learn the next symbols'
tables from the symbols before (autoregressive context models); :class:`CheckedCoder` puts the
check in front of an entropy model's own ``decompress`` (it stands where CompressAI's
``_EntropyCoder`` proxy stands and forwards to it).  The replay is a Python loop (about 0.5 us a
symbol): a Kodak image's y of 192 channels takes about 0.15 s.
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from typing import Iterable, Sequence

RANS_L = 1 << 31          # CompressAI's Rans64: lower bound of the normalised state
PRECISION = 16            # CompressAI's entropy coder precision (bits)
BYPASS_BITS = 4           # CompressAI's bypass precision
MAX_BYPASS_NIBBLES = 8    # an int32 raw value never needs more


class RansStreamError(ValueError):
    """A stream that CompressAI's rANS encoder cannot have written for these tables."""


Tables = list[tuple[list[int], int]]   # per cdf index: (cdf, max_value)


def tables_of(cdfs: Sequence[Sequence[int]], lengths: Sequence[int]) -> Tables:
    """(cdf, max_value) per cdf index, as CompressAI's decoder sees an entropy model's tables."""
    return [(list(row[:n]), n - 2) for row, n in zip(cdfs, lengths)]


def entropy_model_tables(em) -> Tables:
    """The tables of a CompressAI entropy model (``_quantized_cdf``, ``_cdf_length``)."""
    return tables_of(em._quantized_cdf.tolist(), em._cdf_length.reshape(-1).tolist())


class RansReplay:
    """A bounds-checked replay of CompressAI's rANS decoder over one stream.

    ``what`` names the stream in error messages ("hyper-latent stream", ...)."""

    def __init__(self, tables: Tables, data: bytes, what: str = "stream"):
        self.what = what
        if len(data) < 8 or len(data) % 4:
            raise RansStreamError(f"corrupt {what} (length {len(data)})")
        self.tables = tables
        self.words = struct.unpack(f"<{len(data) // 4}I", data)
        self.x = self.words[0] | (self.words[1] << 32)
        self.p = 2

    def _overrun(self) -> RansStreamError:
        return RansStreamError(f"corrupt {self.what} (runs past its end)")

    def advance(self, indexes: Iterable[int]) -> None:
        """Read one symbol per cdf index, as the decoder will; raise RansStreamError on a bad read."""
        words, n, tables = self.words, len(self.words), self.tables
        x, p = self.x, self.p
        low, mask = RANS_L, (1 << PRECISION) - 1
        for i in indexes:
            cdf, max_value = tables[i]
            cum = x & mask
            s = bisect_right(cdf, cum) - 1
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> PRECISION) + cum - start
            if x < low:
                if p >= n:
                    raise self._overrun()
                x = (x << 32) | words[p]
                p += 1
            if s == max_value:  # bypass: a count of nibbles (at most 8 from a real encoder), then them
                count = x & 15
                if count > MAX_BYPASS_NIBBLES:
                    raise RansStreamError(f"corrupt {self.what} (bad escape)")
                for _j in range(count + 1):
                    x >>= BYPASS_BITS
                    if x < low:
                        if p >= n:
                            raise self._overrun()
                        x = (x << 32) | words[p]
                        p += 1
        self.x, self.p = x, p

    def finish(self) -> None:
        """Every word consumed and the encoder's initial state reached, or RansStreamError."""
        if self.p != len(self.words) or self.x != RANS_L:
            raise RansStreamError(f"corrupt {self.what} (does not end where it should)")


def check_stream(tables: Tables, data: bytes, indexes: Iterable[int], what: str = "stream") -> None:
    """Replay a whole stream of symbols with these cdf ``indexes``; RansStreamError unless valid."""
    replay = RansReplay(tables, data, what)
    replay.advance(indexes)
    replay.finish()


def check_bottleneck_stream(tables: Tables, data: bytes, positions: int, what: str = "hyper-latent stream") -> None:
    """An entropy bottleneck's stream: ``positions`` symbols per channel, channel after channel
    (CompressAI's order), one table per channel."""
    check_stream(tables, data, (c for c in range(len(tables)) for _ in range(positions)), what)


class CheckedCoder:
    """An entropy model's coder with the replay check in front of every decode.

    ``em.entropy_coder = CheckedCoder(em.entropy_coder)``: ``decode_with_indexes`` checks the string
    against the tables and indexes it is given, then calls CompressAI's decoder; encoding is
    CompressAI's unchanged."""

    def __init__(self, coder):
        self.coder = coder
        self.name = coder.name

    def encode_with_indexes(self, *args, **kwargs):
        return self.coder.encode_with_indexes(*args, **kwargs)

    def decode_with_indexes(self, data, indexes, cdfs, lengths, offsets):
        check_stream(tables_of(cdfs, lengths), data, indexes, "latent stream")
        return self.coder.decode_with_indexes(data, indexes, cdfs, lengths, offsets)


def check_coders(module) -> None:
    """Put :class:`CheckedCoder` in front of the coder of every CompressAI entropy model in
    ``module`` (idempotent)."""
    from compressai.entropy_models import EntropyModel

    for m in module.modules():
        if isinstance(m, EntropyModel) and not isinstance(m.entropy_coder, CheckedCoder):
            m.entropy_coder = CheckedCoder(m.entropy_coder)
