"""Data preparation: raw text sources -> shuffled, fixed-length token shards (+ optional official packed jsonl).

Pipeline (``prepare(...)``, CLI ``data/prepare.py``):

1. **Plan** (main process, ``make_plan``): resolve the *sources* - every comma-separated ``--inputs`` entry (paths /
   globs) and every entry of ``--sources FILE`` (JSON / YAML list of ``{path, name, format, text_field, filter,
   budget_tokens, weight, chat}``) - into an ordered file list ``[(source, file, format), ...]``; check every file
   exists and has a known format (``.parquet``, ``.jsonl[.gz|.xz]`` / ``.json``, ``.txt[.gz|.xz]``, a ``datasets``
   ``save_to_disk`` directory, or the source's ``format``); load the tokenizer once to fail early (and check it
   has a chat template when a source needs one); write ``plan.json`` into the work directory
   ``<output>.tmp-<pid>`` (``<output>.tmp-slurm`` on Slurm).
2. **Tokenize** (datatrove executor, ``W`` tasks). Task ``r`` of ``W`` takes the *contiguous* slice
   ``files[r*n//W:(r+1)*n//W]`` and runs two pipeline steps: ``SourceReader`` (a datatrove ``BaseReader``: parquet
   via pyarrow reading only the columns it needs, strict jsonl, blank-line-separated text, ``load_from_disk``;
   renders conversations with the teacher's chat template; applies the source's filter; stops with file and line
   on bad input where datatrove's readers would skip it with a log warning) -> ``TokenFileWriter`` (fast batch
   encode with ``tokenizers``, frames every document, appends the ids to ``tasks/task{r:05d}.src{j:03d}.bin`` and
   the document lengths to ``.len``; stops a source once this task holds ``budget_tokens`` of it).
3. **Merge** (``finalize``, once, after all tasks): per source in order, concatenate its task files in task order
   and keep the first ``budget_tokens`` tokens (the *distinct* tokens); with weights, resample documents (below);
   concatenate the sources; cut into ``N = T // S`` sequences of exactly ``S = data_max_len`` tokens (the tail is
   dropped); shuffle the sequence order with ``np.random.default_rng(seed).permutation(N)``; write
   ``shard_00000.bin``... (raw little-endian ``uint16`` when the vocabulary fits, else ``uint32``, sequences
   contiguous, memory-mappable) and ``manifest.json``; optionally ``train.jsonl`` in the official
   ``{"input_ids": [...]}`` format, same order as the shards. Then rename the work directory to ``output``.

**Per-source options** (defaults: the global ``--text-field`` / ``--filter`` / ``--budget``):

- ``filter``: ``FIELD OP LITERAL`` joined by ``and`` (OP one of ``>= <= == != > <``; LITERAL a number,
  ``true``/``false``, a quoted or bare string), e.g. ``int_score >= 4 and language == en``; parsed, never
  ``eval``-ed. FIELD is a top-level column / JSON key or a key of the ``metadata`` dict (``a.b`` walks nested
  dicts). A document whose field is missing or null passes (as the official ``min_edu_score`` code).
- ``budget_tokens``: take at most this many *distinct* tokens (framing included) from the source: the first ones
  in file order, the last document cut (tasks stop reading the source there). With ``budget_sample: random`` a
  random subset of its documents instead (``default_rng([seed, j, 1])``, the last one cut, written in source
  order; the whole source is read and tokenized) - as the official recipe, which took the first 10 B tokens of
  the *shuffled* fineweb-edu. A source with fewer tokens is used whole, with a warning.
- ``weight``: the source's share of the output, ``weight / sum(weights)`` of the token stream (all sources need a
  weight, or none). The stream keeps the total ``T = sum of distinct tokens`` (weights redistribute, they add
  nothing): source ``j`` gets ``t_j = T * w_j / sum(w)`` tokens (rounded, summing to ``T``). A source above its
  distinct tokens ``d_j`` is *upsampled*: all its documents ``t_j // d_j`` times, then a subset for the rest; one
  below is *downsampled* to a subset. The subset is drawn with ``default_rng([seed, j])``: documents in a random
  order until ``t_j mod d_j`` tokens, the last one cut, written in source order. Budget and weight together: the
  budget caps the distinct tokens read, the weight then sets the share - so a weighted source can contribute more
  than ``budget_tokens`` tokens, by repeating documents (the manifest records ``distinct_tokens``, ``tokens`` and
  ``repeat``). Shares hold exactly in the token stream, i.e. within one sequence in the shards.
- ``chat``: ``true`` renders each row's conversation with the teacher's chat template
  (``tokenizer.apply_chat_template(messages, tokenize=False)``) into the document text: OpenHermes-style
  ``conversations: [{from, value}]`` (roles ``human``/``gpt``/``system`` -> ``user``/``assistant``/``system``) or
  ``messages: [{role, content}]``; a field name picks the column. A rendered text that already starts with the
  framing prefix token (e.g. a template that writes ``{{ bos_token }}``) or ends with the suffix token does not
  get it twice.

With a budget, each task stops reading a source once it alone holds ``budget_tokens`` of it, so the manifest's
"documents read/kept" then depend on the number of tasks; the tokens kept do not.

Because files are split contiguously and task streams are concatenated in task order, the token stream - and so
the output bytes - do not depend on the number of workers / tasks. Everything is written into the work directory
next to ``output`` and renamed at the very end, so a partial output never looks complete.

**Slurm** (``executor="slurm"``, ``data/prepare.py --executor slurm --slurm-partition P``): the same two steps run
as a ``datatrove`` ``SlurmPipelineExecutor`` job array (``tasks`` array tasks, default one per input file), and
the merge runs as a second ``SlurmPipelineExecutor`` job with one task (``FinalizeStep``) that depends on the
first (``afterok``). ``prepare`` returns after submitting (``sbatch``). The work directory
``<output>.tmp-slurm`` and the logs ``<output>.logs`` (datatrove logs, stats, completion markers, Slurm output)
must be on a filesystem shared by the nodes. Re-running the same command after a failure re-submits only the
unfinished tasks (datatrove's completion markers) and the merge; a different command refuses to reuse the work
directory. The merge only streams bytes (``memmap`` reads, sequential writes): it is bound by disk speed.
"""

