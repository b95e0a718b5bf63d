"""``--config recipe.yaml``: the shipped recipes parse to the same configuration as their command lines, the command
line overrides a recipe, and a bad recipe is refused in one line naming the file and line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trainer_helpers import make_assets

from lrc.training.parse import FlagError, parse_flags

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"

# The official README's LRC-1.5B command (README.md, Training), as fire hands it over.
README_COMMAND = {
    "log_steps": 100, "max_grad_norm": 1.0, "learning-rate": 1e-4, "gradient_accumulation_steps": 1,
    "max_steps": 208000, "dataset_name": "../datasets/mix_general_llama3_tokenized_v5.1/train.jsonl",
    "batch-size": 3, "data-max-len": 2048, "save_steps": 20000, "check_data_cls_loss": False,
    "target_hidden_size": 1536, "kl_temperature": 40, "warmup-ratio": 0.005,
    "raw-model-name": "/path/to/Llama-3.2-3B-Instruct",
    "extra_tags": ("general_train", "8h800", "arch", "try_sota", "all_ffn", "all_attn"),  # fire splits on commas
    "use_accelerate": True, "output_dir": "../ckpts/lrc-1.5b", "str_ban_losses": "no", "tie_word_emb_proj": 1,
    "use_all_attn": 1, "aux_loss_scale_factor": 0.2,
}


def _same(a, b) -> None:
    """Equal configurations: every flag's value (``given`` says how they were given, so it may differ)."""
    assert dataclasses.replace(a, given=()) == dataclasses.replace(b, given=())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def test_paper_recipe_parses_as_the_readme_command(assets, tmp_path):
    # the recipe's data path does not exist here: the same existing file replaces it on both sides
    here = {"dataset_name": assets["packed"]}
    from_recipe = parse_flags({"config": str(RECIPES / "lrc-1.5b.yaml"), **here})
    _same(from_recipe, parse_flags({**README_COMMAND, **here}))
    assert from_recipe.method.target_hidden_size == 1536 and from_recipe.method.aux_loss_scale_factor == 0.2
    assert from_recipe.optim.learning_rate == 1e-4 and from_recipe.method.ban_losses == ()


def test_demo_recipe_parses_as_demo():
    _same(parse_flags({"config": str(RECIPES / "demo.yaml")}), parse_flags({"demo": True}))


def test_command_line_overrides_the_recipe(assets):
    cfg = parse_flags({"config": str(RECIPES / "lrc-1.5b.yaml"), "dataset_name": assets["packed"],
                       "learning-rate": 3e-4, "max_steps": 5})
    assert cfg.optim.learning_rate == 3e-4 and cfg.optim.max_steps == 5 and cfg.optim.batch_size == 3


@pytest.mark.parametrize("text,message", [
    ("target_hidden_size: 64\nlearning_rat: 1e-3\n", "bad.yaml, line 2: unknown flag 'learning_rat'"),
    ("target_hidden_size: 64\ndel_layers: [1, 2]\n", "bad.yaml, line 2: del_layers must be a single value"),
    ("target_hidden_size: 64\n  bad: : indent\n", "bad.yaml, line 2: not valid YAML"),
    ("- target_hidden_size\n", "bad.yaml: expected `flag: value` lines"),
    ("config: other.yaml\n", "bad.yaml, line 1: a recipe cannot include another"),
])
def test_bad_recipe_is_one_line_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(FlagError) as e:
        parse_flags({"config": str(tmp_path / "bad.yaml")})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_recipe_names_the_file(tmp_path):
    with pytest.raises(FlagError, match="--config .*nope.yaml: cannot read it"):
        parse_flags({"config": str(tmp_path / "nope.yaml")})
