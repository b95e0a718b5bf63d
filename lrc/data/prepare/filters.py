"""Filter expressions of the sources: ``FIELD OP LITERAL [and ...]``, parsed by a tiny tokenizer, never ``eval``-ed.

OP is one of ``>= <= == != > <``; LITERAL a number, ``true``/``false``, a quoted or bare string. FIELD is a
top-level column / JSON key or a key of the ``metadata`` dict (``a.b`` walks nested dicts). A document whose field
is missing or null passes (as the official ``min_edu_score`` code); a numeric string compares as a number.
"""

from __future__ import annotations

import operator
import re
from typing import Any

from lrc.errors import DataError

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}
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
    """``filt(meta)``; no filter passes everything."""
    return True if filt is None else filt(meta)
