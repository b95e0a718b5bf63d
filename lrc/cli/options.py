"""The one command-line mechanism of every ``lrc`` subcommand and script: typed dataclasses whose field
docstrings are the help text, parsed by ``transformers.HfArgumentParser``.

    @options
    class ConvertOptions:
        ckpt_path: str | None = None
        \"\"\"weights file, checkpoint-N directory or training output directory\"\"\"

    def cli(argv=None) -> int:  # --help, parsing, one-line errors, the exit code
        return run_command(ConvertOptions, argv, convert, prog="lrc convert", description=__doc__)

Why HfArgumentParser (not fire, the project's earlier CLI library): it builds an argparse parser from dataclass
types, so the dataclass is the single source of names, types and defaults, and ``--help`` prints the field docs.
It accepts ``--flag_name`` and ``--flag-name``, ``--flag value`` and ``--flag=value``, ``--bool`` / ``--bool
false`` / ``--no_bool``, and keeps "a,b" a string (fire turned it into a tuple). It is already a dependency and is
TRL's choice. fire has no place for field docs and guesses types from the value's text.

What this module adds to it:

- ``options``: a dataclass decorator that copies each field's docstring (the string literal under it, litgpt
  style) into ``metadata["help"]``; ``field_docs`` reads them.
- ``OptionParser``: errors raise ``OptionError`` (one line, no usage dump; ``lrc.errors.run_cli`` prints it and
  exits 2); abbreviations are off; ``parse_given`` returns only the flags on the command line (typed), so callers
  can layer defaults < recipe < command line; unknown flags are listed together.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from transformers import HfArgumentParser

from lrc.config import LRCConfigError


class OptionError(LRCConfigError):
    """A command-line flag is unknown, malformed or contradicts another (one-line message)."""


def closest_flag(name: str, known: Iterable[str]) -> str | None:
    """The known flag name closest to a misspelled ``name`` (``difflib``), or None when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_flags_text(names: Iterable[str], known: Iterable[str]) -> str:
    """``--a, --b (did you mean --x?)``: the unknown flag names, each with the closest known one where there is a
    close one."""
    known = list(known)
    out = []
    for n in dict.fromkeys(names):
        close = closest_flag(n, known)
        out.append(f"--{n}" + (f" (did you mean --{close}?)" if close else ""))
    return ", ".join(out)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right below the field in ``cls``'s source), one paragraph."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (e.g. a class made at run time)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def options(cls: type | None = None, *, group: str | None = None):
    """``@dataclass``, plus every field's docstring as its ``--help`` text (``metadata["help"]``).

    ``group``: the heading of these flags in ``--help`` (HfArgumentParser's ``_argument_group_name``)."""

    def wrap(c: type) -> type:
        c = dataclasses.dataclass(c)
        docs = field_docs(c)
        for f in dataclasses.fields(c):
            if f.name in docs and "help" not in f.metadata:
                f.metadata = {**f.metadata, "help": help_escape(docs[f.name])}
        if group:
            c._argument_group_name = group
        return c

    return wrap if cls is None else wrap(cls)


def help_escape(text: str) -> str:
    """``text`` safe for argparse's %-formatting of help strings."""
    return text.replace("%", "%%")


class OptionParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line ``OptionError``s and which can tell what was given."""

    def __init__(self, dataclass_types: type | Iterable[type], *, prog: str, description: str | None = None,
                 epilog: str | None = None):
        super().__init__(dataclass_types, prog=prog, usage=f"{prog} [--flag value ...]", description=description,
                         epilog=epilog, allow_abbrev=False, formatter_class=_HelpFormatter)
        for action in self._actions:
            action.required = False  # requiredness is the caller's check (a recipe or --demo may supply it)
            if action.option_strings and action.option_strings[0].startswith("--no_"):
                action.help = argparse.SUPPRESS  # --no_x still works; --help shows --x [BOOL] once

    def error(self, message: str):  # argparse would print the usage and exit 2
        raise OptionError(message)

    def parse_given(self, argv: Sequence[str]) -> dict[str, Any]:
        """The flags present in ``argv``, typed: {field name: value}. Unknown flags raise one OptionError naming
        all of them."""
        saved = [(a, a.default) for a in self._actions]
        try:
            for a, _ in saved:
                a.default = argparse.SUPPRESS
            ns, rest = self.parse_known_args(list(argv))
        finally:
            for a, d in saved:
                a.default = d
        if rest:
            flags = [t.split("=", 1)[0] for t in rest if t.startswith("-")]
            if flags:
                names = unknown_flags_text((t.lstrip("-").replace("-", "_") for t in flags), self.flag_names())
                raise OptionError(f"unknown flag(s): {names} ({self.prog} --help lists them)")
            raise OptionError(f"unexpected argument(s) {' '.join(rest)!r}: every value follows its --flag "
                              f"({self.prog} --help)")
        return vars(ns)

    def flag_names(self) -> list[str]:
        """Every flag's field name."""
        return [a.dest for a in self._actions if a.option_strings and a.dest != "help"]

    def parse(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """One instance per dataclass type: its defaults, overridden by the flags in ``argv``."""
        return from_keywords(self.dataclass_types, self.parse_given(argv), prog=self.prog)


def from_keywords(dtypes: Sequence[type], values: dict[str, Any], *, prog: str) -> tuple[Any, ...]:
    """One instance of each of ``dtypes`` from keyword arguments (a command's Python API, e.g. ``main(**flags)``):
    each field from its own dataclass, the rest defaults. Names no dataclass has raise one OptionError."""
    names = {f for t in dtypes for f in t.__dataclass_fields__}
    unknown = sorted(k for k in values if k not in names)
    if unknown:
        raise OptionError(f"unknown flag(s): {unknown_flags_text(unknown, names)} ({prog} --help lists them)")
    return tuple(t(**{k: v for k, v in values.items() if k in t.__dataclass_fields__}) for t in dtypes)


def dict_to_argv(values: dict[str, Any]) -> list[str]:
    """Python values as command-line tokens (``--name=value``), so that dicts (YAML recipes, library callers)
    are typed by the same parser as the command line: bools as true/false, lists and tuples comma-joined;
    None is left out (the default)."""
    argv = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        argv.append(f"--{k}={v}")
    return argv


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Field docs with their defaults; the description as written (it holds examples)."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=110)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """``--name METAVAR`` (one spelling: --name-with-dashes works too)."""
        if not action.option_strings:
            return super()._format_action_invocation(action)
        name = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if action.nargs == 0:
            return name
        if action.choices:
            metavar = "{" + ",".join(map(str, action.choices)) + "}"
        else:
            kind = getattr(action.type, "__name__", "str")
            metavar = {"int": "INT", "float": "FLOAT", "string_to_bool": "BOOL"}.get(kind, "VALUE")
        return f"{name} [{metavar}]" if action.nargs == "?" else f"{name} {metavar}"

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default == "" or isinstance(action.default, bool) and (
                action.option_strings and action.option_strings[0].startswith("--no_")):
            return action.help or ""
        return super()._get_help_string(action)


def run_command(dtypes: type | Sequence[type], argv: Sequence[str] | None, run: Callable[..., object], *,
                prog: str, description: str | None = None, required: Sequence[str] = (),
                keywords: bool = False) -> int:
    """A command's whole command line: ``--help`` (the field docs; exit code 0), else parse ``argv`` (default:
    sys.argv[1:]), check the ``required`` flags and call ``run`` under ``lrc.errors.run_cli`` (one-line errors).
    Returns the exit code.

    ``run(*instances)``: one instance of each of ``dtypes``, defaults filled in. With ``keywords``, ``run(**given)``
    instead, only the flags on the command line: for a script whose Python API is ``main(**flags)``, so that the
    function decides what an absent flag means (e.g. "as stored in the checkpoint")."""
    from lrc.errors import run_cli

    types = tuple(dtypes) if isinstance(dtypes, (list, tuple)) else (dtypes,)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OptionParser(types, prog=prog, description=description)
    if "-h" in argv or "--help" in argv:
        print(parser.format_help())
        return 0

    def go() -> None:
        given = parser.parse_given(argv)
        missing = [n for n in required if given.get(n) in (None, "")]
        if missing:
            raise OptionError(f"missing required flag(s): {', '.join('--' + n for n in missing)} ({prog} --help)")
        if keywords:
            run(**given)
        else:
            run(*from_keywords(types, given, prog=prog))

    return run_cli(go)


def markdown_flags(parser: OptionParser) -> str:
    """Every flag of ``parser`` as Markdown, one table per group: flag, default, its doc (the field docstring).
    docs/TRAINING.md's flag reference is this text (``scripts/flag_docs.py`` writes it; a test compares)."""
    out = []
    for group in parser._action_groups:
        rows = [a for a in group._group_actions if a.help is not argparse.SUPPRESS and a.dest != "help"]
        if not rows:
            continue
        out += [f"**{group.title}**", "", "| flag | default | meaning |", "|---|---|---|"]
        for a in rows:
            default = "—" if a.default in (None, "") else f"`{a.default}`"
            if a.choices:
                default += " (" + " \\| ".join(map(str, a.choices)) + ")"
            doc = (a.help or "").replace("%%", "%").replace("|", "\\|")
            out.append(f"| `{a.option_strings[0]}` | {default} | {doc} |")
        out.append("")
    return "\n".join(out)
