"""The method registry (``lrc.training.methods``): every registered method trains through the command line, saves,
resumes and, where its output needs it, converts; its result loads as a standard HF model. The official spelling
``--model_cls distill`` is LRC."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lrc.after.convert_cli import cli as convert_cli
from lrc.training.methods import METHODS, method_named
from lrc.training.run_dir import finished_step
from trainer_helpers import argv, base_flags, cli, make_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_trains_saves_resumes_and_converts(assets, tmp_path, capsys, name):
    out = tmp_path / "run"
    flags = base_flags(assets, out, model_cls=name, max_steps=2, save_steps=2)
    assert cli(*argv(flags)) == 0, capsys.readouterr().err[-3000:]
    assert finished_step(out) == 2
    assert cli(*argv({**flags, "max_steps": 3, "resume": "auto"})) == 0, capsys.readouterr().err[-3000:]
    said = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in said and finished_step(out) == 3
    record = json.loads((out / "run_config.json").read_text())
    assert record["model_cls"] == name
    method = METHODS[name]
    model_dir = out
    if method.needs_conversion:
        model_dir = tmp_path / "student"
        assert convert_cli(["--ckpt-path", str(out), "--save-path", str(model_dir)]) == 0
        assert json.loads((model_dir / "lrc_conversion.json").read_text())["step"] == 3
    student = AutoModelForCausalLM.from_pretrained(model_dir)
    assert student.config.hidden_size == 32
    with torch.no_grad():
        assert torch.isfinite(student(torch.tensor([[3, 4, 5, 6]])).logits).all()


def test_the_model_cls_help_names_every_registered_method():
    """``--model_cls``'s help is written by hand (a docstring): it must name every method of the registry."""
    from lrc.cli.options import field_docs
    from lrc.training.flags import RunTarget

    text = field_docs(RunTarget)["model_cls"]
    assert all(f"{name} (" in text for name in METHODS), text


def test_the_official_spelling_is_lrc(assets, tmp_path):
    assert method_named("distill") is METHODS["lrc"]
    out = tmp_path / "run"
    assert cli(*argv(base_flags(assets, out, model_cls="distill", max_steps=1, save_steps=1))) == 0
    assert json.loads((out / "run_config.json").read_text())["model_cls"] == "lrc"
