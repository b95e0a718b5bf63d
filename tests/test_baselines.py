"""Baselines (``--model_cls origin | only_kd | tiny_bert``): they learn, the teacher stays out of the
optimizer and the checkpoints, the student has the LRC student's architecture, the loss is the
documented formula, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import VOCAB, save_teacher, tiny_teacher
from transformers import AutoModelForCausalLM, TrainerCallback

import hf_trainer
from lrc.baselines import ATTN_TERM, HIDDEN_TERM, BaselineConfig, BaselineModel
from lrc.checkpoint import CheckpointError
from lrc.config import LRCConfig
from lrc.families import student_config
from lrc.teacher import load_teacher_config
from lrc.model import LRCModel
from lrc.training.run_dir import newest_complete_checkpoint
from lrc.training.trainer import BaselineTrainer

METHODS = ("origin", "only_kd", "prune_kd", "tiny_bert")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny tied Llama teacher and packed data of one repeated pattern family (learnable in a few steps)."""
    d = tmp_path_factory.mktemp("bl")
    teacher = save_teacher(tiny_teacher("llama", tied=True, layers=2), d / "teacher")
    rng = random.Random(0)
    rows = [{"input_ids": [10 + ((s + i) % 5) for i in range(32)]} for s in (rng.randrange(5) for _ in range(64))]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"teacher": teacher, "packed": str(d / "train.jsonl")}


def flags(assets, out, mc, **over):
    f = dict(raw_model_name=assets["teacher"], dataset_name=assets["packed"], output_dir=str(out), model_cls=mc,
             target_hidden_size=32, data_max_len=32, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
             max_steps=10, log_steps=1, save_steps=5, report_to="none", seed=7, lr_scheduler="constant")
    f.update(over)
    return f


def train(assets, out, mc, trainer_cls=None, **over):
    return hf_trainer.train(hf_trainer.parse_flags(flags(assets, out, mc, **over)), trainer_cls)


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]


@pytest.mark.parametrize("mc", METHODS)
def test_baseline_learns_and_keeps_the_teacher_out(assets, tmp_path, mc):
    teacher_before = load_file(str(Path(assets["teacher"]) / "model.safetensors"))
    tr = train(assets, tmp_path / mc, mc)
    ls = losses(tr)
    assert len(ls) == 10 and sum(ls[-3:]) / 3 < 0.7 * ls[0], ls
    model: BaselineModel = tr.baseline_model
    # the teacher: frozen, unchanged, never in the optimizer
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_ids and not (opt_ids & teacher_ids)
    assert opt_ids == {id(p) for p in model.trainable_parameters()}
    for k, v in model.teacher.state_dict().items():
        if k in teacher_before:
            assert torch.equal(v, teacher_before[k]), k
    # outputs: a standard HF checkpoint with the student only, at the root and in every checkpoint-N
    out = tmp_path / mc
    for d in (out, out / "checkpoint-5", out / "checkpoint-10"):
        sd = load_file(str(d / "model.safetensors"))
        own = model.student.state_dict()
        assert set(sd) <= set(own) and sd["model.embed_tokens.weight"].shape == (VOCAB, 32)  # d_s, not d = 64
        assert all(v.shape == own[k].shape for k, v in sd.items())
        maps = d / "tiny_bert_maps.safetensors"
        assert maps.is_file() == (mc == "tiny_bert")
        assert json.loads((d / "baseline_config.json").read_text())["method"] == mc
    student = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[10, 11, 12, 13, 14, 10, 11]])
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, model.student(ids).logits, rtol=0, atol=1e-5)


def test_prune_kd_starts_as_lrc_activation_init(assets, tmp_path):
    """prune_kd's step-0 student is the width-pruned teacher LRC's --proj_init activation starts from: the same
    channels (same calibration) and the same logits; the checkpoint holds the student only."""
    a = train(assets, tmp_path / "p", "prune_kd", max_steps=1, learning_rate=1e-12, calib_tokens=64)
    b = hf_trainer.train(hf_trainer.parse_flags(flags(assets, tmp_path / "l", "distill", max_steps=1,
                                                      learning_rate=1e-12, calib_tokens=64, proj_init="activation")))
    rec = [json.loads((tmp_path / x / "run_config.json").read_text())["proj_init"] for x in ("p", "l")]
    assert rec[0]["channels"] == rec[1]["channels"] and rec[0]["calib_tokens"] == 64
    ids = torch.tensor([[10, 11, 12, 13, 14, 10, 11]])
    with torch.no_grad():  # lr 1e-12: one step moves nothing visible
        torch.testing.assert_close(a.baseline_model.student(ids).logits, b.lrc_model.student_logits(ids), rtol=0,
                                   atol=1e-4)
    assert not (tmp_path / "p" / "lrc_weights.safetensors").exists()


