"""Training-data readers for the HF Trainer: pre-tokenized jsonl (the official LRC format) and raw text.

Every dataset here is a map-style ``torch.utils.data.Dataset`` whose items are dicts of 1-D ``torch.long``
tensors of length ``S = data_max_len``:

- a full-length sequence: ``{"input_ids": (S,)}`` only (packed data needs no mask; the model treats "no
  ``attention_mask`` and no ``labels``" as every position valid);
- a shorter sequence, right-padded with id 0: ``{"input_ids": (S,), "attention_mask": (S,), "labels": (S,)}``
  with ``attention_mask`` 1 on real tokens / 0 on pads and ``labels`` = ``input_ids`` with -100 on pads.
  Labels are *unshifted* (HF convention): the model shifts them for next-token prediction.

``collate_batch`` stacks items to ``(B, S)``; ``build_dataset`` picks the reader from the path (token-shard
directories written by ``lrc prepare`` -> ``TokenShardDataset``, format: ``lrc.data.token_shards``).
Bad input raises :class:`DataError` whose message names the file and, where there is one, the 1-based line.
"""

from __future__ import annotations

import gzip
import json
import lzma
import operator
import os
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lrc.data.check import cached_index, check_ids, line_number_at
from lrc.data.token_shards import MANIFEST, ShardReader, frame_ids, read_manifest
from lrc.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PathLike = Union[str, "os.PathLike[str]"]

PAD_ID = 0  # input id written at padded positions (masked out by attention_mask, ignored by labels)
IGNORE_INDEX = -100  # label at padded positions (ignored by the cross-entropy / distillation losses)

TEXT_SUFFIXES = (".txt", ".txt.xz", ".xz")
ACCEPTED_FORMATS = ("a .jsonl file (pre-tokenized {{\"input_ids\": [...]}} or {{\"{field}\": \"...\"}} per line), "
                    "a .txt, .txt.xz or .xz text file, or several text files separated by commas")

_TOKENIZE_BATCH_DOCS = 512  # documents per fast-tokenizer batch call ...
_TOKENIZE_BATCH_CHARS = 1 << 20  # ... or fewer, once the batch holds this many characters


Item = dict[str, torch.Tensor]


def _make_item(ids: torch.Tensor, data_max_len: int) -> Item:
    """ids: (n,) long with 1 <= n <= data_max_len -> item of (data_max_len,) long tensors (see module docstring)."""
    n = ids.numel()
    if n == data_max_len:
        return {"input_ids": ids}
    input_ids = torch.full((data_max_len,), PAD_ID, dtype=torch.long)
    input_ids[:n] = ids
    attention_mask = torch.zeros(data_max_len, dtype=torch.long)
    attention_mask[:n] = 1
    labels = torch.full((data_max_len,), IGNORE_INDEX, dtype=torch.long)
    labels[:n] = ids
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _check_max_len(data_max_len: int) -> int:
    if isinstance(data_max_len, bool) or not isinstance(data_max_len, int) or data_max_len < 1:
        raise DataError(f"data_max_len must be a positive integer, got {data_max_len!r}")
    return data_max_len


def _index(i: Any, n: int) -> int:
    """Python index semantics (negative from the end) for ints and numpy/torch integer scalars."""
    j = operator.index(i)
    if j < 0:
        j += n
    if not 0 <= j < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} sequences")
    return j


