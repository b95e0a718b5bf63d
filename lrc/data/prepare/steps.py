"""The datatrove pipeline steps of a run: read the sources (:class:`SourceReader`), tokenize and write the task
files (:class:`TokenFileWriter`), and the merge as a step (:class:`FinalizeStep`, the Slurm merge job)."""

from __future__ import annotations

import lzma
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseReader

from lrc.data.datasets import iter_text_blocks, open_binary, parse_json_line
from lrc.data.prepare.filters import parse_filter, passes
from lrc.data.prepare.finalize import finalize
from lrc.data.prepare.sources import Source, file_format
from lrc.data.prepare.tokenizer import CHAT_FIELDS, TokenizerSpec, to_messages
from lrc.data.prepare.workdir import (
    DONE_SUFFIX,
    READ_SUFFIX,
    TASK_ERROR_SUFFIX,
    source_base,
    task_errors,
    task_files,
    task_path,
)
from lrc.errors import DataError
from lrc.files import write_json_atomic

BATCH_DOCS = 256
BATCH_CHARS = 1 << 20
"""The writer encodes documents in batches of BATCH_DOCS documents or fewer, once a batch holds BATCH_CHARS
characters."""


def _merge_meta(row: dict) -> dict:
    """A row without its text -> the metadata a filter sees: the row's ``metadata`` dict merged with its columns."""
    meta = row.pop("metadata", None)
    meta = meta if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
    return meta | row