def test_baseline_architecture_is_the_lrc_students(assets):
    """Same config (hence parameter count) as the student LRC's converter writes for the same flags."""
    teacher = AutoModelForCausalLM.from_pretrained(assets["teacher"], dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, del_layers=(1,))
    bl = BaselineModel(teacher, BaselineConfig("only_kd", lrc))
    want = student_config(teacher.config, lrc).to_dict()
    got = bl.student.config.to_dict()
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size", "tie_word_embeddings", "rms_norm_eps"):
        assert got[k] == want[k], k
    lrc_student = LRCModel(teacher, lrc).student
    assert sum(p.numel() for p in bl.student.parameters()) == sum(p.numel() for p in lrc_student.parameters())


def test_tiny_bert_loss_is_the_documented_formula(assets):
    """CE + KL(T || S at tau, sum / B) + sum_i MSE(h_S^i M_i^T, h_T^i) + sum_i MSE(thr(A_S^i), thr(A_T^i))."""
    teacher = AutoModelForCausalLM.from_pretrained(assets["teacher"], dtype=torch.float32, attn_implementation="eager")
    torch.manual_seed(0)
    lrc = LRCConfig(target_hidden_size=32, kl_temperature=3.0)
    bl = BaselineModel(teacher, BaselineConfig("tiny_bert", lrc, attn_threshold=0.2))
    ids = torch.randint(3, VOCAB, (3, 12))
    out = bl(ids)
    s = bl.student(ids, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t = teacher(ids, output_hidden_states=True, output_attentions=True)
    ce = F.cross_entropy(s.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    kl = F.kl_div(F.log_softmax(s.logits / 3.0, -1), F.log_softmax(t.logits / 3.0, -1), log_target=True,
                  reduction="sum") / 3
    thr = lambda a: torch.where(a > 0.2, a, torch.zeros_like(a))  # noqa: E731
    hid = sum(F.mse_loss(bl.maps[i](s.hidden_states[i]), t.hidden_states[i]) for i in range(2))
    att = sum(F.mse_loss(thr(s.attentions[i]), thr(t.attentions[i])) for i in range(2))
    torch.testing.assert_close(out.loss, ce + kl + hid + att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms[HIDDEN_TERM], hid.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms[ATTN_TERM], att.detach(), rtol=1e-5, atol=1e-6)
    # gradients reach the student and the maps, not the teacher
    out.loss.backward()
    assert all(p.grad is not None for p in bl.trainable_parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_only_kd_and_origin_loss(assets):
    teacher = AutoModelForCausalLM.from_pretrained(assets["teacher"], dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, kl_temperature=2.0, kl_reduction="token_mean")
    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 10))
    for mc in ("only_kd", "origin"):
        bl = BaselineModel(teacher, BaselineConfig(mc, lrc))
        out = bl(ids)
        logits = bl.student(ids).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        want = ce
        if mc == "only_kd":
            with torch.no_grad():
                tl = teacher(ids).logits
            want = ce + F.kl_div(F.log_softmax(logits / 2, -1), F.log_softmax(tl / 2, -1), log_target=True,
                                 reduction="sum") / 20  # token_mean over 2 x 10 tokens
        torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
        assert (out.kl > 0) == (mc == "only_kd")


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("mc", ["tiny_bert"])
def test_baseline_resume_is_bitwise_exact(assets, tmp_path, mc):
    class StopTrainer(BaselineTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(_StopAt(5))

    over = dict(max_steps=8, save_steps=5, lr_scheduler="linear")
    train(assets, tmp_path / "one", mc, **over)
    train(assets, tmp_path / "two", mc, trainer_cls=StopTrainer, **over)
    assert newest_complete_checkpoint(tmp_path / "two")[0].name == "checkpoint-5"
    assert train(assets, tmp_path / "two", mc, resume="auto", **over).state.global_step == 8
    for f in ("model.safetensors", "tiny_bert_maps.safetensors"):
        a, b = load_file(str(tmp_path / "one" / f)), load_file(str(tmp_path / "two" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_baseline_resume_refuses_another_method(assets, tmp_path, capsys):
    train(assets, tmp_path / "r", "only_kd", max_steps=2, save_steps=2)
    f = flags(assets, tmp_path / "r", "tiny_bert", max_steps=4)
    rc = hf_trainer.run({**f, "resume": str(tmp_path / "r" / "checkpoint-2")})
    err = capsys.readouterr().err
    assert rc == 2 and "trained with --model_cls only_kd, this run has --model_cls tiny_bert" in err, err[-1500:]


def test_tiny_bert_attention_loss_needs_eager(assets, tmp_path, capsys):
    rc = hf_trainer.run(flags(assets, tmp_path / "e", "tiny_bert", attn_implementation="sdpa"))
    assert rc == 2 and "--attn_implementation eager" in capsys.readouterr().err


def test_tiny_bert_terms_skip_padded_positions(assets):
    """With padding, the hidden-state MSE counts real tokens only and the attention MSE real query rows only."""
    teacher = AutoModelForCausalLM.from_pretrained(assets["teacher"], dtype=torch.float32, attn_implementation="eager")
    torch.manual_seed(0)
    bl = BaselineModel(teacher, BaselineConfig("tiny_bert", LRCConfig(target_hidden_size=32)))
    ids = torch.randint(3, VOCAB, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    out = bl(ids, attention_mask=mask)
    s = bl.student(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t = teacher(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    thr = lambda a: torch.where(a > 0.01, a, torch.zeros_like(a))  # noqa: E731
    hid = sum(((bl.maps[i](s.hidden_states[i]) - t.hidden_states[i])[real] ** 2).mean() for i in range(2))
    att = sum(((thr(s.attentions[i]) - thr(t.attentions[i])).transpose(1, 2)[real] ** 2).mean() for i in range(2))
    torch.testing.assert_close(out.terms[HIDDEN_TERM], hid.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms[ATTN_TERM], att.detach(), rtol=1e-5, atol=1e-6)


def test_dense_training_starts_from_a_converted_student(assets, tmp_path):
    """LRC, then dense: ``--model_cls only_kd --init_from OUT/student`` starts as the converted LRC student (its
    weights when training begins are those files' exactly), and every weight is in the optimizer; prune_kd, which
    starts from the pruned teacher, refuses it; a directory of another architecture is refused in one line."""
    from lrc.after.convert import convert_checkpoint

    lrc_run = tmp_path / "lrc"
    hf_trainer.train(hf_trainer.parse_flags({**flags(assets, lrc_run, "lrc"), "max_steps": 2}))
    convert_checkpoint(str(lrc_run), str(lrc_run / "student"))
    seen = {}

    class AtStart(BaselineTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.update({k: v.clone() for k, v in self.baseline_model.student.state_dict().items()})

    out = tmp_path / "dense"
    trainer = hf_trainer.train(hf_trainer.parse_flags({**flags(assets, out, "only_kd"), "max_steps": 1,
                                                       "init_from": str(lrc_run / "student")}), AtStart)
    start = load_file(lrc_run / "student" / "model.safetensors")
    assert set(start) <= set(seen) and all(torch.equal(start[k], seen[k]) for k in start)
    assert not torch.equal(load_file(out / "model.safetensors")["model.norm.weight"], start["model.norm.weight"])
    assert sum(p.numel() for p in trainer.optimizer.param_groups[0]["params"]) == \
        sum(p.numel() for p in trainer.baseline_model.student.parameters())
    assert json.loads((out / "run_config.json").read_text())["init_from"] == str((lrc_run / "student").resolve())
    with pytest.raises(hf_trainer.FlagError, match="starts from the width-pruned teacher"):
        hf_trainer.train(hf_trainer.parse_flags({**flags(assets, tmp_path / "p", "prune_kd"),
                                                 "init_from": str(lrc_run / "student")}))
    other = tmp_path / "other"
    AutoModelForCausalLM.from_config(student_config(load_teacher_config(assets["teacher"]),
                                                    LRCConfig(target_hidden_size=16))).save_pretrained(other)
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        hf_trainer.train(hf_trainer.parse_flags({**flags(assets, tmp_path / "o", "only_kd"), "init_from": str(other)}))