def parse_json_line(raw: bytes | str, where: str) -> Any:
    """``json.loads`` whose errors are DataErrors naming ``where`` (``file:line``)."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None


# --------------------------------------------------------------------------------------------------------------
# Pre-tokenized jsonl
# --------------------------------------------------------------------------------------------------------------

class PackedJsonlDataset(Dataset):
    """The official LRC training format: one JSON object per line, ``{"input_ids": [int, ...], "data_cls": ...}``.

    Extra fields are ignored. Random access without loading the file: construction checks every line before
    training starts (``lrc.data.check``: valid JSON, an ``input_ids`` list of at least 2 ints in
    ``[0, vocab_size)``; the first bad line raises DataError with ``file:line``) and records the byte offset of
    every non-blank line (``offsets``: (N,) uint64); both are cached by file identity. ``__getitem__`` seeks to
    the line, parses and re-checks it, keeps the first ``data_max_len`` ids and right-pads shorter ones (see the
    module docstring for the item layout).

    Picklable for DataLoader workers: the file is (re)opened lazily in each process; no handle is pickled.
    """

    def __init__(self, path: PathLike, data_max_len: int, vocab_size: int, progress: bool = True) -> None:
        self.path = os.fspath(path)
        self.data_max_len = _check_max_len(data_max_len)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise DataError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        self.vocab_size = vocab_size
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: no such file")
        # (N,) byte offset and number of tokens of each non-blank line; every line checked once (cached by file
        # identity)
        self.offsets, self.lengths = cached_index(self.path, vocab_size, progress=progress)
        self._fh: IO[bytes] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = None
        return state

    def _file(self) -> IO[bytes]:
        # A handle inherited through fork shares its file position with the parent: reopen in every process.
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        return self._fh

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def line_number(self, index: int) -> int:
        """1-based line number of sequence ``index`` (counts newlines up to its offset: meant for error messages)."""
        return line_number_at(self.path, int(self.offsets[_index(index, len(self))]))

    def read_ids(self, index: int) -> list[int]:
        """The validated, uncut ``input_ids`` list of sequence ``index``."""
        i = _index(index, len(self))
        f = self._file()
        f.seek(int(self.offsets[i]))
        raw = f.readline()
        where = lambda: f"{self.path}:{self.line_number(i)}"  # noqa: E731 (only computed on error)
        try:
            obj = json.loads(raw)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError: build the file:line message only now
            obj = parse_json_line(raw, where())
        problem = check_ids(obj, self.vocab_size, raw)
        if problem:  # the file changed after it was checked
            raise DataError(f"{where()}: {problem}")
        return obj["input_ids"]

    def __getitem__(self, index: int) -> Item:
        """-> {"input_ids": (S,)} or, when the line is shorter than S, also "attention_mask" and "labels" (S,)."""
        ids = self.read_ids(index)[: self.data_max_len]
        return _make_item(torch.tensor(ids, dtype=torch.long), self.data_max_len)

    def __repr__(self) -> str:
        return f"PackedJsonlDataset({self.path!r}, {len(self)} sequences, data_max_len={self.data_max_len})"


# --------------------------------------------------------------------------------------------------------------
# Raw text
# --------------------------------------------------------------------------------------------------------------

def _strip_xz(path: str) -> str:
    return path[:-3] if path.endswith(".xz") else path


def open_binary(path: str) -> IO[bytes]:
    """Open a possibly compressed file (``.xz`` with lzma, ``.gz`` with gzip) for reading bytes."""
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode(raw: bytes, path: str, line_no: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason})") from None
    return text[1:] if line_no == 1 and text.startswith("\ufeff") else text  # drop a byte-order mark


def iter_text_blocks(lines: Iterator[bytes], path: str) -> Iterator[tuple[str, int]]:
    """Plain-text documents of an open file: every maximal run of non-blank lines, joined with "\\n" (line
    endings removed, other whitespace kept), with the 1-based line where it starts."""
    block: list[str] = []
    start = 0
    for line_no, raw in enumerate(lines, 1):
        line = _decode(raw, path, line_no).rstrip("\r\n")
        if line.strip():
            if not block:
                start = line_no
            block.append(line)
        elif block:
            yield "\n".join(block), start
            block = []
    if block:
        yield "\n".join(block), start


def iter_documents(path: PathLike, text_field: str = "text") -> Iterator[str]:
    """Documents of one file: jsonl (``.jsonl``, ``.jsonl.xz``) -> the ``text_field`` string of every non-blank
    line (whitespace-only texts skipped); anything else is plain text (``.xz`` read with lzma) -> every maximal run
    of non-blank lines, joined with "\\n" (line endings removed, other whitespace kept)."""
    path = os.fspath(path)
    is_jsonl = _strip_xz(path).endswith(".jsonl")
    try:
        with open_binary(path) as f:
            if not is_jsonl:
                yield from (text for text, _ in iter_text_blocks(f, path))
                return
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                obj = parse_json_line(raw, f"{path}:{line_no}")
                text = obj.get(text_field) if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{line_no}: no '{text_field}' string")
                if text.strip():
                    yield text
    except (lzma.LZMAError, EOFError) as e:
        raise DataError(f"{path}: not a valid xz file ({e})") from None


class TextDataset(Dataset):
    """Raw text tokenized with the teacher's tokenizer and packed on the fly into ``data_max_len``-token sequences.

    Inputs: plain text (``.txt``; ``.txt.xz`` / ``.xz`` read with lzma; documents are separated by blank lines)
    or jsonl with a ``text_field`` string per line (``.jsonl``, ``.jsonl.xz``). Each document is framed
    ``BOS text EOS`` (``lrc.data.token_shards.frame_ids("bos_eos", ...)``: BOS only if ``tokenizer.bos_token_id`` is not
    None, EOS likewise), tokenized with
    ``add_special_tokens=False`` in batches (fast-tokenizer batch encode), and all documents of all files, in
    order, are concatenated into one token stream, ``tokens``: (T,) int32, kept in RAM. Sequence i is
    ``tokens[i*S:(i+1)*S]``; the final partial sequence is dropped (``dropped_tokens``), unless the whole text
    is shorter than S: then it is one right-padded sequence (with ``attention_mask`` and ``labels``).

    This path is for small corpora (demos, tests, a few hundred MB of text at most): everything is tokenized at
    construction and held in memory. Large corpora go through a separate data-preparation pipeline that writes
    token shards (``data/prepare.py``).
    """

    def __init__(self, paths: PathLike | Sequence[PathLike], tokenizer: PreTrainedTokenizerBase, data_max_len: int,
                 text_field: str = "text", *, vocab_size: int | None = None) -> None:
        """``vocab_size``: if given, a token id >= vocab_size (tokenizer and model disagree) raises DataError."""
        self.paths: list[str] = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [
            os.fspath(p) for p in paths]
        if not self.paths:
            raise DataError("no text files given")
        self.data_max_len = _check_max_len(data_max_len)
        self.text_field = text_field
        for p in self.paths:
            if not os.path.isfile(p):
                raise DataError(f"{p}: no such file")
        prefix, suffix = frame_ids("bos_eos", tokenizer.bos_token_id, tokenizer.eos_token_id)

        chunks: list[np.ndarray] = []
        self.num_documents = 0

        def flush(batch: list[str]) -> None:
            enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
            flat: list[int] = []
            for ids in enc:
                flat += prefix
                flat += ids
                flat += suffix
            chunks.append(np.asarray(flat, dtype=np.int32))

        for p in self.paths:
            batch: list[str] = []
            chars = 0
            for doc in iter_documents(p, text_field):
                batch.append(doc)
                chars += len(doc)
                self.num_documents += 1
                if len(batch) >= _TOKENIZE_BATCH_DOCS or chars >= _TOKENIZE_BATCH_CHARS:
                    flush(batch)
                    batch, chars = [], 0
            if batch:
                flush(batch)
        names = ", ".join(self.paths)
        if self.num_documents == 0:
            raise DataError(f"{names}: no text (empty input)")
        self.tokens: np.ndarray = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)  # (T,) int32
        if vocab_size is not None and self.tokens.size and int(self.tokens.max()) >= vocab_size:
            raise DataError(f"{names}: the tokenizer produced token id {int(self.tokens.max())} >= vocab size "
                            f"{vocab_size}; is it the teacher's tokenizer?")
        self.num_tokens = int(self.tokens.size)
        if self.num_tokens < 2:
            raise DataError(f"{names}: {self.num_tokens} token(s) after tokenizing; a sequence needs at least 2 (one to "
                            "read, one to predict)")
        full = self.num_tokens // self.data_max_len
        self._num_seqs = full if full > 0 else 1
        self.dropped_tokens = self.num_tokens - full * self.data_max_len if full > 0 else 0

    def __len__(self) -> int:
        return self._num_seqs

    def __getitem__(self, index: int) -> Item:
        """-> {"input_ids": (S,)}; the single short sequence of a tiny corpus also has "attention_mask", "labels"."""
        i = _index(index, len(self))
        S = self.data_max_len
        ids = torch.from_numpy(self.tokens[i * S:(i + 1) * S].astype(np.int64))
        return _make_item(ids, S)

    def __repr__(self) -> str:
        return (f"TextDataset({self.paths!r}, {self.num_documents} documents, {self.num_tokens} tokens, "
                f"{len(self)} sequences of {self.data_max_len})")


# --------------------------------------------------------------------------------------------------------------
# Token shards (lrc prepare)
# --------------------------------------------------------------------------------------------------------------

class TokenShardDataset(Dataset):
    """Token shards written by ``lrc prepare``: a directory with ``manifest.json`` and raw ``.bin`` shards (the
    format: ``lrc.data.token_shards``).

    Each shard holds ``num_sequences`` sequences of ``seq_len`` tokens, contiguous, ``dtype`` uint16 or uint32
    (from the manifest). Sequences are memory-mapped (``lrc.data.token_shards.ShardReader``: opened lazily in each
    process, so the dataset pickles for DataLoader workers) and item ``i`` is ``{"input_ids": (data_max_len,)}``
    long: the first ``data_max_len`` tokens of sequence ``i`` (shards longer than ``data_max_len`` are cut; shorter
    ones, or a manifest ``vocab_size`` larger than the model's, raise :class:`DataError` naming the manifest).
    """

    def __init__(self, path: PathLike, data_max_len: int, vocab_size: int) -> None:
        self.path = os.fspath(path)
        self.data_max_len = _check_max_len(data_max_len)
        self.manifest_path = mp = os.path.join(self.path, MANIFEST)
        self.manifest = m = read_manifest(self.path)
        self.seq_len = m.seq_len
        self.dtype = np.dtype(m.dtype)
        if self.seq_len < self.data_max_len:
            raise DataError(f"{mp}: sequences of {self.seq_len} tokens are shorter than data_max_len "
                            f"{self.data_max_len}; re-run data/prepare.py with --data-max-len {self.data_max_len}")
        if m.vocab_size > vocab_size:
            raise DataError(f"{mp}: tokenized with a vocabulary of {m.vocab_size} tokens, but the model has "
                            f"{vocab_size}; is it the teacher's tokenizer?")
        self.shards = ShardReader(self.path, m, vocab_size)

    def __len__(self) -> int:
        return len(self.shards)

    def sequence(self, index: int) -> np.ndarray:
        """The full stored sequence ``index``: (seq_len,) of the manifest dtype."""
        return self.shards.sequence(_index(index, len(self)))

    def __getitem__(self, index: int) -> Item:
        """-> {"input_ids": (data_max_len,) long}."""
        ids = self.sequence(index)[: self.data_max_len].astype(np.int64)
        return {"input_ids": torch.from_numpy(ids)}

    def __repr__(self) -> str:
        return (f"TokenShardDataset({self.path!r}, {len(self)} sequences of {self.seq_len} tokens, "
                f"data_max_len={self.data_max_len})")


def cut_note(dataset: Dataset, flag: str) -> str | None:
    """One line when sequences of ``dataset`` are longer than its ``data_max_len`` and their tails are dropped (packed
    jsonl lines, token shards of a longer ``seq_len``): how many are cut and the fraction of the tokens lost; None
    when nothing is cut."""
    S = getattr(dataset, "data_max_len", None)
    if isinstance(dataset, PackedJsonlDataset):
        lengths = dataset.lengths.astype(np.int64)
        cut = lengths > S
        if not cut.any():
            return None
        lost = int((lengths[cut] - S).sum())
        return (f"{flag} {dataset.path}: {int(cut.sum()):,} of {len(lengths):,} lines are longer than --data_max_len "
                f"{S} (up to {int(lengths.max()):,} tokens) and are cut to it: {lost:,} of {int(lengths.sum()):,} "
                f"tokens ({lost / max(1, int(lengths.sum())):.0%}) are never trained on; pass --data_max_len "
                f"{int(lengths.max())} to keep them, or pack the data to {S} tokens a line")
    if isinstance(dataset, TokenShardDataset) and dataset.seq_len > S:
        return (f"{flag} {dataset.path}: its sequences have {dataset.seq_len} tokens and are cut to --data_max_len {S}: "
                f"{1 - S / dataset.seq_len:.0%} of the tokens are never trained on; pass --data_max_len "
                f"{dataset.seq_len}, or prepare the data with --data-max-len {S}")
    return None


# --------------------------------------------------------------------------------------------------------------
# Collation and dispatch
# --------------------------------------------------------------------------------------------------------------

def collate_batch(items: list[Item]) -> dict[str, torch.Tensor]:
    """Stack items into (B, S) long tensors.

    If any item has ``attention_mask`` or ``labels``, every item gets both (a full item: a mask of ones and
    labels = input_ids; labels default to input_ids with -100 where the mask is 0); otherwise only ``input_ids``.
    """
    if not items:
        raise ValueError("collate_batch: empty batch")
    input_ids = torch.stack([it["input_ids"] for it in items])  # (B, S)
    if not any("attention_mask" in it or "labels" in it for it in items):
        return {"input_ids": input_ids}
    masks, labels = [], []
    for it in items:
        ids = it["input_ids"]
        mask = it.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        lab = it.get("labels")
        if lab is None:
            lab = ids.masked_fill(mask == 0, IGNORE_INDEX)
        masks.append(mask)
        labels.append(lab)
    return {"input_ids": input_ids, "attention_mask": torch.stack(masks), "labels": torch.stack(labels)}


def _first_json_object(path: str) -> tuple[int, Any]:
    """(1-based line number, parsed value) of the first non-blank line of a jsonl file."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if raw.strip():
                return line_no, parse_json_line(raw, f"{path}:{line_no}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    raise DataError(f"{path}: no data (only blank lines)")


def _text_dataset(paths: list[str], tokenizer: PreTrainedTokenizerBase | None, data_max_len: int, vocab_size: int,
                  text_field: str, no_tokenizer: str = "") -> TextDataset:
    if tokenizer is None:
        raise DataError(f"{', '.join(paths)}: raw text needs the teacher's tokenizer, but "
                        f"{no_tokenizer or 'none was given'}; pass --tokenizer PATH, or pre-tokenized data")
    return TextDataset(paths, tokenizer, data_max_len, text_field, vocab_size=vocab_size)


def _check_single(path: str, text_field: str) -> None:
    """Raise DataError unless ``path`` is an existing file of an accepted format."""
    if os.path.isdir(path):
        raise DataError(f"{path}: a directory without {MANIFEST}; expected a token-shard directory written "
                        "by data/prepare.py, or a .jsonl or text file")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    if not (path.endswith(".jsonl") or path.endswith(TEXT_SUFFIXES)):
        raise DataError(f"{path}: unsupported data format; accepted: " + ACCEPTED_FORMATS.format(field=text_field))


def build_dataset(path: PathLike, data_max_len: int, vocab_size: int,
                  tokenizer: PreTrainedTokenizerBase | None = None, text_field: str = "text",
                  no_tokenizer: str = "") -> Dataset:
    """Pick the reader from ``path``.

    - a ``.jsonl`` file whose first non-blank line has ``input_ids`` -> :class:`PackedJsonlDataset`;
    - a ``.jsonl`` file whose first non-blank line has ``text_field``, or a ``.txt`` / ``.txt.xz`` / ``.xz`` file
      -> :class:`TextDataset` (needs the teacher's ``tokenizer``);
    - several text files separated by commas -> one :class:`TextDataset` over all of them, in order;
    - a directory with ``manifest.json`` (written by ``data/prepare.py``) -> :class:`TokenShardDataset`;
    - anything else (a directory without a manifest, a missing path, another format) -> :class:`DataError`.

    ``no_tokenizer``: why ``tokenizer`` is None, for the error when the data turn out to be text.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST)):
        return TokenShardDataset(path, data_max_len, vocab_size)
    if "," in path and not os.path.exists(path):
        parts = [p.strip() for p in path.split(",") if p.strip()]
        for p in parts:
            _check_single(p, text_field)
            if p.endswith(".jsonl"):
                _, obj = _first_json_object(p)
                if isinstance(obj, dict) and "input_ids" in obj:
                    raise DataError(f"{p}: holds pre-tokenized 'input_ids'; comma-separated lists are for text "
                                    "files only, pass a single pre-tokenized .jsonl file")
        return _text_dataset(parts, tokenizer, data_max_len, vocab_size, text_field, no_tokenizer)
    _check_single(path, text_field)
    if path.endswith(".jsonl"):
        line_no, obj = _first_json_object(path)
        if isinstance(obj, dict) and "input_ids" in obj:
            return PackedJsonlDataset(path, data_max_len, vocab_size)
        if isinstance(obj, dict) and text_field in obj:
            return _text_dataset([path], tokenizer, data_max_len, vocab_size, text_field, no_tokenizer)
        raise DataError(f"{path}:{line_no}: expected a JSON object with an 'input_ids' list (pre-tokenized) or a "
                        f"'{text_field}' string")
    return _text_dataset([path], tokenizer, data_max_len, vocab_size, text_field, no_tokenizer)
