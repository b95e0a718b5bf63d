"""LlamaFactory SFT of a converted student, in LlamaFactory's own environment (scripts/setup_llamafactory.sh).

Skipped, with the reason, when that environment is absent. ``LLAMAFACTORY_VENV`` points to another one.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from students import converted_student
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
LF_DIR = REPO / "configs" / "llama_factory"
VENV = Path(os.environ.get("LLAMAFACTORY_VENV", REPO / ".venv-llamafactory"))
CLI = REPO / "scripts" / "llamafactory-cli"

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "llamafactory-cli").is_file(),
    reason=f"no LlamaFactory environment at {VENV} (create it with: bash scripts/setup_llamafactory.sh; "
           "or set LLAMAFACTORY_VENV)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", LLAMAFACTORY_VENV=str(VENV), WANDB_DISABLED="true",
               TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    return env


def _dataset_dir(root: Path) -> Path:
    """A tiny local sharegpt-format dataset in the tiny vocabulary, described by ``dataset_info.json``."""
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(3, 90)}" for _ in range(n))  # noqa: E731
    root.mkdir()
    rows = [{"messages": [{"role": "user", "content": words(6)}, {"role": "assistant", "content": words(4)}]}
            for _ in range(8)]
    (root / "tiny_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = json.loads((LF_DIR / "data" / "dataset_info.json").read_text())["lrc_sft_example"]
    (root / "dataset_info.json").write_text(json.dumps({"tiny_sft": {**info, "file_name": "tiny_sft.jsonl"}}))
    return root


def _onpolicy_student(tmp_path: Path) -> Path:
    """The converted student after 2 steps of ``lrc onpolicy`` from its teacher: the run's root is the model."""
    from lrc.onpolicy.options import OnPolicyOptions
    from lrc.onpolicy.run import onpolicy

    student = converted_student(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(3, 11)))
    out = tmp_path / "onpolicy"
    onpolicy(OnPolicyOptions(student=str(student), teacher=str(tmp_path / "teacher"), prompts=str(prompts),
                             output_dir=str(out), batch_size=2, max_new_tokens=4, max_steps=2, learning_rate=1e-3))
    return out


@pytest.mark.parametrize("stage", ["converted", "onpolicy"])
def test_two_steps_of_full_sft_on_cpu(tmp_path, stage):
    """2 steps of full SFT in LlamaFactory's environment, of a converted student and of an ``lrc onpolicy`` output."""
    student = converted_student(tmp_path) if stage == "converted" else _onpolicy_student(tmp_path)
    out = tmp_path / "sft"
    r = subprocess.run(
        ["bash", str(CLI), "train", "configs/llama_factory/smoke_cpu_sft.yaml", f"model_name_or_path={student}",
         f"dataset_dir={_dataset_dir(tmp_path / 'data')}", "dataset=tiny_sft", f"output_dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    before, after = load_file(str(student / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # full SFT changed the weights
    model = AutoModelForCausalLM.from_pretrained(out)  # the SFT result loads in the main environment too
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


RECIPES = {"llama3_full_sft": "llama3", "qwen_full_sft": "qwen", "smoke_cpu_sft": "default"}


def test_recipes_parse_with_llamafactory():
    """Every key of the shipped recipes is a LlamaFactory 0.9.5 argument; templates, datasets and ZeRO configs exist."""
    code = f"""
import json, yaml
from transformers import HfArgumentParser
from llamafactory.hparams.parser import _TRAIN_ARGS
from llamafactory.data.template import TEMPLATES
for recipe, template in {RECIPES!r}.items():
    cfg = yaml.safe_load(open(f"configs/llama_factory/{{recipe}}.yaml"))
    assert cfg["template"] == template and template in TEMPLATES, (recipe, cfg["template"])
    assert cfg["finetuning_type"] == "full" and cfg["stage"] == "sft", recipe
    info = json.load(open(cfg["dataset_dir"] + "/dataset_info.json"))
    assert all(d in info for d in cfg["dataset"].split(",")), (recipe, cfg["dataset"])
    if cfg.get("deepspeed"):
        assert json.load(open(cfg["deepspeed"]))["zero_optimization"]["stage"] in (0, 2, 3), recipe
        cfg["deepspeed"] = None  # checked above; parsing it further needs a GPU
    cfg.update(bf16=False, use_cpu=True)  # the GPU recipes' bf16 is refused on a CPU-only machine
    HfArgumentParser(_TRAIN_ARGS).parse_dict(cfg, allow_extra_keys=False)
    print("ok", recipe)
"""
    env = _env()
    env["PYTHONPATH"] = str(LF_DIR / "stubs")
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.count("ok ") == len(RECIPES), r.stdout + r.stderr[-3000:]
