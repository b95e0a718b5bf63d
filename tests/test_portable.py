"""Converted students load anywhere: plain AutoModelForCausalLM, the text-generation pipeline, and a
Llama-architecture export of Qwen2 students that computes the same logits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from students import converted_student, lrc_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from lrc.after.convert import ConversionError, convert_checkpoint, export_as_llama

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "convert_ckpt.py"), *args], cwd=REPO, capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          timeout=300)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def qwen2_case(tmp_path_factory):
    """An LRC checkpoint on an untied Qwen2 teacher (q/k/v biases) and its converted student."""
    tmp = tmp_path_factory.mktemp("qwen2")
    run, model = lrc_checkpoint(tmp, "qwen2", tied=False)
    return run, model, convert_checkpoint(str(run), str(tmp / "student"), dtype="float32")


def test_text_generation_pipeline(tmp_path):
    student = converted_student(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(student)  # no trust_remote_code
    assert type(model).__name__ == "LlamaForCausalLM"
    gen = pipeline("text-generation", model=str(student), device="cpu")
    out = gen("w5 w6 w7", max_new_tokens=4, do_sample=False, return_full_text=False)
    new_ids = AutoTokenizer.from_pretrained(student)(out[0]["generated_text"], add_special_tokens=False)["input_ids"]
    assert 1 <= len(new_ids) <= 4, out
    ids = torch.tensor([[5, 6, 7]])
    direct = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert direct.shape == (1, 7)


def test_llama_export_equals_qwen2_student(qwen2_case, tmp_path):
    run, model, qwen_dir = qwen2_case
    out = convert_checkpoint(str(run), str(tmp_path / "llama"), dtype="float32", export_arch="llama")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["attention_bias"] is True and cfg["mlp_bias"] is False
    assert cfg["head_dim"] == 16 and cfg["hidden_size"] == 32 and cfg["tie_word_embeddings"] is False
    assert json.loads((out / "lrc_conversion.json").read_text())["export_arch"] == "llama"
    qwen = AutoModelForCausalLM.from_pretrained(qwen_dir)
    llama = AutoModelForCausalLM.from_pretrained(out)
    assert type(qwen).__name__ == "Qwen2ForCausalLM" and type(llama).__name__ == "LlamaForCausalLM"
    assert all(llama.model.layers[i].self_attn.o_proj.bias.abs().max() == 0 for i in range(3))
    assert llama.model.layers[0].self_attn.q_proj.bias.abs().max() > 0
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ref = model.student_logits(ids)
        q, l = qwen(ids).logits, llama(ids).logits
        qm, lm = qwen(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits
    assert (l - q).abs().max().item() <= 1e-6
    assert (lm - qm).abs().max().item() <= 1e-6
    assert (l - ref).abs().max().item() <= 1e-5
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(qwen_dir).get_vocab()


def test_llama_reexport_of_a_converted_student(qwen2_case, tmp_path):
    """A converted Qwen2 student directory re-exports (no teacher needed)."""
    _, _, qwen_dir = qwen2_case
    convert_checkpoint(str(qwen_dir), str(tmp_path / "llama"), export_arch="llama")
    qwen = AutoModelForCausalLM.from_pretrained(qwen_dir)
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        assert (llama(ids).logits - qwen(ids).logits).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family,needle", [("qwen3", "q_norm/k_norm"), ("llama", "already a Llama"),
                                           ("mistral", "qwen2-family")])
def test_llama_export_refused(tmp_path, family, needle):
    run, model = lrc_checkpoint(tmp_path, family)
    with pytest.raises(ConversionError, match=needle):
        convert_checkpoint(str(run), str(tmp_path / "out"), export_arch="llama")
    assert not (tmp_path / "out").exists()


def test_llama_export_refuses_sliding_window(qwen2_case):
    _, _, qwen_dir = qwen2_case
    qwen = AutoModelForCausalLM.from_pretrained(qwen_dir)
    qwen.config.use_sliding_window = True
    qwen.config.layer_types = ["sliding_attention"] * 3
    with pytest.raises(ConversionError, match="sliding-window"):
        export_as_llama(qwen)


def test_cli_refuses_a_standard_hf_checkpoint(qwen2_case, tmp_path):
    """A baseline run / converted student (config.json + model.safetensors) needs no conversion."""
    _, _, qwen_dir = qwen2_case
    err = _one_error_line(_cli("--ckpt-path", str(qwen_dir), "--save-path", str(tmp_path / "x")))
    assert "is a standard HF checkpoint" in err and "needs no conversion" in err
    assert "AutoModelForCausalLM.from_pretrained" in err and "--model_cls origin/only_kd/tiny_bert" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConversionError, match="--export_arch 'mistral': expected one of llama"):
        convert_checkpoint(str(qwen_dir), str(tmp_path / "x"), export_arch="mistral")
    run = tmp_path / "baseline_run"  # a baseline run directory whose checkpoints are standard HF models
    shutil.copytree(qwen_dir, run / "checkpoint-3")
    with pytest.raises(ConversionError, match="checkpoint-3.*is a standard HF checkpoint|standard HF checkpoint.*checkpoint-3"):
        convert_checkpoint(str(run), str(tmp_path / "x"))
