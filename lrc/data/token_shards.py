"""The token-shard format, both sides: what ``lrc prepare`` writes and ``lrc.data.datasets.TokenShardDataset`` reads.

A token-shard directory holds

- ``shard_00000.bin``, ``shard_00001.bin``, ...: raw little-endian ``uint16`` (vocabulary <= 65536) or
  ``uint32`` token ids, ``num_sequences`` sequences of exactly ``seq_len`` tokens each, contiguous, no header, so
  a shard is ``np.memmap(file, dtype, shape=(num_sequences, seq_len))``;
- ``manifest.json``: :class:`Manifest` (``json.dumps(indent=2)``), the shard list and how the data were made;
- optionally ``train.jsonl``: the same sequences in the same order in the official LRC format, one
  ``{"input_ids": [...]}`` per line.

Every document is framed by :func:`frame_ids` before the stream is cut into sequences: ``bos_eos`` is
``BOS text EOS``, ``official`` (the LRC release) is ``EOS text BOS``; a special token the tokenizer lacks is left
out. ``lrc.data.datasets.TextDataset`` frames raw text the same way (``bos_eos``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrc.errors import DataError
from lrc.file_cache import cached_json
from lrc.files import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "lrc-token-shards"
MANIFEST_VERSION = 2
"""1: the first release (no ``executor``); 2: ``executor`` added. Both are read."""
DTYPES = ("uint16", "uint32")
FRAMINGS = ("bos_eos", "official")
JSONL_EXPORT = "train.jsonl"
COPY_TOKENS = 1 << 24
"""Tokens per block when shards are written (memory bound of the writer; the bytes do not depend on it)."""


# ----------------------------------------------------------------------------------------------------------------
# Framing
# ----------------------------------------------------------------------------------------------------------------

def framing_order(framing: str, bos: Any, eos: Any) -> tuple[Any, Any]:
    """(prefix, suffix) of every document: ``(bos, eos)`` for ``bos_eos``, ``(eos, bos)`` for ``official``."""
    if framing not in FRAMINGS:
        raise DataError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    return (bos, eos) if framing == "bos_eos" else (eos, bos)


def frame_ids(framing: str, bos_id: int | None, eos_id: int | None) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids) around every document's ids; a missing (None) special token is left out, e.g.
    ``frame_ids("bos_eos", 1, None) == ([1], [])``."""
    bos = [] if bos_id is None else [int(bos_id)]
    eos = [] if eos_id is None else [int(eos_id)]
    return framing_order(framing, bos, eos)


# ----------------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """One shard file of the directory."""

    file: str
    """file name inside the directory, ``shard_{k:05d}.bin``"""
    num_sequences: int
    """sequences in the file (its size is ``num_sequences * seq_len * itemsize`` bytes)"""