class SourceReader(BaseReader):
    """Reads this task's contiguous share of the input files and yields the documents that pass their filter.

    ``files``: ``[(source index, path, format), ...]`` (``Plan.files()``); ``sources``: the plan's sources.
    Every document gets ``metadata["lrc_source"]``. Malformed JSON, a missing text field, a malformed conversation
    or bad UTF-8 raise :class:`DataError` naming file and line (parquet / save_to_disk: row). Per-source counts of
    documents read and kept go to ``<work_dir>/tasks/task{rank:05d}.read.json`` (``lrc.data.prepare.workdir``) when the
    task's input is exhausted. ``stop_sources`` (shared with :class:`TokenFileWriter`) holds the sources whose
    budget this task has filled.
    """

    name = "LRC source reader"
    type = "📖 - READER"

    def __init__(self, files: list[tuple[int, str, str]], sources: list[Source], work_dir: str, stop_sources: set,
                 tok: TokenizerSpec | None = None, framing: str = "bos_eos", progress: bool = True) -> None:
        super().__init__()
        self.files = files
        self.sources = sources
        self.filters = [parse_filter(s.filter) for s in sources]
        self.work_dir = work_dir
        self.num_sources = len(sources)
        self.stop_sources = stop_sources
        self.tok = tok if any(s.chat for s in sources) else None
        self.frame_str = tok.frame_strings(framing) if tok is not None else (None, None)
        self.progress = progress

    # -- one row -> (text, metadata) --------------------------------------------------------------------------
    def _row(self, src: int, row: dict, where: str) -> tuple[str, dict]:
        s = self.sources[src]
        if s.chat:
            field = s.chat if s.chat != "auto" else next((f for f in CHAT_FIELDS if f in row), None)
            if field is None or field not in row:
                want = f"'{s.chat}'" if s.chat != "auto" else "'messages' or 'conversations'"
                raise DataError(f"{where}: no conversation ({want} field; keys: {sorted(row)})")
            return self._render(row.pop(field), where, field), _merge_meta(row)
        text = row.pop(s.text_field, None)
        if not isinstance(text, str):
            raise DataError(f"{where}: no '{s.text_field}' string (keys: {sorted(row)})")
        return text, _merge_meta(row)

    def _render(self, conv: Any, where: str, field: str) -> str:
        msgs = to_messages(conv, where, field)
        try:
            text = self.tok.hf().apply_chat_template(msgs, tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception(), e.g. roles must alternate
            raise DataError(f"{where}: the chat template rejected the conversation ({type(e).__name__}: {e})") \
                from None
        pre, suf = self.frame_str
        if pre and text.startswith(pre):
            text = text[len(pre):]
        if suf and text.endswith(suf):
            text = text[:-len(suf)]
        return text

    # -- formats ----------------------------------------------------------------------------------------------
    def _parquet(self, path: str, src: int) -> Iterator[tuple[str, dict, str]]:
        import pyarrow.parquet as pq

        s = self.sources[src]
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None
        want = set(CHAT_FIELDS if s.chat == "auto" else [s.chat] if s.chat else [s.text_field])
        filt = self.filters[src]
        if filt is not None:
            fields = filt.fields()
            want |= fields
            if fields - set(names):
                want.add("metadata")
        cols = [c for c in names if c in want]
        if not s.chat and s.text_field not in names:
            raise DataError(f"{path}: no '{s.text_field}' column (columns: {names})")
        row_no = 0
        try:
            for batch in pf.iter_batches(batch_size=1024, columns=cols):
                for row in batch.to_pylist():
                    row_no += 1
                    text, meta = self._row(src, row, f"{path}: row {row_no}")
                    yield text, meta, f"{path}/{row_no}"
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt file
            raise DataError(f"{path}: cannot read parquet after row {row_no} ({type(e).__name__}: {e})") from None

    def _jsonl(self, path: str, src: int) -> Iterator[tuple[str, dict, str]]:
        if re.search(r"\.json(\.gz|\.xz)?$", path):  # a .json file may hold one JSON array (OpenHermes-2.5)
            with open_binary(path) as f:
                head = f.read(4096).lstrip()
            if head.startswith(b"["):
                with open_binary(path) as f:
                    items = parse_json_line(f.read(), path)
                if not isinstance(items, list):
                    raise DataError(f"{path}: expected a JSON array of objects or one JSON object per line")
                for i, obj in enumerate(items, 1):
                    if not isinstance(obj, dict):
                        raise DataError(f"{path}: item {i}: not a JSON object")
                    text, meta = self._row(src, obj, f"{path}: item {i}")
                    yield text, meta, f"{path}/{i}"
                return
        with open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                obj = parse_json_line(raw, f"{path}:{line_no}")
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{line_no}: not a JSON object")
                text, meta = self._row(src, obj, f"{path}:{line_no}")
                yield text, meta, f"{path}:{line_no}"

    def _txt(self, path: str, src: int) -> Iterator[tuple[str, dict, str]]:
        with open_binary(path) as f:
            for text, start in iter_text_blocks(f, path):
                yield text, {}, f"{path}:{start}"

    def _hf_disk(self, path: str, src: int) -> Iterator[tuple[str, dict, str]]:
        """A ``datasets.load_from_disk`` directory (one whole file-unit: it goes to a single task)."""
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot load with datasets.load_from_disk ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {list(ds)})")
            ds = ds["train"]
        s = self.sources[src]
        if not s.chat and s.text_field not in ds.column_names:
            raise DataError(f"{path}: no '{s.text_field}' column (columns: {ds.column_names})")
        for i, row in enumerate(ds):
            text, meta = self._row(src, row, f"{path}: row {i + 1}")
            yield text, meta, f"{path}/{i}"

    def iter_file(self, path: str, src: int = 0, fmt: str | None = None) -> Iterator[tuple[str, dict, str]]:
        fmt = fmt or file_format(path)
        try:
            yield from {"hf_disk": self._hf_disk, "parquet": self._parquet, "jsonl": self._jsonl,
                        "txt": self._txt}[fmt](path, src)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from tqdm import tqdm

        mine = task_files(self.files, rank, world_size)
        read = [0] * self.num_sources
        kept = [0] * self.num_sources
        bar = tqdm(total=len(mine), desc=f"task {rank}", unit="file", disable=not self.progress, leave=False,
                   file=sys.stderr)
        try:
            for src, path, fmt in mine:
                filt = self.filters[src]
                if task_errors(self.work_dir):
                    break  # another task found bad input: the run fails, stop reading
                if src not in self.stop_sources:
                    for text, meta, doc_id in self.iter_file(path, src, fmt):
                        if src in self.stop_sources:
                            break
                        read[src] += 1
                        if not text.strip() or not passes(filt, meta):
                            continue
                        kept[src] += 1
                        self.stat_update("documents")
                        yield Document(text=text, id=doc_id, metadata={"lrc_source": src})
                bar.update()
        finally:
            bar.close()  # clears the bar's line, so an error message starts a clean line
        write_json_atomic(task_path(self.work_dir, rank, READ_SUFFIX),
                          {"documents_read": read, "documents_kept": kept, "files": len(mine)})


