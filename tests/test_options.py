"""``lrc.cli.options``: the one command-line mechanism (dataclass fields + their docstrings -> flags + --help).

The training command's method flags are made from ``LRCConfig`` itself; these tests hold that single source, and the
parser's behaviour that the official command lines rely on (both spellings, bare booleans, comma lists kept whole,
one-line errors)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lrc.cli.options import OptionError, OptionParser, dict_to_argv, field_docs, options, run_command
from lrc.config import LRCConfig
from lrc.config import flag_name as method_flag
from lrc.training.config import FLAGS, TrainConfig
from lrc.training.flags import MethodFlags
from lrc.training.parse import help_text, parse_argv, parse_flags


@options(group="example")
class Example:
    """An example command's flags."""

    name: str | None = None
    """the name; 50% of a test"""
    layers: str = ""
    """comma list, kept whole"""
    count: int = 3
    """how many"""
    on: bool = True
    """a switch that starts on"""
    off: bool = False
    """a switch that starts off"""


def test_field_docstrings_are_the_help():
    assert field_docs(Example) == {"name": "the name; 50% of a test", "layers": "comma list, kept whole",
                                   "count": "how many", "on": "a switch that starts on", "off": "a switch that starts off"}
    text = OptionParser(Example, prog="ex").format_help()
    assert "the name; 50% of a test" in text and "how many (default: 3)" in text and "example:" in text


@pytest.mark.parametrize("argv, expected", [
    ([], {}),
    (["--name", "a", "--count=5"], {"name": "a", "count": 5}),
    (["--layers", "3,7"], {"layers": "3,7"}),  # not a tuple (fire split it)
    (["--off"], {"off": True}),  # a bare boolean
    (["--on", "false", "--off", "1"], {"on": False, "off": True}),
    (["--no_on"], {"on": False}),
    (["--no-on"], {"on": False}),
])
def test_parse_given_returns_only_what_was_given(argv, expected):
    assert OptionParser(Example, prog="ex").parse_given(argv) == expected


def test_parse_fills_the_defaults():
    (ex,) = OptionParser(Example, prog="ex").parse(["--count", "9"])
    assert ex == Example(count=9)


@pytest.mark.parametrize("argv, needle", [
    (["--bogus", "1", "--other-flag"], "unknown flag(s): --bogus, --other_flag (ex --help lists them)"),
    (["--count", "many"], "argument --count: invalid int value: 'many'"),
    (["--on", "maybe"], "--on"),
    (["stray"], "unexpected argument(s) 'stray'"),
    (["--cou", "1"], "unknown flag(s): --cou"),  # no abbreviations
])
def test_bad_command_lines_raise_one_line(argv, needle):
    with pytest.raises(OptionError) as e:
        OptionParser(Example, prog="ex").parse_given(argv)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_run_command_help_required_and_errors(capsys):
    seen = []
    assert run_command(Example, ["--help"], seen.append, prog="ex") == 0
    assert "a switch that starts off" in capsys.readouterr().out and not seen
    assert run_command(Example, ["--count", "2"], seen.append, prog="ex", required=("name",)) == 2
    assert "error: missing required flag(s): --name (ex --help)" in capsys.readouterr().err and not seen
    assert run_command(Example, ["--name", "x"], seen.append, prog="ex", required=("name",)) == 0
    assert seen == [Example(name="x")]


def test_dict_values_are_typed_by_the_same_parser():
    assert dict_to_argv({"a": True, "b": (3, 7), "c": None, "d": 1e-4}) == ["--a=true", "--b=3,7", "--d=0.0001"]
    given = OptionParser(Example, prog="ex").parse_given(dict_to_argv({"count": "4", "on": 0, "layers": [1, 2]}))
    assert given == {"count": 4, "on": False, "layers": "1,2"}


def test_method_flags_are_made_from_lrc_config():
    """One source for the method: every LRCConfig field a flag sets has that flag, with the field's docstring as its
    help and the field's default (tuples as their comma-list spelling)."""
    docs = field_docs(LRCConfig)
    fields = {f.name: f for f in dataclasses.fields(LRCConfig)}
    flags = {f.name: f for f in dataclasses.fields(MethodFlags)}
    assert set(flags) == {method_flag(n) for n in fields}  # every field, init_std included
    for name in fields:
        flag = method_flag(name)
        assert docs[name].replace("%", "%%") in flags[flag].metadata["help"], flag
        if name != "target_hidden_size":
            assert LRCConfig(target_hidden_size=8, **{name: flags[flag].default}) == LRCConfig(target_hidden_size=8), flag
    text = help_text("intro")
    assert docs["aux_loss_scale_factor"].split(".")[0] in " ".join(text.split())
    assert all(f"--{name}" in text for name in FLAGS)