from __future__ import annotations

import glob
import json
import lzma
import math
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
from .run_dir import publish_dir, write_json_atomic

FORMATS = ("parquet", "jsonl", "txt", "hf_disk")
FRAMINGS = ("bos_eos", "official")
EXECUTORS = ("local", "slurm")
MANIFEST = "manifest.json"
PLAN = "plan.json"
MANIFEST_VERSION = 2
SOURCE_KEYS = ("path", "name", "format", "text_field", "filter", "budget_tokens", "budget_sample", "weight", "chat")
BUDGET_SAMPLES = ("first", "random")
CHAT_FIELDS = ("messages", "conversations")
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
              "tool": "tool"}
_BATCH_DOCS = 256
_BATCH_CHARS = 1 << 20
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}


# ----------------------------------------------------------------------------------------------------------------
# Filter expressions (a tiny parser, no eval)
# ----------------------------------------------------------------------------------------------------------------

_FILTER_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>>=|<=|==|!=|>|<)"""
                           r"""|(?P<word>[^\s<>=!'"]+))""")
_FIELD = re.compile(r"[A-Za-z_][\w.-]*")
_FILTER_HELP = ("expected FIELD OP VALUE [and FIELD OP VALUE ...] with OP one of >= <= == != > <, "
                "e.g. 'int_score >= 4' or \"int_score >= 4 and language == 'en'\"")


def _literal(kind: str, text: str) -> Any:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


class Filter:
    """Conditions ``(field, op, value)``, all of which must hold (a missing / null field passes)."""

    def __init__(self, spec: str, conds: list[tuple[str, str, Any]]) -> None:
        self.spec = spec
        self.conds = conds

    def fields(self) -> set[str]:
        """Top-level column names the conditions read (``a.b`` -> ``a``)."""
        return {f.split(".")[0] for f, _, _ in self.conds} | {f for f, _, _ in self.conds}

    @staticmethod
    def _lookup(meta: dict, field: str) -> Any:
        if field in meta:
            return meta[field]
        cur: Any = meta
        for part in field.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur

    @staticmethod
    def _cmp(op: str, got: Any, want: Any) -> bool:
        fn = _OPS[op]
        if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(got, str):
            try:
                got = float(got)
            except ValueError:
                return bool(fn(got, str(want)))
        try:
            return bool(fn(got, want))
        except TypeError:
            return bool(fn(str(got), str(want)))

    def __call__(self, meta: dict) -> bool:
        for field, op, want in self.conds:
            got = self._lookup(meta, field)
            if got is not None and not self._cmp(op, got, want):
                return False
        return True

    def __repr__(self) -> str:
        return f"Filter({self.spec!r})"


def parse_filter(spec: str | list | tuple | None) -> Filter | None:
    """``'int_score>=4'`` / ``'a >= 4 and b == "x y"'`` / a list of such strings (all must hold) -> Filter."""
    if spec is None or spec == "" or spec == [] or spec is False:
        return None
    parts = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    if parts is None or not all(isinstance(p, str) for p in parts):
        raise DataError(f"filter {spec!r}: {_FILTER_HELP}")
    conds: list[tuple[str, str, Any]] = []
    for part in parts:
        toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(part):
            if not part[pos:].strip():
                break
            m = _FILTER_TOKEN.match(part, pos)
            if not m or m.end() == pos:
                raise DataError(f"filter {part!r}: cannot parse at {part[pos:]!r}; {_FILTER_HELP}")
            kind = m.lastgroup
            toks.append((kind, m.group(kind)))
            pos = m.end()
        i = 0
        while True:
            if i + 3 > len(toks) or toks[i][0] != "word" or toks[i + 1][0] != "op" or toks[i + 2][0] == "op" \
                    or not _FIELD.fullmatch(toks[i][1]):
                raise DataError(f"filter {part!r}: {_FILTER_HELP}")
            conds.append((toks[i][1], toks[i + 1][1], _literal(*toks[i + 2])))
            i += 3
            if i == len(toks):
                break
            if toks[i] not in (("word", "and"), ("word", "AND"), ("word", "&&")):
                raise DataError(f"filter {part!r}: expected 'and' after a condition, got {toks[i][1]!r}; "
                                f"{_FILTER_HELP}")
            i += 1
    return Filter(" and ".join(p.strip() for p in parts), conds)


def passes(filt: Filter | None, meta: dict) -> bool:
    return True if filt is None else filt(meta)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------

_SUFFIX = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9, "g": 10 ** 9, "t": 10 ** 12}


def parse_count(v: Any, what: str) -> int | None:
    """A positive token count: 20000, 1e10, '1.5e9', '10B', '500M', '10_000' -> int; None stays None."""
    if v is None:
        return None
    x: Any = v
    if isinstance(v, str):
        s = v.strip().lower().replace("_", "").replace(",", "")
        mult = 1
        if s and s[-1] in _SUFFIX:
            mult, s = _SUFFIX[s[-1]], s[:-1]
        try:
            x = float(s) * mult
        except ValueError:
            x = None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 1:
        raise DataError(f"{what} must be a positive number of tokens (e.g. 20000, 1e10, 10B), got {v!r}")
    return int(x)


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


def expand_path(entry: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """One path / glob / save_to_disk directory -> [(file, format), ...] (glob matches sorted)."""
    e = str(entry).strip()
    if any(c in e for c in "*?["):
        files = sorted(f for f in glob.glob(e, recursive=True) if os.path.isfile(f) or is_saved_dataset(f))
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
    out = []
    for f in files:
        ff = file_format(f) if fmt == "auto" else fmt
        if ff is None:
            raise DataError(f"{f}: unsupported format; accepted: .parquet, .jsonl/.json (optionally .gz/.xz), "
                            ".txt (optionally .gz/.xz), or a datasets.save_to_disk directory (or set the "
                            "source's format)")
        if (ff == "hf_disk") != os.path.isdir(f):
            raise DataError(f"{f}: format {ff} does not fit a {'directory' if os.path.isdir(f) else 'file'}")
        if not os.access(f, os.R_OK):
            raise DataError(f"{f}: not readable (permission denied)")
        out.append((f, ff))
    return out


def load_sources(spec: Any) -> list[dict]:
    """``--sources``: a .json / .yaml / .yml file, or an already parsed list (``[{path: ...}, ...]`` or
    ``{sources: [...]}``) -> list of source dicts (a bare string entry is ``{path: it}``)."""
    where = "--sources"
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        where = path
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (--sources takes a .json / .yaml / .yml file)")
        try:
            with open(path, encoding="utf-8") as f:
                if path.endswith((".yaml", ".yml")):
                    import yaml

                    spec = yaml.safe_load(f)
                elif path.endswith(".json"):
                    spec = json.load(f)
                else:
                    raise DataError(f"{path}: --sources takes a .json, .yaml or .yml file")
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a JSON / YAML syntax error
            msg = str(e).strip().replace("\n", " ")
            raise DataError(f"{path}: cannot parse ({type(e).__name__}: {msg})") from None
    if isinstance(spec, dict) and set(spec) == {"sources"}:
        spec = spec["sources"]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise DataError(f"{where}: expected a non-empty list of sources ({{path: ..., filter: ..., ...}}) or "
                        "{sources: [...]}")
    out = []
    for i, e in enumerate(spec, 1):
        if isinstance(e, str):
            e = {"path": e}
        if not isinstance(e, dict):
            raise DataError(f"{where}: source {i}: expected a mapping with keys {', '.join(SOURCE_KEYS)}")
        bad = sorted(set(e) - set(SOURCE_KEYS))
        if bad:
            raise DataError(f"{where}: source {i}: unknown key(s) {', '.join(map(str, bad))}; accepted: "
                            f"{', '.join(SOURCE_KEYS)}")
        if "path" not in e:
            raise DataError(f"{where}: source {i}: no 'path'")
        out.append(dict(e, _where=f"{where}: source {i}"))
    return out


def resolve_sources(inputs: Any, sources: Any, text_field: str = "text", filter: Any = None,  # noqa: A002
                    budget: Any = None) -> list[dict]:
    """``--inputs`` entries, then ``--sources`` entries -> resolved sources (files expanded, options checked).

    Each: {name, paths, files: [(file, format)], format, text_field, filter (spec str or None), budget_tokens,
    weight, chat (None, "auto" or a field name)}; the global flags are the defaults of missing keys.
    """
    entries: list[dict] = []
    if inputs is not None and inputs != "":
        items = inputs.split(",") if isinstance(inputs, str) else [str(x) for x in inputs]
        entries += [{"path": x.strip(), "_where": f"--inputs {x.strip()}"} for x in items if x.strip()]
    if sources is not None and sources != "":
        entries += load_sources(sources)
    if not entries:
        raise DataError("no input: give --inputs (comma-separated paths / globs) and/or --sources FILE")
    out = []
    for e in entries:
        where = e["_where"]
        paths = e["path"]
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise DataError(f"{where}: 'path' must be a path / glob or a list of them")
        fmt = e.get("format") or "auto"
        if fmt not in FORMATS + ("auto",):
            raise DataError(f"{where}: format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
        tf = e.get("text_field", text_field) or "text"
        if not isinstance(tf, str):
            raise DataError(f"{where}: text_field must be a string")
        try:
            filt = parse_filter(e["filter"] if "filter" in e else filter)
            budget_tokens = parse_count(e["budget_tokens"] if "budget_tokens" in e else budget, "budget_tokens")
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        bsample = e.get("budget_sample") or "first"
        if bsample not in BUDGET_SAMPLES:
            raise DataError(f"{where}: budget_sample must be first or random, got {bsample!r}")
        weight = e.get("weight")
        if weight is not None:
            if isinstance(weight, str):
                try:
                    weight = float(weight)
                except ValueError:
                    pass
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight <= 0:
                raise DataError(f"{where}: weight must be a positive number, got {e.get('weight')!r}")
            weight = float(weight)
        chat = e.get("chat")
        if chat is True or (isinstance(chat, str) and chat.lower() in ("true", "auto", "yes")):
            chat = "auto"
        elif chat is False or chat is None or (isinstance(chat, str) and chat.lower() in ("false", "no", "")):
            chat = None
        elif not isinstance(chat, str):
            raise DataError(f"{where}: chat must be true/false or the name of the conversation field")
        files = [ff for p in paths for ff in expand_path(p, fmt)]
        if chat and any(f[1] == "txt" for f in files):
            raise DataError(f"{where}: chat rendering needs jsonl, parquet or save_to_disk rows, not plain text "
                            f"({next(f for f, x in files if x == 'txt')})")
        name = e.get("name") or ",".join(paths)
        out.append({"name": str(name), "paths": list(paths), "files": files, "format": fmt, "text_field": tf,
                    "filter": None if filt is None else filt.spec, "budget_tokens": budget_tokens,
                    "budget_sample": bsample, "weight": weight, "chat": chat})
    weighted = [s["weight"] is not None for s in out]
    if any(weighted) and not all(weighted):
        names = [s["name"] for s, w in zip(out, weighted) if not w]
        raise DataError(f"give every source a weight, or none (no weight: {', '.join(names)})")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

class TokenizerSpec:
    """What the tasks need of the tokenizer, picklable: the tokenizers JSON, BOS/EOS, vocabulary size and the chat
    template (a string; ``hf()`` rebuilds an HF tokenizer from these for ``apply_chat_template``)."""

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
        self.bos_token = tok.bos_token if self.bos_id is not None else None
        self.eos_token = tok.eos_token if self.eos_id is not None else None
        self.vocab_size = len(tok)
        self.name = getattr(tok, "name_or_path", "") or self.path
        self.chat_template: str | None = getattr(tok, "chat_template", None) or None
        self._hf = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _hf=None)

    def backend(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.json)

    def hf(self):
        """An HF tokenizer with the teacher's vocabulary, special tokens and chat template."""
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            self._hf = PreTrainedTokenizerFast(tokenizer_object=self.backend(), bos_token=self.bos_token,
                                               eos_token=self.eos_token)
            self._hf.chat_template = self.chat_template
        return self._hf

    def frame(self, framing: str) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around every document; a missing special token is left out."""
        bos = [] if self.bos_id is None else [int(self.bos_id)]
        eos = [] if self.eos_id is None else [int(self.eos_id)]
        return (bos, eos) if framing == "bos_eos" else (eos, bos)

    def frame_strings(self, framing: str) -> tuple[str | None, str | None]:
        return (self.bos_token, self.eos_token) if framing == "bos_eos" else (self.eos_token, self.bos_token)


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


def to_messages(conv: Any, where: str, field: str) -> list[dict]:
    """OpenHermes ``[{from, value}]`` or ``[{role, content}]`` -> ``[{role, content}]`` (roles mapped)."""
    if not isinstance(conv, (list, tuple)) or not conv:
        raise DataError(f"{where}: '{field}' is not a non-empty list of turns (got {type(conv).__name__})")
    msgs = []
    for k, turn in enumerate(conv, 1):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: '{field}' turn {k} is not an object")
        if turn.get("role") is not None or "content" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif turn.get("from") is not None or "value" in turn:
            role, content = turn.get("from"), turn.get("value")
        else:
            raise DataError(f"{where}: '{field}' turn {k}: expected {{from, value}} or {{role, content}}, got keys "
                            f"{sorted(turn)}")
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: '{field}' turn {k}: unknown role {role!r} (accepted: "
                            f"{', '.join(CHAT_ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: '{field}' turn {k}: the content is not a string")
        msgs.append({"role": CHAT_ROLES[role], "content": content})
    return msgs


# ----------------------------------------------------------------------------------------------------------------
# Pipeline steps (datatrove)
# ----------------------------------------------------------------------------------------------------------------

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.readers.base import BaseReader  # noqa: E402


def task_files(files: list, rank: int, world_size: int) -> list:
    """The contiguous slice of ``files`` for task ``rank`` (concatenating the slices in rank order = ``files``)."""
    n = len(files)
    return files[rank * n // world_size:(rank + 1) * n // world_size]


def _merge_meta(row: dict) -> dict:
    meta = row.pop("metadata", None)
    meta = meta if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
    return meta | row


class SourceReader(BaseReader):
    """Reads this task's contiguous share of the input files and yields the documents that pass their filter.

    ``files``: ``[(source index, path, format), ...]``; ``sources``: per source ``{text_field, filter, chat}``.
    Every document gets ``metadata["lrc_source"]``. Malformed JSON, a missing text field, a malformed conversation
    or bad UTF-8 raise :class:`DataError` naming file and line (parquet / save_to_disk: row). Per-source counts of
    documents read and kept go to ``<work_dir>/tasks/task{rank:05d}.read.json`` when the task's input is
    exhausted. ``stop_sources`` (shared with :class:`TokenFileWriter`) holds the sources whose budget this task
    has filled.
    """

    name = "LRC source reader"
    type = "📖 - READER"

    def __init__(self, files: list[tuple[int, str, str]], sources: list[dict], work_dir: str, stop_sources: set,
                 tok: TokenizerSpec | None = None, framing: str = "bos_eos", progress: bool = True) -> None:
        super().__init__()
        self.files = files
        self.sources = [{"text_field": s["text_field"], "filter": parse_filter(s["filter"]), "chat": s["chat"]}
                        for s in sources]
        self.work_dir = work_dir
        self.num_sources = len(sources)
        self.stop_sources = stop_sources
        self.tok = tok if any(s["chat"] for s in sources) else None
        self.frame_str = tok.frame_strings(framing) if tok is not None else (None, None)
        self.progress = progress

    # -- one row -> (text, metadata) --------------------------------------------------------------------------
    def _row(self, src: int, row: dict, where: str) -> tuple[str, dict]:
        s = self.sources[src]
        if s["chat"]:
            field = s["chat"] if s["chat"] != "auto" else next((f for f in CHAT_FIELDS if f in row), None)
            if field is None or field not in row:
                want = f"'{s['chat']}'" if s["chat"] != "auto" else "'messages' or 'conversations'"
                raise DataError(f"{where}: no conversation ({want} field; keys: {sorted(row)})")
            return self._render(row.pop(field), where, field), _merge_meta(row)
        text = row.pop(s["text_field"], None)
        if not isinstance(text, str):
            raise DataError(f"{where}: no '{s['text_field']}' string (keys: {sorted(row)})")
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
        want = set(CHAT_FIELDS if s["chat"] == "auto" else [s["chat"]] if s["chat"] else [s["text_field"]])
        if s["filter"] is not None:
            fields = s["filter"].fields()
            want |= fields
            if fields - set(names):
                want.add("metadata")
        cols = [c for c in names if c in want]
        if not s["chat"] and s["text_field"] not in names:
            raise DataError(f"{path}: no '{s['text_field']}' column (columns: {names})")
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
        if not s["chat"] and s["text_field"] not in ds.column_names:
            raise DataError(f"{path}: no '{s['text_field']}' column (columns: {ds.column_names})")
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
                filt = self.sources[src]["filter"]
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
        write_json_atomic(os.path.join(self.work_dir, "tasks", f"task{rank:05d}.read.json"),
                    {"documents_read": read, "documents_kept": kept, "files": len(mine)})


TASK_ERROR_SUFFIX = ".error.json"


def task_errors(work: str) -> list[str]:
    """The messages of the tasks that stopped on bad input (``DataError``), in task order."""
    files = sorted(glob.glob(os.path.join(work, "tasks", f"task*{TASK_ERROR_SUFFIX}")))
    return [json.loads(Path(f).read_text())["error"] for f in files]


class TokenFileWriter(PipelineStep):
    """Tokenizes documents (fast batch encode), frames them and appends the ids to one file per source.

    Files: ``<work_dir>/tasks/task{rank:05d}.src{j:03d}.bin`` (dtype ``dtype``), ``.len`` (int64 framed length of
    every document) and ``task{rank:05d}.json`` (tokens and documents tokenized per source). Source ``j`` stops once
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
        tdir = os.path.join(self.work_dir, "tasks")
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
                    base = os.path.join(tdir, f"task{rank:05d}.src{src:03d}")
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
                if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                    flush()
                    chars = 0
            if batch:
                flush()
        except DataError as e:  # bad input: reported by the parent as one line (``task_errors``), not a traceback
            write_json_atomic(os.path.join(tdir, f"task{rank:05d}{TASK_ERROR_SUFFIX}"), {"error": str(e)})
            return
        finally:
            for hs in handles.values():
                for h in hs:
                    h.close()
        write_json_atomic(os.path.join(tdir, f"task{rank:05d}.json"), {"tokens": tokens, "documents_tokenized": docs})
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


# ----------------------------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------------------------

_CHUNK = 1 << 24  # tokens per copy


def _source_segments(tdir: str, src: int, num_tasks: int, dt: np.dtype, budget: int | None) -> list[tuple]:
    """[(bin path, tokens taken, document lengths of those tokens), ...] of source ``src`` in task order, the first
    ``budget`` tokens (the document that crosses the budget cut)."""
    segs = []
    left = budget
    for r in range(num_tasks):
        base = os.path.join(tdir, f"task{r:05d}.src{src:03d}")
        if not os.path.exists(base + ".bin") or (left is not None and left <= 0):
            continue
        n = os.path.getsize(base + ".bin") // dt.itemsize
        lens = np.fromfile(base + ".len", dtype=np.int64)
        take = n if left is None else min(n, left)
        if take < n:
            cum = np.cumsum(lens)
            k = int(np.searchsorted(cum, take))  # first document reaching `take`
            lens = lens[:k + 1].copy()
            lens[k] -= int(cum[k]) - take
        if take:
            segs.append((base + ".bin", take, lens))
        if left is not None:
            left -= take
    return segs


def _copy(out, path: str, take: int, dt: np.dtype) -> None:
    mm = np.memmap(path, dtype=dt, mode="r")
    for a in range(0, take, _CHUNK):
        out.write(np.asarray(mm[a:min(take, a + _CHUNK)]).tobytes())
    del mm


def _copy_docs(out, path: str, lens: np.ndarray, takes: np.ndarray, dt: np.dtype) -> None:
    """Write the first ``takes[i]`` tokens of every document ``i`` of the file (documents of ``lens`` tokens)."""
    starts = np.concatenate([[0], np.cumsum(lens)])
    mm = np.memmap(path, dtype=dt, mode="r")
    d0 = 0
    while d0 < lens.size:
        d1 = max(d0 + 1, int(np.searchsorted(starts, starts[d0] + _CHUNK, side="right")) - 1)
        d1 = min(d1, lens.size)
        if takes[d0:d1].any():
            s0, s1 = int(starts[d0]), int(starts[d1])
            seg = np.asarray(mm[s0:s1])
            pos = np.arange(s1 - s0) - np.repeat(starts[d0:d1] - s0, lens[d0:d1])
            out.write(seg[pos < np.repeat(takes[d0:d1], lens[d0:d1])].tobytes())
        d0 = d1
    del mm


def _subset_takes(lens: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """Tokens to take of every document for a random subset of ``r`` tokens: documents in the order of a random
    permutation, whole, until ``r``; the last one cut."""
    order = rng.permutation(lens.size)
    cum = np.cumsum(lens[order])
    k = int(np.searchsorted(cum, r))  # documents order[:k] whole, order[k] cut
    takes = np.zeros(lens.size, dtype=np.int64)
    takes[order[:k]] = lens[order[:k]]
    if k < lens.size:
        takes[order[k]] = r - (int(cum[k - 1]) if k else 0)
    return takes


def _write_subset(out, segs: list[tuple], takes: np.ndarray, dt: np.dtype) -> None:
    a = 0
    for path, _, ln in segs:
        _copy_docs(out, path, ln, takes[a:a + ln.size], dt)
        a += ln.size


def mix_targets(distinct: list[int], weights: list[float | None]) -> list[int]:
    """Output tokens per source: ``distinct`` without weights; else ``T * w_j / sum(w)`` of ``T = sum(distinct)``
    over the non-empty sources (largest-remainder rounding, so the targets sum to ``T``)."""
    total = sum(distinct)
    if all(w is None for w in weights) or total == 0:
        return list(distinct)
    wsum = sum(w for w, d in zip(weights, distinct) if d > 0)
    exact = [total * w / wsum if d > 0 else 0.0 for w, d in zip(weights, distinct)]
    out = [int(math.floor(x)) for x in exact]
    for j in sorted(range(len(out)), key=lambda j: (-(exact[j] - out[j]), j))[: total - sum(out)]:
        out[j] += 1
    return out


def merge_tasks(work_dir: str, num_tasks: int, sources: list[dict], dtype: str, seq_len: int, seed: int,
                sequences_per_shard: int, jsonl_export: bool) -> dict:
    """Task files -> stream.tmp (source order, budgets and weights applied) -> shuffled shard_*.bin (+ jsonl)."""
    dt = np.dtype(dtype)
    tdir = os.path.join(work_dir, "tasks")
    stream_path = os.path.join(work_dir, "stream.tmp")
    segs = []
    for j, s in enumerate(sources):
        budget = s["budget_tokens"]
        random_pick = s.get("budget_sample") == "random"
        sg = _source_segments(tdir, j, num_tasks, dt, None if random_pick else budget)
        if random_pick and budget is not None and sum(t for _, t, _ in sg) > budget:
            lens = np.concatenate([ln for _, _, ln in sg])
            takes = _subset_takes(lens, budget, np.random.default_rng([seed, j, 1]))
            sub = os.path.join(work_dir, f"src{j:03d}.sub.tmp")
            with open(sub, "wb") as f:
                _write_subset(f, sg, takes, dt)
            sg = [(sub, budget, takes[takes > 0])]
        segs.append(sg)
    distinct = [sum(t for _, t, _ in sg) for sg in segs]
    targets = mix_targets(distinct, [s["weight"] for s in sources])
    with open(stream_path, "wb") as out:
        for j, (sg, d, t) in enumerate(zip(segs, distinct, targets)):
            if d == 0:
                continue
            q, r = divmod(t, d)
            for _ in range(q):
                for path, take, _ in sg:
                    _copy(out, path, take, dt)
            if r:
                lens = np.concatenate([ln for _, _, ln in sg])
                _write_subset(out, sg, _subset_takes(lens, r, np.random.default_rng([seed, j])), dt)
    total = sum(targets)
    assert os.path.getsize(stream_path) == total * dt.itemsize
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
                step = max(1, _CHUNK // seq_len)
                for b in range(0, idx.size, step):
                    block = np.asarray(stream[np.sort(idx[b:b + step])])  # sorted: sequential-ish reads
                    block = block[np.argsort(np.argsort(idx[b:b + step]))]
                    f.write(block.tobytes())
                    if jf is not None:
                        for row in block:
                            jf.write('{"input_ids": [' + ", ".join(map(str, row.tolist())) + "]}\n")
            shards.append({"file": name, "num_sequences": int(idx.size)})
        if jf is not None:
            jf.close()
        del stream
    os.remove(stream_path)
    for sg in segs:
        for path, _, _ in sg:
            if path.endswith(".sub.tmp"):
                os.remove(path)
    return {"distinct_tokens": distinct, "per_source_tokens": targets,
            "distinct_documents": [int(sum(ln.size for _, _, ln in sg)) for sg in segs],
            "stream_tokens": total, "num_sequences": num_seqs, "shards": shards,
            "dropped_tokens": total - num_seqs * seq_len}


# ----------------------------------------------------------------------------------------------------------------
# Entry points: plan, run, finalize
# ----------------------------------------------------------------------------------------------------------------

def _check_int(v: Any, flag: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"{flag} must be a positive integer, got {v!r}")
    return v


def make_plan(inputs=None, tokenizer: str | None = None, output: str | None = None, data_max_len: int = 2048,
              workers: int = 1, seed: int = 0, text_field: str = "text", framing: str = "bos_eos",
              filter: Any = None, budget: Any = None, jsonl_export: bool = False,  # noqa: A002
              sequences_per_shard: int | None = None, overwrite: bool = False, quiet: bool = False,
              sources: Any = None, tasks: int | None = None, executor: str = "local",
              ) -> tuple[dict, TokenizerSpec]:
    """Check everything, load the tokenizer -> (plan, tokenizer spec); the resolved sources are ``plan["sources"]``.
    Creates nothing."""
    _check_int(data_max_len, "--data-max-len")
    _check_int(workers, "--workers")
    if tasks is not None:
        _check_int(tasks, "--tasks")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"--seed must be a non-negative integer, got {seed!r}")
    if framing not in FRAMINGS:
        raise DataError(f"--framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    if executor not in EXECUTORS:
        raise DataError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not output:
        raise DataError("--output is required")
    if not tokenizer:
        raise DataError("--tokenizer is required")
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not overwrite:
        raise DataError(f"{output}: already exists (pass --overwrite to replace it)")
    budget = parse_count(budget, "--budget")
    try:
        default_filter = parse_filter(filter)
    except DataError as e:
        raise DataError(f"--filter: {e}") from None
    srcs = resolve_sources(inputs, sources, text_field, filter, budget)
    chat = [s["name"] for s in srcs if s["chat"]]
    tok = TokenizerSpec(tokenizer)
    if chat and not tok.chat_template:
        raise DataError(f"{tokenizer}: the tokenizer has no chat template, needed to render the conversations of "
                        f"{', '.join(chat)} (give the teacher's tokenizer, or a text field instead of chat)")
    dtype = "uint16" if tok.vocab_size <= 65536 else "uint32"
    files = plan_files(srcs)
    if tasks is None:
        tasks = workers if executor == "local" else len(files)
    num_tasks = min(tasks, len(files))  # never a task without a file
    if sequences_per_shard is None:
        sequences_per_shard = max(1, (1 << 30) // (np.dtype(dtype).itemsize * data_max_len))  # ~1 GiB shards
    _check_int(sequences_per_shard, "--sequences-per-shard")
    plan = {
        "output": output, "overwrite": bool(overwrite), "executor": executor, "tasks": num_tasks,
        "workers": workers, "seq_len": data_max_len, "dtype": dtype, "seed": seed, "framing": framing,
        "sequences_per_shard": sequences_per_shard, "jsonl_export": bool(jsonl_export), "quiet": bool(quiet),
        "defaults": {"text_field": text_field, "filter": default_filter.spec if default_filter else None,
                     "budget_tokens": budget},
        "tokenizer": {"path": os.path.abspath(tok.path), "name": tok.name, "vocab_size": tok.vocab_size,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        "sources": [dict(s, files=[list(f) for f in s["files"]]) for s in srcs],
    }
    return plan, tok


def plan_files(sources: list[dict]) -> list[tuple[int, str, str]]:
    """Every input file of the plan in source order: ``[(source index, path, format), ...]``."""
    return [(j, f, fmt) for j, s in enumerate(sources) for f, fmt in s["files"]]


def build_pipeline(plan: dict, tok: TokenizerSpec, work: str, progress: bool = True) -> list:
    stop: set = set()
    return [
        SourceReader(plan_files(plan["sources"]), plan["sources"], work, stop, tok=tok, framing=plan["framing"],
                     progress=progress),
        TokenFileWriter(tok, plan["framing"], plan["dtype"], work,
                        [s["budget_tokens"] if s["budget_sample"] == "first" else None for s in plan["sources"]], stop),
    ]


def _quiet_datatrove_logs() -> None:
    from datatrove.utils.logging import logger

    logger.remove()  # datatrove logs per task into the logging dir; keep the console for progress and errors
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")


def prepare(inputs=None, tokenizer: str | None = None, output: str | None = None, data_max_len: int = 2048,
            workers: int = 1, seed: int = 0, text_field: str = "text", framing: str = "bos_eos",
            filter: Any = None, budget: Any = None, jsonl_export: bool = False,  # noqa: A002
            sequences_per_shard: int | None = None, overwrite: bool = False, progress: bool = True,
            quiet: bool = False, sources: Any = None, tasks: int | None = None, executor: str = "local",
            slurm: dict | None = None) -> dict:
    """Build token shards in ``output``; returns the manifest (see the module docstring).

    ``executor="slurm"`` submits the tokenize job array and the merge job (``slurm``: ``partition`` (required),
    ``time``, ``cpus_per_task``, ``mem_per_cpu_gb``, ``qos``, ``venv_path``, ``env_command``, ``condaenv``,
    ``sbatch_args``, ``max_concurrent``, ``job_name``) and returns the plan with the job ids.
    """
    if slurm and executor != "slurm":  # before the plan: it loads the tokenizer and expands every glob
        raise DataError("--slurm-* options need --executor slurm")
    t0 = time.time()
    plan, tok = make_plan(inputs, tokenizer, output, data_max_len, workers, seed, text_field, framing, filter,
                          budget, jsonl_export, sequences_per_shard, overwrite, quiet, sources, tasks, executor)
    output = plan["output"]
    if executor == "slurm":
        return _submit_slurm(plan, tok, slurm or {})
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    work = f"{output}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "tasks"))
    try:
        plan["started"] = t0
        write_json_atomic(os.path.join(work, PLAN), plan)
        from datatrove.executor import LocalPipelineExecutor

        _quiet_datatrove_logs()
        pipeline = build_pipeline(plan, tok, work, progress=progress and not quiet)
        ex = LocalPipelineExecutor(pipeline, tasks=plan["tasks"], workers=min(workers, plan["tasks"]),
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
        manifest = finalize(work, tokenize_seconds=time.time() - t_tok)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def finalize(work: str, tokenize_seconds: float | None = None) -> dict:
    """Merge the finished tasks of ``work`` (``plan.json``), write shards + manifest, rename to the output."""
    errors = task_errors(work)
    if errors:
        raise DataError(errors[0])
    plan = json.loads(Path(work, PLAN).read_text())
    srcs = plan["sources"]
    ns, num_tasks = len(srcs), plan["tasks"]
    read = np.zeros(ns, dtype=np.int64)
    kept = np.zeros(ns, dtype=np.int64)
    for r in range(num_tasks):
        for name in (f"task{r:05d}.read.json", f"task{r:05d}.json"):
            if not os.path.exists(os.path.join(work, "tasks", name)):
                raise DataError(f"task {r} did not finish (no {name}); see the logs")
        rj = json.loads(Path(work, "tasks", f"task{r:05d}.read.json").read_text())
        read += rj["documents_read"]
        kept += rj["documents_kept"]
    merged = merge_tasks(work, num_tasks, srcs, plan["dtype"], plan["seq_len"], plan["seed"],
                         plan["sequences_per_shard"], plan["jsonl_export"])
    total = max(1, merged["stream_tokens"])
    wsum = sum(s["weight"] for s in srcs if s["weight"] is not None) or None
    src_info = []
    for j, s in enumerate(srcs):
        d, t = merged["distinct_tokens"][j], merged["per_source_tokens"][j]
        info = {"input": s["name"], "paths": s["paths"], "files": len(s["files"]), "format": s["format"],
                "text_field": s["text_field"], "filter": s["filter"], "chat": s["chat"],
                "budget_tokens": s["budget_tokens"], "budget_sample": s["budget_sample"], "weight": s["weight"],
                "documents_read": int(read[j]), "documents_kept": int(kept[j]),
                "distinct_documents": merged["distinct_documents"][j], "distinct_tokens": d, "tokens": t,
                "share": round(t / total, 6), "repeat": round(t / d, 6) if d else None}
        if wsum:
            info["target_share"] = round(s["weight"] / wsum, 6)
        if s["budget_tokens"] is not None and d < s["budget_tokens"]:
            print(f"warning: {s['name']}: budget {s['budget_tokens']} tokens is larger than the source ({d} "
                  "tokens); all of it is used", file=sys.stderr)
        if s["weight"] is not None and d == 0:
            print(f"warning: {s['name']}: no tokens, so its weight {s['weight']} cannot be met; the other sources "
                  "share the output", file=sys.stderr)
        src_info.append(info)
    if merged["num_sequences"] == 0:
        raise DataError(f"{', '.join(s['name'] for s in srcs)}: only {merged['stream_tokens']} tokens, fewer than "
                        f"one sequence of {plan['seq_len']}")
    elapsed = time.time() - plan.get("started", time.time())
    tk = plan["tokenizer"]
    manifest = {
        "format": "lrc-token-shards", "version": MANIFEST_VERSION,
        "total_tokens": merged["num_sequences"] * plan["seq_len"],
        "stream_tokens": merged["stream_tokens"], "dropped_tokens": merged["dropped_tokens"],
        "num_sequences": merged["num_sequences"], "seq_len": plan["seq_len"], "dtype": plan["dtype"],
        "vocab_size": tk["vocab_size"], "tokenizer": tk["path"], "tokenizer_name": tk["name"],
        "bos_id": tk["bos_id"], "eos_id": tk["eos_id"], "framing": plan["framing"], "seed": plan["seed"],
        "filter": plan["defaults"]["filter"], "text_field": plan["defaults"]["text_field"],
        "budget": plan["defaults"]["budget_tokens"], "executor": plan["executor"], "workers": plan["workers"],
        "tasks": num_tasks, "sources": src_info, "shards": merged["shards"],
        "jsonl_export": "train.jsonl" if plan["jsonl_export"] else None,
        "tokenize_seconds": None if tokenize_seconds is None else round(tokenize_seconds, 3),
        "seconds": round(elapsed, 3),
    }
    write_json_atomic(os.path.join(work, MANIFEST), manifest)
    shutil.rmtree(os.path.join(work, "tasks"))
    os.remove(os.path.join(work, PLAN))
    output = plan["output"]
    if os.path.exists(output):
        if not plan["overwrite"]:
            raise DataError(f"{output}: appeared while preparing (pass --overwrite to replace it)")
    publish_dir(work, output)
    if not plan["quiet"]:
        print(summary(manifest, output))
    return manifest


def _submit_slurm(plan: dict, tok: TokenizerSpec, opts: dict) -> dict:
    """Submit the tokenize job array and the merge job (afterok) with datatrove's SlurmPipelineExecutor."""
    from datatrove.executor import SlurmPipelineExecutor

    known = {"partition", "time", "cpus_per_task", "mem_per_cpu_gb", "qos", "venv_path", "env_command", "condaenv",
             "sbatch_args", "max_concurrent", "job_name", "merge_mem_per_cpu_gb", "merge_time"}
    opts = {k: v for k, v in opts.items() if v is not None}
    bad = sorted(set(opts) - known)
    if bad:
        raise DataError(f"unknown Slurm option(s) {', '.join(bad)}; accepted: {', '.join(sorted(known))}")
    if not opts.get("partition"):
        raise DataError("--executor slurm needs --slurm-partition")
    if shutil.which("sbatch") is None:
        raise DataError("--executor slurm: no sbatch command here; run it on a Slurm login node")
    output = plan["output"]
    work = f"{output}.tmp-slurm"
    logs = f"{output}.logs"
    plan_path = os.path.join(work, PLAN)
    if os.path.exists(work):
        old = json.loads(Path(plan_path).read_text()) if os.path.isfile(plan_path) else None
        if old is None or {k: v for k, v in old.items() if k != "started"} != plan:
            raise DataError(f"{work}: exists from another run (or a finished merge); remove it and {logs} to start "
                            "over")
        plan["started"] = old["started"]
    else:
        os.makedirs(os.path.join(work, "tasks"))
        plan["started"] = time.time()
        write_json_atomic(plan_path, plan)
    _quiet_datatrove_logs()
    name = opts.get("job_name") or f"lrc-prepare-{os.path.basename(output)}"
    common = {k: opts[k] for k in ("qos", "venv_path", "env_command", "condaenv") if k in opts}
    tok_ex = SlurmPipelineExecutor(
        build_pipeline(plan, tok, work, progress=False), tasks=plan["tasks"], time=opts.get("time", "24:00:00"),
        partition=opts["partition"], cpus_per_task=int(opts.get("cpus_per_task", 1)),
        mem_per_cpu_gb=int(opts.get("mem_per_cpu_gb", 2)), workers=int(opts.get("max_concurrent", -1)),
        job_name=f"{name}-tokenize", logging_dir=os.path.join(logs, "tokenize"),
        sbatch_args=opts.get("sbatch_args") or None, **common)
    merge_ex = SlurmPipelineExecutor(
        [FinalizeStep(work)], tasks=1, time=opts.get("merge_time", opts.get("time", "24:00:00")),
        partition=opts["partition"], cpus_per_task=1, mem_per_cpu_gb=int(opts.get("merge_mem_per_cpu_gb", 8)),
        job_name=f"{name}-merge", logging_dir=os.path.join(logs, "merge"), depends=tok_ex,
        sbatch_args=opts.get("sbatch_args") or None, **common)
    merge_ex.run()
    plan["job_ids"] = {"tokenize": tok_ex.job_id, "merge": merge_ex.job_id}
    if not plan["quiet"]:
        print(f"submitted Slurm jobs: tokenize {tok_ex.job_id} ({plan['tasks']} tasks), merge {merge_ex.job_id} "
              f"(after the tokenize job succeeds); work directory {work}, logs {logs}; {output} appears when the "
              "merge job finishes (its summary is in the merge job's log)")
    return plan


def summary(m: dict, output: str) -> str:
    lines = [f"wrote {output}: {m['num_sequences']} sequences x {m['seq_len']} tokens = {m['total_tokens']} tokens "
             f"({m['dtype']}, {len(m['shards'])} shard(s); {m['dropped_tokens']} tail tokens dropped)"]
    for s in m["sources"]:
        extra = ""
        if s.get("repeat") not in (None, 1.0):
            extra = f" ({s['distinct_tokens']} distinct, x{s['repeat']:.3f})"
        lines.append(f"  {s['input']}: {s['files']} file(s), documents read {s['documents_read']}, kept "
                     f"{s['documents_kept']}, tokens {s['tokens']}{extra}, share {s['share']:.1%}")
    tps = m["stream_tokens"] / max(m["seconds"], 1e-9)
    tok_s = "" if m["tokenize_seconds"] is None else f" ({m['tokenize_seconds']:.2f} s tokenizing"
    lines.append(f"  {m['seconds']:.2f} s total{tok_s}{', ' if tok_s else ' ('}{m['tasks']} task(s), "
                 f"{m['workers']} worker(s)), {tps:,.0f} tokens/s")
    return "\n".join(lines)
