"""Sources: ``--inputs`` entries and ``--sources FILE`` entries -> :class:`Source` (files expanded, options checked).

A source is the unit of filter, budget, weight and chat rendering and is counted on its own in the manifest.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from lrc.data.prepare.filters import parse_filter
from lrc.errors import DataError

FORMATS = ("parquet", "jsonl", "txt", "hf_disk")
SOURCE_KEYS = ("path", "name", "format", "text_field", "filter", "budget_tokens", "budget_sample", "weight", "chat")
"""The keys of a ``--sources`` entry."""
BUDGET_SAMPLES = ("first", "random")
_SUFFIX = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9, "g": 10 ** 9, "t": 10 ** 12}


@dataclass
class Source:
    """One resolved source: its files and options (the ``--text-field`` / ``--filter`` / ``--budget`` defaults
    applied). In ``plan.json`` as a JSON object with these keys (``files`` as ``[[file, format], ...]``)."""

    name: str
    """label in the manifest and in messages (default: the paths, comma-joined)"""
    paths: list[str]
    """the paths / globs / save_to_disk directories as given"""
    files: list[tuple[str, str]]
    """``(file, format)`` of every input file, in order (glob matches sorted)"""
    format: str
    """``auto`` (from each file's extension) or one of FORMATS"""
    text_field: str
    """the column / JSON key holding the document text"""
    filter: str | None
    """the filter expression (``lrc.data.prepare.filters``, normalised spec), None: every document"""
    budget_tokens: int | None
    """at most this many distinct tokens (framing included) of the source; None: all"""
    budget_sample: str
    """``first`` (the first budget_tokens tokens in file order) or ``random`` (a seeded random subset)"""
    weight: float | None
    """share of the output, ``weight / sum(weights)`` (every source has one, or none does)"""
    chat: str | None
    """None: plain text; ``auto``: render ``messages`` or ``conversations`` with the chat template; else the name of
    the conversation field"""

    def to_json(self) -> dict[str, Any]:
        """This source as a JSON object (``plan.json``)."""
        return dict(dataclasses.asdict(self), files=[list(f) for f in self.files])

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Source:
        return cls(**dict(obj, files=[tuple(f) for f in obj["files"]]))


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
    """The format of ``path`` from its extension (``.gz`` / ``.xz`` stripped), ``hf_disk`` for a save_to_disk
    directory, None when unknown."""
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


def load_sources(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """``--sources``: a .json / .yaml / .yml file, or an already parsed list (``[{path: ...}, ...]`` or
    ``{sources: [...]}``) -> ``[(where, entry), ...]``: each entry a mapping with keys of SOURCE_KEYS (a bare
    string entry is ``{path: it}``), ``where`` names it in messages (``FILE: source 3``)."""
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
        out.append((f"{where}: source {i}", e))
    return out


def resolve_source(where: str, e: dict[str, Any], text_field: str = "text", filter: Any = None,  # noqa: A002
                   budget: int | None = None) -> Source:
    """One entry (keys of SOURCE_KEYS; ``where`` names it in messages) -> Source; the other arguments are the
    defaults of its missing keys. Checks the options and that every file exists and has a known format."""
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
    return Source(name=str(name), paths=list(paths), files=files, format=fmt, text_field=tf,
                  filter=None if filt is None else filt.spec, budget_tokens=budget_tokens, budget_sample=bsample,
                  weight=weight, chat=chat)


def resolve_sources(inputs: Any, sources: Any, text_field: str = "text", filter: Any = None,  # noqa: A002
                    budget: int | None = None) -> list[Source]:
    """``--inputs`` entries (a comma-separated string or a list of paths / globs, one source each), then the
    ``--sources`` entries (``load_sources``) -> resolved sources; the other arguments are the defaults of every
    source. Every source has a weight, or none does."""
    entries: list[tuple[str, dict[str, Any]]] = []
    if inputs is not None and inputs != "":
        items = inputs.split(",") if isinstance(inputs, str) else [str(x) for x in inputs]
        entries += [(f"--inputs {x.strip()}", {"path": x.strip()}) for x in items if x.strip()]
    if sources is not None and sources != "":
        entries += load_sources(sources)
    if not entries:
        raise DataError("no input: give --inputs (comma-separated paths / globs) and/or --sources FILE")
    out = [resolve_source(where, e, text_field, filter, budget) for where, e in entries]
    weighted = [s.weight is not None for s in out]
    if any(weighted) and not all(weighted):
        names = [s.name for s, w in zip(out, weighted) if not w]
        raise DataError(f"give every source a weight, or none (no weight: {', '.join(names)})")
    return out