def test_what_a_resume_does_with_a_changed_flag_follows_its_declared_kind():
    """--allow_changed of a "batch geometry" flag re-positions the data, of a "schedule" flag replaces the restored
    schedule (lrc.training.resume); a kind outside the vocabulary is refused at import, not silently ignored."""
    from lrc.training.flags import resume_checked
    from lrc.training.resume import BATCH_GEOMETRY, SCHEDULE_FLAGS

    assert set(BATCH_GEOMETRY) == {"batch_size", "gradient_accumulation_steps", "world_size"}
    assert set(SCHEDULE_FLAGS) == {"learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "adam_beta2"}
    with pytest.raises(TypeError, match="is not one of"):
        resume_checked(type("Group", (), {"_resume_checked": {"batch_size": "batch-geometry"}}))


def test_training_command_line_spellings(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("x\n")
    base = ["--raw_model_name", "t", "--dataset-name", str(data), "--output_dir=o", "--target_hidden_size", "8"]
    cfg = parse_argv([*base, "--del_layers", "3,7", "--use_all_attn", "0", "--no_use_aux_loss", "--bf16",
                      "--learning-rate", "1e-3", "--check_data_cls_loss", "False"])
    assert cfg.method.del_layers == (3, 7) and cfg.method.use_all_attn is False and cfg.method.use_aux_loss is False
    assert cfg.optim.bf16 == "true" and cfg.optim.learning_rate == 1e-3 and cfg.run.dataset_name == str(data)
    assert set(cfg.given) >= {"del_layers", "use_all_attn", "use_aux_loss", "bf16", "learning_rate"}
    same = parse_flags({"raw_model_name": "t", "dataset_name": str(data), "output_dir": "o", "target_hidden_size": 8,
                        "del_layers": (3, 7), "use_all_attn": False, "use_aux_loss": False, "bf16": True,
                        "learning_rate": 1e-3, "check_data_cls_loss": False})
    assert dataclasses.replace(same, given=()) == dataclasses.replace(cfg, given=())


def test_train_config_round_trips_through_a_recipe_and_a_record(tmp_path):
    """The command line, a recipe holding the same flags and a stored run record all give the same TrainConfig; the
    typed object is what the run reads (no flag dict)."""
    import yaml

    from lrc.checkpoint import TeacherRef
    from lrc.training.record import run_record

    data = tmp_path / "d.txt"
    data.write_text("x\n")
    argv = ["--raw_model_name", "t", "--dataset_name", str(data), "--output_dir", "o", "--target_hidden_size", "8",
            "--del_layers", "3,7", "--learning_rate", "3e-4", "--report_to", "tensorboard", "--str_ban_losses",
            "mlp-out-loss", "--bf16", "false", "--model_cls", "distill"]
    cfg = parse_argv(argv)
    assert cfg.run.model_cls == "lrc" and cfg.method.ban_losses == ("mlp-out-loss",)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.to_flags().items() if k in cfg.given}))
    from_recipe = parse_argv(["--config", str(recipe)])
    assert dataclasses.replace(from_recipe, given=()) == dataclasses.replace(cfg, given=())
    record = json.loads(json.dumps(run_record(cfg, 1, TeacherRef("t", "c", "llama"), bf16=False)))
    assert TrainConfig.from_record(record) == cfg
    assert record["flags"]["learning_rate"] == 3e-4 and record["model_cls"] == "lrc"


def test_training_docs_flag_reference_is_generated_from_the_dataclasses():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "flag_docs.py"
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _spellings(value) -> set[str]:
    """How README's digest may write a default."""
    if value is None or value in ("", "no"):
        return {"none"}
    if isinstance(value, bool):
        return {"1", "true"} if value else {"0", "false"}
    if isinstance(value, float):
        return {f"{value:g}", f"{value:.0e}".replace("e-0", "e-")}
    return {str(value)}


def test_readme_flag_digest_agrees_with_the_dataclasses():
    """README's table of the most used training flags is a digest, written by hand; its defaults must be the
    dataclasses' (docs/TRAINING.md has the whole generated reference)."""
    from pathlib import Path

    from lrc.training.config import REQUIRED_FLAGS

    rows = [line for line in (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
            if line.startswith("| `--")]
    assert len(rows) > 10
    for row in rows:
        flags_cell, default_cell = (c.strip() for c in row.strip("|").split("|")[:2])
        names = [f.strip(" `").lstrip("-").replace("-", "_") for f in flags_cell.split(" / ")]
        defaults = [d.strip() for d in default_cell.split(" / ")]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), row
        for name, written in zip(names, defaults):
            assert name in FLAGS, row
            expected = {"required"} if name in REQUIRED_FLAGS else _spellings(FLAGS[name].default)
            assert written in expected, (name, written, expected)


def test_a_run_record_of_the_previous_version_still_reads():
    """A record written before TrainConfig (2026-12-05: ``model_cls: distill``, ``bf16`` as a bool, ``report_to`` as a
    list, no ``run_id`` / ``lineage``) gives the configuration it was written with."""
    from pathlib import Path

    from lrc.training.record import on_line

    record = json.loads((Path(__file__).parent / "data" / "run_record_2026-12-05.json").read_text())
    assert "run_id" not in record and record["model_cls"] == "distill"
    cfg = TrainConfig.from_record(record)
    assert cfg.run.model_cls == "lrc" and cfg.optim.bf16 == "false" and cfg.ckpt.report_to == "tensorboard"
    assert cfg.method.target_hidden_size == 32 and cfg.optim.max_steps == 2
    # its checkpoints are on a line that resumed from them (the run without a run_id is the run None)
    assert on_line(record, 2, [{"run_id": None, "until_step": 2}, {"run_id": "new", "until_step": None}])
