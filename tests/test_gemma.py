"""Gemma 2 and Gemma 3 (text) teachers: the family that is not Llama-like (``lrc.families.GEMMA``). The structural
check, the student's gains as Gemma stores them, training-time CE and KL equal to those of the converted model's own
(soft-capped) logits, a 256K vocabulary's loss memory, and a run through the command line. Conversion is exact for
both in the family matrix of tests/test_convert.py, and the activation init equals a hand-pruned teacher in
tests/test_activation_init.py."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lrc.after.convert import convert_checkpoint
from lrc.config import LRCConfig
from lrc.families import GEMMA, family_of, student_config
from lrc.losses import _effective_chunk
from lrc.model import LRCModel
from tiny import randomize_projections, save_teacher, tiny_teacher
from trainer_helpers import argv, base_flags, cli, make_assets

GEMMAS = ("gemma2", "gemma3_text")


@pytest.mark.parametrize("family", GEMMAS)
def test_the_student_is_a_narrower_gemma(family):
    teacher = tiny_teacher(family, layers=4)
    c = student_config(teacher.config, LRCConfig(target_hidden_size=32, del_layers=(1,)))
    assert family_of(c) is GEMMA and c.model_type == family
    assert (c.hidden_size, c.head_dim, c.num_hidden_layers) == (32, 16, 3)
    assert c.query_pre_attn_scalar == 24 and c.sliding_window == 5 and c.hidden_activation == "gelu_pytorch_tanh"
    assert c.layer_types == [teacher.config.layer_types[i] for i in (0, 2, 3)]
    assert (c.final_logit_softcapping, c.attn_logit_softcapping) == ((3.0, 5.0) if family == "gemma2" else (None, None))
    model = LRCModel(teacher, LRCConfig(target_hidden_size=32))
    layer = model.projections.layers["0"]
    assert sorted(n for n, _ in layer.named_parameters() if n.endswith("norm")) == [
        "input_norm", "post_attention_norm", "post_feedforward_norm", "pre_feedforward_norm"]
    w = model.student_weights()
    # the gains start at 1; Gemma stores a gain as gain - 1, so the generated norm weights are 0
    assert all(torch.equal(w[f"model.layers.0.{n}.weight"], torch.zeros(32)) for n in GEMMA.gains)
    assert torch.equal(w["model.norm.weight"], torch.zeros(32))
    if family == "gemma3_text":  # per-head q/k norms: the teacher's, untouched
        assert torch.equal(w["model.layers.0.self_attn.q_norm.weight"], teacher.model.layers[0].self_attn.q_norm.weight)
    assert model.student.model.embed_tokens.embed_scale.item() == pytest.approx(32 ** 0.5)  # sqrt(d_s), not sqrt(d)


@pytest.mark.parametrize("family", GEMMAS)
def test_training_ce_and_kl_are_those_of_the_converted_models_logits(family, tmp_path):
    """The fused loss computes CE and KL from hidden states and head weights; with Gemma 2's soft-cap it must apply
    the cap itself. Checked against the converted student's and the teacher's own HF logits (which apply it)."""
    from lrc.checkpoint import TeacherRef, save_lrc_checkpoint
    from lrc.teacher import teacher_fingerprint

    teacher_dir = save_teacher(tiny_teacher(family), tmp_path / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, kl_temperature=2.0, kl_reduction="token_mean")
    model = LRCModel(teacher, lrc)
    randomize_projections(model)
    save_lrc_checkpoint(tmp_path / "run", model.projections, lrc,
                        TeacherRef(teacher_dir, teacher_fingerprint(teacher.config), family))
    student = AutoModelForCausalLM.from_pretrained(convert_checkpoint(str(tmp_path / "run"), str(tmp_path / "s")))
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(ids)
        zs, zt = student(ids).logits.float(), teacher(ids).logits.float()
        raw_t = teacher.lm_head(teacher.model(ids).last_hidden_state)
    if family == "gemma2":  # the cap binds on this data: the logits before it go past 3.0
        assert raw_t.abs().max() > 3.0 and zt.abs().max() < 3.0
    ce = torch.nn.functional.cross_entropy(zs[:, :-1].reshape(-1, 101), ids[:, 1:].reshape(-1))
    lt, ls = torch.log_softmax(zt / 2.0, -1), torch.log_softmax(zs / 2.0, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean()
    assert out.ce.item() == pytest.approx(ce.item(), abs=1e-5)
    assert out.kl.item() == pytest.approx(kl.item(), abs=1e-5)


@pytest.mark.parametrize("method", ["only_kd", "tiny_bert"])
def test_a_baseline_trains_on_the_soft_capped_logits(method, tmp_path):
    """A baseline's CE and KL are those of the HF student's and teacher's own (Gemma 2: soft-capped) logits."""
    from lrc.baselines import BaselineConfig, BaselineModel

    teacher = AutoModelForCausalLM.from_pretrained(save_teacher(tiny_teacher("gemma2"), tmp_path / "t"),
                                                   dtype=torch.float32, attn_implementation="eager")
    lrc = LRCConfig(target_hidden_size=32, kl_temperature=2.0, kl_reduction="token_mean")
    model = BaselineModel(teacher, BaselineConfig(method, lrc))
    with torch.no_grad():
        model.student.lm_head.weight.mul_(200.0)  # student logits far past the cap of 3.0
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(ids)
        zs, zt = model.student(ids).logits.float(), teacher(ids).logits.float()
        raw_s = model.student.lm_head(model.student.model(ids).last_hidden_state)
    assert raw_s.abs().max() > 30.0 and zs.abs().max() <= 3.0  # tanh saturates to the cap in fp32
    ce = torch.nn.functional.cross_entropy(zs[:, :-1].reshape(-1, 101), ids[:, 1:].reshape(-1))
    lt, ls = torch.log_softmax(zt / 2.0, -1), torch.log_softmax(zs / 2.0, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean()
    assert out.ce.item() == pytest.approx(ce.item(), abs=1e-4)
    assert out.kl.item() == pytest.approx(kl.item(), abs=1e-5)


def test_a_256k_vocabulary_gets_capped_loss_chunks():
    """One (chunk, V) fp32 buffer stays at most that of 1,024 tokens at V = 152,064 on a GPU (594 MiB): 608 tokens
    per chunk at V = 256,000 (Gemma 2), 594 at 262,144 (Gemma 3); every Llama-like vocabulary keeps the default
    1,024 (Qwen2.5's 152,064, Llama 3's 128,256); the CPU cap is lower still."""
    gpu = torch.device("cuda")
    assert _effective_chunk(1024, 10**6, 256_000, gpu) == 608
    assert _effective_chunk(1024, 10**6, 262_144, gpu) == 594
    for v in (152_064, 151_936, 128_256, 49_152):
        assert _effective_chunk(1024, 10**6, v, gpu) == 1024
    assert _effective_chunk(1024, 10**6, 152_065, gpu) == 1023
    assert _effective_chunk(1024, 10**6, 256_000, torch.device("cpu")) == 64


def test_a_gemma_run_trains_and_converts_through_the_command_line(tmp_path, capsys):
    assets = make_assets(tmp_path / "assets")
    teacher = save_teacher(tiny_teacher("gemma2", layers=2), tmp_path / "gemma")
    out = tmp_path / "run"
    flags = base_flags({**assets, "teacher": teacher}, out, max_steps=2, save_steps=2, proj_init="activation")
    assert cli(*argv(flags)) == 0, capsys.readouterr().err[-3000:]
    assert json.loads((out / "run_config.json").read_text())["teacher"]["model_type"] == "gemma2"
    from lrc.after.convert_cli import cli as convert_cli

    assert convert_cli(["--ckpt-path", str(out), "--save-path", str(tmp_path / "student")]) == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.model_type == "gemma2" and student.config.hidden_size == 32