@dataclass(kw_only=True)
class Manifest:
    """``manifest.json``: every key ``lrc prepare`` writes, in the order it writes them.

    The reader needs ``seq_len``, ``dtype``, ``vocab_size`` and ``shards`` (the fields without a default); the
    rest describes how the data were made (None in a manifest that lacks the key, e.g. ``executor`` in version 1).
    """

    format: str = FORMAT
    """always ``lrc-token-shards``"""
    version: int = MANIFEST_VERSION
    """schema version (see ``MANIFEST_VERSION``)"""
    total_tokens: int | None = None
    """tokens in the shards, ``num_sequences * seq_len``"""
    stream_tokens: int | None = None
    """tokens of the merged stream (all sources, framing, weights applied) before it was cut into sequences"""
    dropped_tokens: int | None = None
    """the stream's tail, shorter than one sequence"""
    num_sequences: int | None = None
    """sequences in all shards together"""
    seq_len: int
    """tokens per sequence (``--data-max-len``)"""
    dtype: str
    """token id type of the shards: ``uint16`` or ``uint32``"""
    vocab_size: int
    """the tokenizer's vocabulary size (every id is below it)"""
    tokenizer: str | None = None
    """absolute path of the tokenizer"""
    tokenizer_name: str | None = None
    """the tokenizer's ``name_or_path``"""
    bos_id: int | None = None
    """BOS id (None: the tokenizer has none)"""
    eos_id: int | None = None
    """EOS id (None: the tokenizer has none)"""
    framing: str | None = None
    """``bos_eos`` or ``official`` (:func:`frame_ids`)"""
    seed: int | None = None
    """shuffle / resampling seed"""
    filter: str | None = None
    """the default filter of the sources (``--filter``)"""
    text_field: str | None = None
    """the default text field of the sources (``--text-field``)"""
    budget: int | None = None
    """the default token budget of the sources (``--budget``)"""
    executor: str | None = None
    """``local`` or ``slurm`` (version 2)"""
    workers: int | None = None
    """local worker processes"""
    tasks: int | None = None
    """datatrove tasks"""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """per source, in order: its options and counts (``lrc.data.prepare.finalize.source_stats``)"""
    shards: list[Shard]
    """the shard files in sequence order"""
    jsonl_export: str | None = None
    """``train.jsonl`` when the official jsonl was written too, else None"""
    tokenize_seconds: float | None = None
    """time of the tokenize phase (None on Slurm)"""
    seconds: float | None = None
    """time from the plan to the manifest"""

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json`` (every field, in field order)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["shards"] = [dataclasses.asdict(s) for s in self.shards]
        return out

    def write(self, directory: str) -> None:
        """Write ``directory/manifest.json`` atomically."""
        write_json_atomic(os.path.join(directory, MANIFEST), self.to_json())

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Manifest:
        """A parsed ``manifest.json`` -> Manifest; ``where`` (the file) names it in the DataError of a bad one.
        Unknown keys are ignored."""
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in obj:
                raise DataError(f"{where}: missing '{f.name}'")
        if obj.get("format", FORMAT) != FORMAT:
            raise DataError(f"{where}: format {obj['format']!r} is not {FORMAT!r}")
        version = obj.get("version", MANIFEST_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MANIFEST_VERSION:
            raise DataError(f"{where}: version {version!r}; expected 1 to {MANIFEST_VERSION} (a newer lrc wrote it?)")
        if obj["dtype"] not in DTYPES:
            raise DataError(f"{where}: dtype {obj['dtype']!r} is not uint16 or uint32")
        m = cls(**{k: obj[k] for k in names if k in obj})
        try:
            m.seq_len, m.vocab_size = int(m.seq_len), int(m.vocab_size)
            shards = [Shard(str(s["file"]), int(s["num_sequences"])) for s in obj["shards"]]
        except (TypeError, ValueError, KeyError):
            raise DataError(f"{where}: expected an integer seq_len and vocab_size and shards [{{file, "
                            "num_sequences}, ...]") from None
        m.shards = shards
        return m


def read_manifest(directory: str) -> Manifest:
    """``directory/manifest.json`` -> Manifest; a missing, unparsable or incomplete one raises DataError (one line
    naming the file and what was expected)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"{directory}: no {MANIFEST}; expected a token-shard directory written by data/prepare.py")
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return Manifest.from_json(obj, path)


# ----------------------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------------------

def shard_dtype(vocab_size: int) -> str:
    """The smallest shard dtype that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def default_sequences_per_shard(dtype: str, seq_len: int) -> int:
    """Sequences per shard for ~1 GiB shards."""
    return max(1, (1 << 30) // (np.dtype(dtype).itemsize * seq_len))


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.bin"


def jsonl_line(row: np.ndarray) -> str:
    """One sequence (seq_len,) as a line of the official format: ``{"input_ids": [1, 2, ...]}\\n``."""
    return '{"input_ids": [' + ", ".join(map(str, row.tolist())) + "]}\n"


def write_shards(stream: np.ndarray, order: np.ndarray, directory: str, sequences_per_shard: int,
                 jsonl_export: bool) -> list[Shard]:
    """Write ``stream[order]`` as shards of ``sequences_per_shard`` sequences into ``directory`` (and the same rows
    to ``train.jsonl`` with ``jsonl_export``).

    ``stream``: (N, seq_len) array (a memmap: rows are read in blocks of ~``COPY_TOKENS`` tokens, each block in
    ascending row order); ``order``: (N,) permutation of ``range(N)``: shard row ``k`` is ``stream[order[k]]``.
    Returns the shards written, in order.
    """
    num_seqs, seq_len = stream.shape
    step = max(1, COPY_TOKENS // seq_len)
    shards = []
    jsonl = open(os.path.join(directory, JSONL_EXPORT), "w") if jsonl_export else contextlib.nullcontext()
    with jsonl as jf:
        for k, a in enumerate(range(0, num_seqs, sequences_per_shard)):
            name = shard_name(k)
            idx = order[a:a + sequences_per_shard]
            with open(os.path.join(directory, name), "wb") as f:
                for b in range(0, idx.size, step):
                    block = np.asarray(stream[np.sort(idx[b:b + step])])  # sorted: sequential-ish reads
                    block = block[np.argsort(np.argsort(idx[b:b + step]))]
                    f.write(block.tobytes())
                    if jf is not None:
                        jf.writelines(jsonl_line(row) for row in block)
            shards.append(Shard(name, int(idx.size)))
    return shards


# ----------------------------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------------------------

class ShardReader:
    """The sequences of a token-shard directory, memory-mapped.

    Construction checks every shard against the manifest: present, ``num_sequences * seq_len * itemsize`` bytes,
    every id below ``vocab_size`` (the model's; the largest id of a shard is cached by file identity); a failure
    raises DataError naming the manifest or the shard. The maps open lazily in each process, so a reader pickles
    for DataLoader workers.
    """

    def __init__(self, directory: str, manifest: Manifest, vocab_size: int) -> None:
        where = os.path.join(directory, MANIFEST)
        self.seq_len = manifest.seq_len
        self.dtype = np.dtype(manifest.dtype)
        self.files: list[str] = []
        counts = []
        for sh in manifest.shards:
            fp = os.path.join(directory, sh.file)
            n = sh.num_sequences
            want = n * self.seq_len * self.dtype.itemsize
            if not os.path.isfile(fp):
                raise DataError(f"{where}: shard {sh.file} is missing")
            if os.path.getsize(fp) != want:
                raise DataError(f"{where}: shard {sh.file} has {os.path.getsize(fp)} bytes, expected {want} "
                                f"({n} sequences x {self.seq_len} x {self.dtype.itemsize})")
            top = cached_json("token-shard-max", fp, lambda fp=fp, n=n: int(np.memmap(
                fp, dtype=self.dtype, mode="r", shape=(n, self.seq_len)).max()) if n else 0, self.dtype.str)
            if top >= vocab_size:
                raise DataError(f"{fp}: token id {top} >= vocab size {vocab_size}; is it the teacher's tokenizer?")
            self.files.append(fp)
            counts.append(n)
        self.starts: np.ndarray = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # (num_shards + 1,)
        if self.starts[-1] == 0:
            raise DataError(f"{where}: no sequences")
        if manifest.num_sequences is not None and int(manifest.num_sequences) != int(self.starts[-1]):
            raise DataError(f"{where}: num_sequences {manifest.num_sequences} != {int(self.starts[-1])} in the "
                            "shards")
        self._maps: list[np.ndarray | None] = [None] * len(self.files)
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _maps=[None] * len(self.files), _pid=None)

    def _shard(self, k: int) -> np.ndarray:
        if self._pid != os.getpid():
            self._maps = [None] * len(self.files)
            self._pid = os.getpid()
        mm = self._maps[k]
        if mm is None:
            n = int(self.starts[k + 1] - self.starts[k])
            mm = np.memmap(self.files[k], dtype=self.dtype, mode="r", shape=(n, self.seq_len))
            self._maps[k] = mm
        return mm

    def sequence(self, i: int) -> np.ndarray:
        """Sequence ``i`` (0 <= i < len(self)): (seq_len,) of the manifest dtype, a view of the map."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._shard(k)[i - int(self.starts[k])]
