"""Data preparation: raw text sources -> shuffled, fixed-length token shards (+ optional official packed jsonl).

Pipeline (``prepare(...)``, CLI ``data/prepare.py``):

1. **Plan** (main process): expand ``inputs`` (comma-separated paths / globs; each entry is one *source*, e.g.
   fineweb and hermes; a ``save_to_disk`` directory counts as one file) into an ordered file list
   ``[(source, file), ...]``, check every file exists and has a known format (``.parquet``,
   ``.jsonl[.gz|.xz]``, ``.txt[.gz|.xz]``), and load the tokenizer once to fail early.
2. **Tokenize** (datatrove ``LocalPipelineExecutor``, ``W = min(workers, number of files)`` tasks). Task ``r``
   of ``W`` takes the *contiguous* slice ``files[r*n//W:(r+1)*n//W]`` and runs two pipeline steps:
   ``SourceReader`` (datatrove ``BaseReader``: parquet rows via datatrove's ``ParquetReader.read_file``, strict
   jsonl and blank-line-separated text readers - datatrove's ``JsonlReader`` skips malformed lines and lines
   without text with a log warning, we stop with the file and line instead; applies ``--filter``) ->
   ``TokenFileWriter`` (fast batch encode with ``tokenizers``, frames every document, appends the ids to
   ``tasks/task{r:05d}.src{j:03d}.bin`` per source ``j``, stops a source once this task holds ``budget`` tokens
   of it, writes ``tasks/task{r:05d}.json``).
3. **Merge** (main process, once, after all tasks): for each source in input order, concatenate its task files in
   task order and keep the first ``budget`` tokens; concatenate the sources; cut into ``N = T // S`` sequences of
   exactly ``S = data_max_len`` tokens (the tail is dropped); shuffle the sequence order with
   ``np.random.default_rng(seed).permutation(N)``; write ``shard_00000.bin``... (raw little-endian ``uint16`` when
   the vocabulary fits, else ``uint32``, sequences contiguous, memory-mappable) and ``manifest.json``; optionally
   ``train.jsonl`` in the official ``{"input_ids": [...]}`` format, same order as the shards.

With ``budget``, each task stops reading a source once it alone holds ``budget`` tokens of it, so the manifest's
"documents read/kept" then depend on the number of tasks; the tokens kept do not.

Because files are split contiguously and task streams are concatenated in task order, the token stream - and so
the output bytes - do not depend on the number of workers. Everything is written into ``<output>.tmp-<pid>`` next
to ``output`` and renamed at the very end, so a partial output never looks complete.

**Scaling to a cluster.** Replace ``LocalPipelineExecutor`` by ``datatrove.executor.SlurmPipelineExecutor`` with
the same two steps (``SourceReader`` -> ``TokenFileWriter``) and ``tasks=W`` (each Slurm array task tokenizes its
contiguous file slice and writes its own ``tasks/task*.bin`` + ``.json`` on a shared filesystem; datatrove's
completion markers let a failed array be re-submitted without redoing finished tasks). The merge (``merge_tasks``)
is a single job run once, after all tasks (``depends=`` on the tokenize executor, or a separate job): it only
streams bytes (``memmap`` reads, sequential writes), so it is bounded by disk speed, not CPU.

An input may also be a ``datasets`` ``save_to_disk`` directory (``load_from_disk``; a DatasetDict's ``train``
split); it is one unit of work, read by a single task. Not implemented: chat-template rendering (render OpenHermes
conversations into a ``text`` field beforehand), document-level deduplication.
"""

from __future__ import annotations

import glob
import json
import lzma
import operator
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, iter_text_blocks, open_binary, parse_json_line

FORMATS = ("parquet", "jsonl", "txt")
FRAMINGS = ("bos_eos", "official")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_BATCH_DOCS = 256
_BATCH_CHARS = 1 << 20
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}


# ----------------------------------------------------------------------------------------------------------------
# Inputs, filter, tokenizer
# ----------------------------------------------------------------------------------------------------------------