class TokenFileWriter(PipelineStep):
    """Tokenizes documents (fast batch encode), frames them and appends the ids to one file per source.

    Files (``lrc.data.prepare.workdir``): ``<work_dir>/tasks/task{rank:05d}.src{j:03d}.bin`` (dtype ``dtype``), ``.len``
    (int64 framed length of every document) and ``task{rank:05d}.json`` (tokens and documents tokenized per
    source). Source ``j`` stops once
    this task wrote ``budgets[j]`` tokens of it (the last document is cut there).
    """

    name = "LRC token writer"
    type = "🔢 - TOKENIZER"

    def __init__(self, tok: TokenizerSpec, framing: str, dtype: str, work_dir: str, budgets: list[int | None],
                 stop_sources: set) -> None:
        super().__init__()
        self.tok = tok
        self.framing = framing
        self.dtype = dtype
        self.work_dir = work_dir
        self.num_sources = len(budgets)
        self.budgets = list(budgets)
        self.stop_sources = stop_sources

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        backend = self.tok.backend()
        prefix, suffix = self.tok.frame(self.framing)
        dtype = np.dtype(self.dtype)
        handles: dict[int, Any] = {}
        tokens = [0] * self.num_sources
        docs = [0] * self.num_sources
        batch: list[tuple[int, str]] = []
        chars = 0

        def flush() -> None:
            enc = backend.encode_batch([t for _, t in batch], add_special_tokens=False)
            lens: dict[int, list[int]] = {}
            for (src, _), e in zip(batch, enc):
                if src in self.stop_sources:
                    continue
                ids = np.asarray(prefix + e.ids + suffix, dtype=dtype)
                budget = self.budgets[src]
                if budget is not None:
                    ids = ids[: budget - tokens[src]]
                    if tokens[src] + ids.size >= budget:
                        self.stop_sources.add(src)
                if src not in handles:
                    base = source_base(self.work_dir, rank, src)
                    handles[src] = (open(base + ".bin", "wb"), open(base + ".len", "wb"))
                handles[src][0].write(ids.tobytes())
                lens.setdefault(src, []).append(int(ids.size))
                tokens[src] += int(ids.size)
                docs[src] += 1
                self.stat_update("tokens", value=int(ids.size))
            for src, ls in lens.items():
                handles[src][1].write(np.asarray(ls, dtype=np.int64).tobytes())
            batch.clear()

        try:
            for doc in data or []:
                src = doc.metadata["lrc_source"]
                if src in self.stop_sources:
                    continue
                batch.append((src, doc.text))
                chars += len(doc.text)
                if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                    flush()
                    chars = 0
            if batch:
                flush()
        except DataError as e:  # bad input: reported by the parent as one line (``task_errors``), not a traceback
            write_json_atomic(task_path(self.work_dir, rank, TASK_ERROR_SUFFIX), {"error": str(e)})
            return
        finally:
            for hs in handles.values():
                for h in hs:
                    h.close()
        write_json_atomic(task_path(self.work_dir, rank, DONE_SUFFIX),
                          {"tokens": tokens, "documents_tokenized": docs})
        return
        yield  # a generator: datatrove drains it


class FinalizeStep(PipelineStep):
    """The merge as a one-task datatrove step (the Slurm merge job): ``finalize(work_dir)``."""

    name = "LRC merge"
    type = "🔀 - MERGE"

    def __init__(self, work_dir: str) -> None:
        super().__init__()
        self.work_dir = work_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank == 0:
            finalize(self.work_dir)
        return
        yield