def is_saved_dataset(path: str) -> bool:
    """A ``datasets`` ``save_to_disk`` directory (a Dataset, or a DatasetDict whose ``train`` split is used)."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in
                                       ("state.json", "dataset_dict.json"))


def file_format(path: str) -> str | None:
    if is_saved_dataset(path):
        return "hf_disk"
    p = path[:-3] if path.endswith((".gz", ".xz")) else path
    for ext, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"), (".txt", "txt")):
        if p.endswith(ext):
            return fmt if not (fmt == "parquet" and p != path) else None
    return None


def expand_inputs(inputs: str | list | tuple) -> list[tuple[str, list[str]]]:
    """'a.parquet,dir/*.jsonl' -> [(source name, [files...]), ...] (one source per entry, files sorted)."""
    entries = [str(e).strip() for e in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    entries = [e for e in entries if e]
    if not entries:
        raise DataError("--inputs: no input given")
    sources = []
    for e in entries:
        if any(c in e for c in "*?["):
            files = sorted(f for f in glob.glob(e, recursive=True) if os.path.isfile(f))
            if not files:
                raise DataError(f"{e}: the pattern matches no file")
        elif os.path.isdir(e):
            if not is_saved_dataset(e):
                raise DataError(f"{e}: a directory that is not a datasets.save_to_disk dataset (no state.json / "
                                f"dataset_dict.json); pass files or a glob such as {e.rstrip('/')}/*.parquet")
            files = [e]
        elif not os.path.exists(e):
            raise DataError(f"{e}: no such file")
        else:
            files = [e]
        for f in files:
            if file_format(f) is None:
                raise DataError(f"{f}: unsupported format; accepted: .parquet, .jsonl/.json (optionally .gz/.xz), "
                                ".txt (optionally .gz/.xz), or a datasets.save_to_disk directory")
            if not os.access(f, os.R_OK):
                raise DataError(f"{f}: not readable (permission denied)")
        sources.append((e, files))
    return sources


def parse_filter(spec: str | None) -> tuple[str, str, Any] | None:
    """'int_score>=4' -> ('int_score', '>=', 4). Numbers are compared as numbers, anything else as strings."""
    if spec is None or spec == "":
        return None
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*", str(spec))
    if not m:
        raise DataError(f"--filter {spec!r}: expected FIELD OP VALUE with OP one of >= <= == != > <, "
                        "e.g. int_score>=4")
    field, op, raw = m.groups()
    try:
        value: Any = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            value = raw.strip("'\"")
    return field, op, value


def passes(filt: tuple[str, str, Any] | None, meta: dict) -> bool:
    """A document whose metadata lacks the field passes (as the official ``min_edu_score`` code)."""
    if filt is None:
        return True
    field, op, value = filt
    if field not in meta or meta[field] is None:
        return True
    got = meta[field]
    try:
        return bool(_OPS[op](got, value))
    except TypeError:
        return bool(_OPS[op](str(got), str(value)))


class TokenizerSpec:
    """What the tasks need of the tokenizer, picklable: the tokenizers JSON, BOS/EOS ids, vocabulary size."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        try:
            tok = _load_hf_tokenizer(self.path)
            backend = getattr(tok, "backend_tokenizer", None)
            if backend is None:
                raise DataError("not a fast tokenizer (no tokenizers backend)")
        except DataError as e:
            raise DataError(f"{self.path}: cannot load the tokenizer ({e})") from None
        except Exception as e:  # noqa: BLE001 - any loader failure is a user error here
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{self.path}: cannot load the tokenizer ({type(e).__name__}: {msg})") from None
        self.json = backend.to_str()
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id
        self.vocab_size = len(tok)
        self.name = getattr(tok, "name_or_path", "") or self.path

    def backend(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.json)

    def frame(self, framing: str) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around every document; a missing special token is left out."""
        bos = [] if self.bos_id is None else [int(self.bos_id)]
        eos = [] if self.eos_id is None else [int(self.eos_id)]
        return (bos, eos) if framing == "bos_eos" else (eos, bos)


def _load_hf_tokenizer(path: str):
    """A tokenizer from a directory or ``.gguf`` file (``lrc.teacher.load_tokenizer``) or a ``tokenizer.json``."""
    from transformers import PreTrainedTokenizerFast

    from .teacher import load_tokenizer

    if not os.path.exists(path):
        raise DataError("no such file or directory")
    if os.path.isdir(path) or path.endswith(".gguf"):
        return load_tokenizer(path)
    if path.endswith(".json"):
        d = os.path.dirname(os.path.abspath(path))
        if os.path.basename(path) == "tokenizer.json" and os.path.isfile(os.path.join(d, "tokenizer_config.json")):
            return load_tokenizer(d)
        return PreTrainedTokenizerFast(tokenizer_file=path)
    raise DataError("expected a tokenizer directory, a tokenizer.json or a .gguf file")


# ----------------------------------------------------------------------------------------------------------------
# Pipeline steps (datatrove)
# ----------------------------------------------------------------------------------------------------------------

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.readers.base import BaseReader  # noqa: E402


def task_files(files: list[tuple[int, str]], rank: int, world_size: int) -> list[tuple[int, str]]:
    """The contiguous slice of ``files`` for task ``rank`` (concatenating the slices in rank order = ``files``)."""
    n = len(files)
    return files[rank * n // world_size:(rank + 1) * n // world_size]


class SourceReader(BaseReader):
    """Reads this task's contiguous share of the input files and yields the documents that pass the filter.

    Every document gets ``metadata["lrc_source"]`` (source index). Malformed JSON, a missing text field or bad
    UTF-8 raise :class:`DataError` naming file and line (parquet: row). Per-source counts of documents read and
    kept go to ``<work_dir>/tasks/task{rank:05d}.read.json`` when the task's input is exhausted.
    ``stop_sources`` (shared with :class:`TokenFileWriter`) holds the sources whose budget this task has filled.
    """

    name = "LRC source reader"
    type = "📖 - READER"

    def __init__(self, files: list[tuple[int, str]], text_field: str, filt, work_dir: str, num_sources: int,
                 stop_sources: set, progress: bool = True) -> None:
        super().__init__(text_key=text_field)
        self.files = files
        self.filt = filt
        self.work_dir = work_dir
        self.num_sources = num_sources
        self.stop_sources = stop_sources
        self.progress = progress

    def _parquet(self, path: str) -> Iterator[tuple[str, dict, str]]:
        from datatrove.pipeline.readers import ParquetReader

        field = self.text_key

        def adapter(reader, data: dict, p: str, row: int) -> dict:
            text = data.pop(field, None)
            if not isinstance(text, str):
                raise DataError(f"{path}: row {row + 1}: no '{field}' string (columns: {sorted(data)})")
            meta = data.pop("metadata", None)
            meta = meta if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
            return {"text": text if text.strip() else " ", "id": f"{p}/{row}", "metadata": meta | data}

        reader = ParquetReader(os.path.dirname(os.path.abspath(path)), adapter=adapter, text_key=field,
                               read_metadata=True)
        try:
            for doc in reader.read_file(os.path.basename(path)):
                yield doc.text, doc.metadata, doc.id
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None

    def _jsonl(self, path: str) -> Iterator[tuple[str, dict, str]]:
        field = self.text_key
        with open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                obj = parse_json_line(raw, f"{path}:{line_no}")
                if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                    raise DataError(f"{path}:{line_no}: no '{field}' string")
                text = obj.pop(field)
                meta = obj.pop("metadata", None)
                meta = meta if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
                yield text, meta | obj, f"{path}:{line_no}"

    def _txt(self, path: str) -> Iterator[tuple[str, dict, str]]:
        with open_binary(path) as f:
            for text, start in iter_text_blocks(f, path):
                yield text, {}, f"{path}:{start}"

    def _hf_disk(self, path: str) -> Iterator[tuple[str, dict, str]]:
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
        field = self.text_key
        if field not in ds.column_names:
            raise DataError(f"{path}: no '{field}' column (columns: {ds.column_names})")
        for i, row in enumerate(ds):
            text = row.pop(field)
            if not isinstance(text, str):
                raise DataError(f"{path}: row {i + 1}: no '{field}' string")
            meta = row.pop("metadata", None)
            meta = meta if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
            yield text, meta | row, f"{path}/{i}"

    def iter_file(self, path: str) -> Iterator[tuple[str, dict, str]]:
        fmt = file_format(path)
        try:
            if fmt == "hf_disk":
                yield from self._hf_disk(path)
            elif fmt == "parquet":
                yield from self._parquet(path)
            elif fmt == "jsonl":
                yield from self._jsonl(path)
            else:
                yield from self._txt(path)
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
            for src, path in mine:
                if src not in self.stop_sources:
                    for text, meta, doc_id in self.iter_file(path):
                        if src in self.stop_sources:
                            break
                        read[src] += 1
                        if not text.strip() or not passes(self.filt, meta):
                            continue
                        kept[src] += 1
                        self.stat_update("documents")
                        yield Document(text=text, id=doc_id, metadata={"lrc_source": src})
                bar.update()
        finally:
            bar.close()  # clears the bar's line, so an error message starts a clean line
        _write_json(os.path.join(self.work_dir, "tasks", f"task{rank:05d}.read.json"),
                    {"documents_read": read, "documents_kept": kept, "files": len(mine)})


class TokenFileWriter(PipelineStep):
    """Tokenizes documents (fast batch encode), frames them and appends the ids to one file per source.

    Files: ``<work_dir>/tasks/task{rank:05d}.src{j:03d}.bin`` (dtype ``dtype``) and ``task{rank:05d}.json``
    (tokens and documents tokenized per source). A source stops once this task wrote ``budget`` tokens of it
    (the last document is cut there).
    """

    name = "LRC token writer"
    type = "🔢 - TOKENIZER"

    def __init__(self, tok: TokenizerSpec, framing: str, dtype: str, work_dir: str, num_sources: int,
                 budget: int | None, stop_sources: set) -> None:
        super().__init__()
        self.tok = tok
        self.framing = framing
        self.dtype = dtype
        self.work_dir = work_dir
        self.num_sources = num_sources
        self.budget = budget
        self.stop_sources = stop_sources

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        backend = self.tok.backend()
        prefix, suffix = self.tok.frame(self.framing)
        dtype = np.dtype(self.dtype)
        tdir = os.path.join(self.work_dir, "tasks")
        handles: dict[int, Any] = {}
        tokens = [0] * self.num_sources
        docs = [0] * self.num_sources
        batch: list[tuple[int, str]] = []
        chars = 0

        def flush() -> None:
            enc = backend.encode_batch([t for _, t in batch], add_special_tokens=False)
            for (src, _), e in zip(batch, enc):
                if src in self.stop_sources:
                    continue
                ids = np.asarray(prefix + e.ids + suffix, dtype=dtype)
                if self.budget is not None:
                    ids = ids[: self.budget - tokens[src]]
                    if tokens[src] + ids.size >= self.budget:
                        self.stop_sources.add(src)
                if src not in handles:
                    handles[src] = open(os.path.join(tdir, f"task{rank:05d}.src{src:03d}.bin"), "wb")
                handles[src].write(ids.tobytes())
                tokens[src] += int(ids.size)
                docs[src] += 1
                self.stat_update("tokens", value=int(ids.size))
            batch.clear()

        for doc in data or []:
            src = doc.metadata["lrc_source"]
            if src in self.stop_sources:
                continue
            batch.append((src, doc.text))
            chars += len(doc.text)
            if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                flush()
                chars = 0
        if batch:
            flush()
        for h in handles.values():
            h.close()
        _write_json(os.path.join(tdir, f"task{rank:05d}.json"), {"tokens": tokens, "documents_tokenized": docs})
        return
        yield  # a generator: datatrove drains it


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------------------------

def merge_tasks(work_dir: str, num_tasks: int, num_sources: int, dtype: str, seq_len: int, seed: int,
                budget: int | None, sequences_per_shard: int, jsonl_export: bool) -> dict:
    """Task files -> stream.bin (source order, budget applied) -> shuffled shard_*.bin (+ train.jsonl)."""
    dt = np.dtype(dtype)
    tdir = os.path.join(work_dir, "tasks")
    stream_path = os.path.join(work_dir, "stream.tmp")
    per_source = []
    chunk = 1 << 24
    with open(stream_path, "wb") as out:
        for src in range(num_sources):
            left = budget
            n = 0
            for r in range(num_tasks):
                p = os.path.join(tdir, f"task{r:05d}.src{src:03d}.bin")
                if not os.path.exists(p) or (left is not None and left <= 0):
                    continue
                mm = np.memmap(p, dtype=dt, mode="r") if os.path.getsize(p) else np.zeros(0, dt)
                take = mm.size if left is None else min(mm.size, left)
                for a in range(0, take, chunk):
                    out.write(np.asarray(mm[a:min(take, a + chunk)]).tobytes())
                n += take
                if left is not None:
                    left -= take
                del mm
            per_source.append(n)
    total = sum(per_source)
    num_seqs = total // seq_len
    perm = np.random.default_rng(seed).permutation(num_seqs)
    shards = []
    if num_seqs:
        stream = np.memmap(stream_path, dtype=dt, mode="r", shape=(num_seqs, seq_len))
        jf = open(os.path.join(work_dir, "train.jsonl"), "w") if jsonl_export else None
        for k, a in enumerate(range(0, num_seqs, sequences_per_shard)):
            name = f"shard_{k:05d}.bin"
            idx = perm[a:a + sequences_per_shard]
            with open(os.path.join(work_dir, name), "wb") as f:
                step = max(1, (1 << 24) // seq_len)
                for b in range(0, idx.size, step):
                    block = np.asarray(stream[np.sort(idx[b:b + step])])  # sorted: sequential-ish reads
                    order = np.argsort(np.argsort(idx[b:b + step]))
                    block = block[order]
                    f.write(block.tobytes())
                    if jf is not None:
                        for row in block:
                            jf.write('{"input_ids": [' + ", ".join(map(str, row.tolist())) + "]}\n")
            shards.append({"file": name, "num_sequences": int(idx.size)})
        if jf is not None:
            jf.close()
        del stream
    os.remove(stream_path)
    return {"per_source_tokens": per_source, "stream_tokens": total, "num_sequences": num_seqs, "shards": shards,
            "dropped_tokens": total - num_seqs * seq_len}


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------

def prepare(inputs, tokenizer: str, output: str, data_max_len: int = 2048, workers: int = 1, seed: int = 0,
            text_field: str = "text", framing: str = "bos_eos", filter: str | None = None,  # noqa: A002
            budget: int | None = None, jsonl_export: bool = False, sequences_per_shard: int | None = None,
            overwrite: bool = False, progress: bool = True, quiet: bool = False) -> dict:
    """Build token shards in ``output``; returns the manifest (see the module docstring)."""
    t0 = time.time()
    if isinstance(data_max_len, bool) or not isinstance(data_max_len, int) or data_max_len < 1:
        raise DataError(f"--data-max-len must be a positive integer, got {data_max_len!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be a positive integer, got {workers!r}")
    if framing not in FRAMINGS:
        raise DataError(f"--framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 1):
        raise DataError(f"--budget must be a positive number of tokens, got {budget!r}")
    budget = None if budget is None else int(budget)
    if not output:
        raise DataError("--output is required")
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not overwrite:
        raise DataError(f"{output}: already exists (pass --overwrite to replace it)")
    filt = parse_filter(filter)
    sources = expand_inputs(inputs)
    tok = TokenizerSpec(tokenizer)
    dtype = "uint16" if tok.vocab_size <= 65536 else "uint32"
    files = [(j, f) for j, (_, fs) in enumerate(sources) for f in fs]
    num_tasks = min(workers, len(files))  # a task per worker, but never a task without a file
    if sequences_per_shard is None:
        sequences_per_shard = max(1, (1 << 30) // (np.dtype(dtype).itemsize * data_max_len))  # ~1 GiB shards

    parent = os.path.dirname(output) or "."
    os.makedirs(parent, exist_ok=True)
    work = f"{output}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "tasks"))
    try:
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.utils.logging import logger

        logger.remove()  # datatrove logs per task into work/logs; keep the console for progress and errors
        logger.add(sys.stderr, level="WARNING", format="{level}: {message}")
        stop: set = set()
        pipeline = [
            SourceReader(files, text_field, filt, work, len(sources), stop, progress=progress and not quiet),
            TokenFileWriter(tok, framing, dtype, work, len(sources), budget, stop),
        ]
        ex = LocalPipelineExecutor(pipeline, tasks=num_tasks, workers=min(workers, num_tasks),
                                   logging_dir=os.path.join(work, "logs"), skip_completed=False)
        t_tok = time.time()
        try:
            ex.run()
        except DataError:
            raise
        except Exception as e:  # a task failed: surface a DataError raised inside a worker process
            cur: BaseException | None = e
            while cur is not None:
                if isinstance(cur, DataError) or type(cur).__name__ == "DataError":
                    raise DataError(str(cur)) from None
                cur = cur.__cause__ or cur.__context__
            raise
        t_tok = time.time() - t_tok
        read = np.zeros(len(sources), dtype=np.int64)
        kept = np.zeros(len(sources), dtype=np.int64)
        tokd = np.zeros(len(sources), dtype=np.int64)
        for r in range(num_tasks):
            for name in (f"task{r:05d}.read.json", f"task{r:05d}.json"):
                if not os.path.exists(os.path.join(work, "tasks", name)):
                    raise DataError(f"task {r} did not finish (no {name}); see {work}/logs")
            rj = json.loads(Path(work, "tasks", f"task{r:05d}.read.json").read_text())
            tj = json.loads(Path(work, "tasks", f"task{r:05d}.json").read_text())
            read += rj["documents_read"]
            kept += rj["documents_kept"]
            tokd += tj["documents_tokenized"]
        merged = merge_tasks(work, num_tasks, len(sources), dtype, data_max_len, seed, budget, sequences_per_shard,
                             jsonl_export)
        src_info = []
        for j, (name, fs) in enumerate(sources):
            info = {"input": name, "files": len(fs), "documents_read": int(read[j]), "documents_kept": int(kept[j]),
                    "tokens": int(merged["per_source_tokens"][j])}
            if budget is not None:
                info["budget"] = budget
                if info["tokens"] < budget:
                    print(f"warning: {name}: budget {budget} tokens is larger than the source ({info['tokens']} "
                          "tokens); all of it is used", file=sys.stderr)
            src_info.append(info)
        if merged["num_sequences"] == 0:
            raise DataError(f"{', '.join(s for s, _ in sources)}: only {merged['stream_tokens']} tokens, fewer than "
                            f"one sequence of {data_max_len}")
        elapsed = time.time() - t0
        manifest = {
            "format": "lrc-token-shards", "version": MANIFEST_VERSION,
            "total_tokens": merged["num_sequences"] * data_max_len,
            "stream_tokens": merged["stream_tokens"], "dropped_tokens": merged["dropped_tokens"],
            "num_sequences": merged["num_sequences"], "seq_len": data_max_len, "dtype": dtype,
            "vocab_size": tok.vocab_size, "tokenizer": os.path.abspath(tok.path), "tokenizer_name": tok.name,
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "framing": framing, "seed": seed,
            "filter": filter, "text_field": text_field, "budget": budget, "workers": workers, "tasks": num_tasks,
            "sources": src_info, "shards": merged["shards"],
            "jsonl_export": "train.jsonl" if jsonl_export else None,
            "tokenize_seconds": round(t_tok, 3), "seconds": round(elapsed, 3),
        }
        shutil.rmtree(os.path.join(work, "tasks"))
        _write_json(os.path.join(work, MANIFEST), manifest)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not quiet:
        print(summary(manifest, output))
    return manifest


def summary(m: dict, output: str) -> str:
    lines = [f"wrote {output}: {m['num_sequences']} sequences x {m['seq_len']} tokens = {m['total_tokens']} tokens "
             f"({m['dtype']}, {len(m['shards'])} shard(s); {m['dropped_tokens']} tail tokens dropped)"]
    for s in m["sources"]:
        lines.append(f"  {s['input']}: {s['files']} file(s), documents read {s['documents_read']}, kept "
                     f"{s['documents_kept']}, tokens {s['tokens']}")
    tps = m["stream_tokens"] / max(m["seconds"], 1e-9)
    lines.append(f"  {m['seconds']:.2f} s total ({m['tokenize_seconds']:.2f} s tokenizing, {m['workers']} worker(s)), "
                 f"{tps:,.0f} tokens/s")
    return "\n".join(lines)
