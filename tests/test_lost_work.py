"""No edge loses work (issue 23): conversions that would delete a run or a teacher, the live line of a run
(rollback, rotation), requeue loops after a kill at any moment, one-line errors where tracebacks were, a
converter that verifies its input, numbers that look fine and are not, and the weak cases (leftovers,
stale roots, moved teachers, cut lines, data changed in place, YAML, misspelled flags).

Each test states the failure it holds off; test-only behaviour (a signal or a kill at a chosen moment) comes
from trainer subclasses and patches in the test's own scripts, never from the shipped code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_run_contract import one_line_error, signal_at
from tiny import save_teacher, tiny_teacher
from trainer_helpers import base_flags, cli, make_assets, train, weights
from transformers import TrainerCallback

import hf_trainer
from lrc.after.convert_cli import cli as convert_cli
from lrc.after.evaluate import cli as eval_cli
from lrc.training.run_dir import LOCK_NAME, RUN_RECORD_NAME, finished_step, verify_checkpoint
from lrc.training.trainer import LRCTrainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def run4(assets, tmp_path_factory):
    """A finished run: 4 steps, checkpoints 2 and 4 (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("run4") / "out"
    train(assets, out, max_steps=4, save_steps=2)
    return out


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` with its bytes (the lock file aside)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and p.name != LOCK_NAME}


def convert(*args: str) -> int:
    return convert_cli([str(a) for a in args])


# ---------------------------------------------------------------------------------------------- deletions
def test_conversion_never_writes_over_a_run_a_checkpoint_or_a_teacher(assets, run4, tmp_path, capsys):
    """--save-path that is, contains or is inside the run, a checkpoint or the teacher: refused in one line, nothing
    touched (before: `--save-path OUT --overwrite` deleted the run it converted)."""
    run, teacher = tmp_path / "runs" / "out", Path(assets["teacher"])
    shutil.copytree(run4, run)
    before_run, before_teacher = tree(run), tree(teacher)
    cases = [
        (run, ["--overwrite"], "is the checkpoint converted"),
        (run.parent, ["--overwrite"], "contains the checkpoint converted"),
        (run / "checkpoint-4" / "hf", [], "is inside a training run or a checkpoint"),
        (run / "checkpoint-6", [], "is a name the training run"),
        (run / ".staging", [], "is a name the training run"),
        (teacher, ["--overwrite"], "the teacher"),
        (teacher / "student", [], "is inside the teacher's directory"),
    ]
    for save, extra, needle in cases:
        rc = convert("--ckpt-path", run, "--save-path", save, *extra)
        one_line_error(capsys, rc, 2, needle, "nothing was written")
    assert tree(run) == before_run and tree(teacher) == before_teacher
    assert not (run / "checkpoint-4" / "hf").exists() and verify_checkpoint(run / "checkpoint-4") is None
    # the documented place, OUT/student, is beside the run's files: converted, then replaced with --overwrite
    assert convert("--ckpt-path", run, "--save-path", run / "student") == 0
    assert convert("--ckpt-path", run / "checkpoint-2", "--save-path", run / "student", "--overwrite") == 0
    assert json.loads((run / "student" / "lrc_conversion.json").read_text())["step"] == 2
    # --overwrite replaces only an earlier conversion's output, never another directory
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    rc = convert("--ckpt-path", run, "--save-path", other, "--overwrite")
    one_line_error(capsys, rc, 2, "holds files that lrc convert did not write")
    assert (other / "notes.txt").read_text() == "keep"


def test_output_dir_never_deletes_a_model_it_did_not_write(assets, tmp_path, capsys):
    """--output_dir at the teacher's directory, or at any model directory, is refused with and without
    --overwrite_output_dir (before: the advice to add it deleted the teacher's model.safetensors)."""
    teacher = Path(assets["teacher"])
    before = tree(teacher)
    for extra in ({}, {"overwrite_output_dir": True}):
        rc = hf_trainer.run(base_flags(assets, teacher, **extra))
        one_line_error(capsys, rc, 2, "is the teacher's directory")
    other = tmp_path / "some_model"
    shutil.copytree(teacher, other)
    rc = hf_trainer.run(base_flags(assets, other, overwrite_output_dir=True))
    one_line_error(capsys, rc, 2, "holds a model that no lrc run wrote", "model.safetensors")
    assert tree(teacher) == before and tree(other) == before  # no record either
    assert not (teacher / LOCK_NAME).exists() and not (other / LOCK_NAME).exists()


def test_two_conversions_into_one_new_path_cannot_both_succeed(run4, tmp_path, capsys, monkeypatch):
    """A second conversion that finishes into the same new --save-path while the first works: the first fails in one
    line and leaves the second's output as it is (before: both said they wrote it, one silently replaced the
    other)."""
    import lrc.after.convert as conv

    save = tmp_path / "student"
    real = conv.check_finite_output
    calls = []

    def meanwhile(student, source):
        real(student, source)
        if not calls:  # the first conversion, after its checks: another one runs to completion now
            calls.append(1)
            assert convert("--ckpt-path", run4 / "checkpoint-2", "--save-path", save) == 0

    monkeypatch.setattr(conv, "check_finite_output", meanwhile)
    rc = convert("--ckpt-path", run4, "--save-path", save)
    one_line_error(capsys, rc, 2, "was written by another process")
    assert json.loads((save / "lrc_conversion.json").read_text())["step"] == 2  # the other's output, intact
    assert [p.name for p in tmp_path.iterdir()] == ["student"]  # no temporary left


def test_a_killed_conversions_leftovers_are_cleared_by_the_next(run4, tmp_path, caplog):
    """A kill -9 during conversion leaves a full-size temporary beside --save-path; the next conversion into that
    path removes it, but never one of a live process."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".student.{host}.{dead.pid}.abcd1234.tmp"
    live = tmp_path / f".student.{host}.{os.getpid()}.efgh5678.tmp"
    trash = tmp_path / f".discard-student.{host}.{dead.pid}"
    for d in (stale, live, trash):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
    assert convert("--ckpt-path", run4, "--save-path", tmp_path / "student") == 0
    assert not stale.exists() and not trash.exists() and live.exists()
    assert f"removed {stale}" in caplog.text


# ---------------------------------------------------------------------------------------------- the live line
def test_resume_auto_follows_the_live_line_after_a_rollback(assets, run4, tmp_path, capsys):
    """checkpoint-2 and -4 exist; the run is resumed from checkpoint-2 with a new learning rate, and SIGTERM stops it
    after step 3. The advised `--resume auto` continues from checkpoint-3 (before: from checkpoint-4, the
    abandoned line, without a word) and ends bitwise equal to the same rollback run uninterrupted."""
    over = dict(max_steps=6, save_steps=2, learning_rate=5e-3, allow_changed="learning_rate")
    ref, out = tmp_path / "ref", tmp_path / "out"
    shutil.copytree(run4, ref)
    shutil.copytree(run4, out)
    train(assets, ref, resume=str(ref / "checkpoint-2"), **over)
    rc = hf_trainer.run(base_flags(assets, out, resume=str(out / "checkpoint-2"), **over), trainer_cls=signal_at(3))
    one_line_error(capsys, rc, 75, "checkpoint-3 is written", "--resume auto")
    assert finished_step(out) is None  # the root's step-4 outputs are not this line's
    train(assets, out, resume="auto", **over)
    said = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-3'} (step 3)" in said
    assert f"skipped {out / 'checkpoint-4'} (an abandoned continuation" in said
    a, b = weights(ref), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a) and finished_step(out) == 6


def test_rotation_never_trades_a_complete_checkpoint_for_an_incomplete_one(assets, run4, tmp_path, capsys):
    """checkpoint-4 is incomplete; `--save_total_limit 1 --resume auto` resumes from checkpoint-2 and SIGTERM saves
    checkpoint-3: rotation keeps checkpoint-3 (before: it kept only the broken checkpoint-4 and deleted 2 and 3), and
    the advised `--resume auto` finishes, bitwise equal to an uninterrupted resume."""
    over = dict(max_steps=6, save_steps=2, save_total_limit=1)
    ref, out = tmp_path / "ref", tmp_path / "out"
    for d in (ref, out):
        shutil.copytree(run4, d)
        (d / "checkpoint-4" / "optimizer.pt").unlink()
    train(assets, ref, resume="auto", **over)
    rc = hf_trainer.run(base_flags(assets, out, resume="auto", **over), trainer_cls=signal_at(3))
    one_line_error(capsys, rc, 75, "checkpoint-3 is written")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert verify_checkpoint(out / "checkpoint-3") is None
    train(assets, out, resume="auto", **over)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # the broken 4 replaced, then rotated
    a, b = weights(ref), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- requeue loops
REQUEUE = """
import os, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import hf_trainer, lrc.training.run_dir, lrc.teacher
from lrc.training.trainer import LRCTrainer

MOMENT, SIG = os.environ.get("AT", ""), getattr(signal, os.environ.get("SIG", "SIGKILL"))
hit = lambda: os.kill(os.getpid(), SIG)
if MOMENT == "startup":  # while the teacher loads (after the run's record is written)
    real_load = lrc.teacher.load_teacher
    def load_teacher(*a, **kw):
        hit()
        return real_load(*a, **kw)
    lrc.teacher.load_teacher = load_teacher
if MOMENT == "final":  # while the final outputs are linked into the root
    real_link, links = lrc.training.run_dir.link_or_copy, []
    def link_or_copy(src, dst):
        if dst.parent == src.parent.parent and not links:
            links.append(1)
            hit()
        return real_link(src, dst)
    lrc.training.run_dir.link_or_copy = link_or_copy

class T(LRCTrainer):
    def training_step(self, *a, **kw):
        if MOMENT == "step1" and self.state.global_step == 0:
            hit()
        return super().training_step(*a, **kw)
    def _save_optimizer_and_scheduler(self, output_dir):
        if (MOMENT, self.state.global_step) in (("midsave", 4), ("lastsave", 6)):
            hit()
        super()._save_optimizer_and_scheduler(output_dir)

sys.exit(hf_trainer.run({flags!r}, trainer_cls=T))
"""


def _launch(tmp_path: Path, flags: dict, moment: str = "", sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    script = tmp_path / "requeue.py"
    script.write_text(REQUEUE.format(repo=str(REPO), tests=str(REPO / "tests"), flags=flags))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "AT": moment, "SIG": sig}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_requeue_loop_always_finishes_bitwise(assets, tmp_path, sig):
    """A Slurm-style requeue loop: the same command (`--resume auto` from the first launch) is started again after
    each interruption, which comes at start-up (while the teacher loads), in the first step, in the middle of a
    checkpoint, in the middle of the last step's checkpoint and while the final outputs are linked, one per launch.
    No human step is needed and the final weights equal an uninterrupted run's bitwise (before: a start killed before
    its first checkpoint left a directory that `--resume auto` refused for ever)."""
    over = dict(max_steps=6, save_steps=2, resume="auto", batch_size=2, gradient_accumulation_steps=2)
    ref = _launch(tmp_path, base_flags(assets, tmp_path / "ref", **over))
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "out"
    flags = base_flags(assets, out, **over)
    codes = []
    for moment in ("startup", "step1", "midsave", "lastsave", "final", ""):
        p = _launch(tmp_path, flags, moment, sig)
        codes.append(p.returncode)
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        if moment == "":
            assert p.returncode == 0, p.stderr[-3000:]
    killed = -signal.SIGKILL if sig == "SIGKILL" else None
    if killed:
        assert codes == [killed] * 5 + [0], codes
    else:  # start-up: nothing saved (130); in a step or a save: that step ends and is saved (75); in the last step's
        # save or the final outputs: the run finishes (0)
        assert codes == [130, 75, 75, 0, 0, 0], codes
    assert finished_step(out) == 6
    a, b = weights(tmp_path / "ref"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_start_that_fails_before_training_leaves_nothing(assets, tmp_path, capsys, monkeypatch):
    """A data error found after --output_dir was claimed, or SIGTERM while the teacher loads: the directory the start
    created is gone (before: it stayed with .lrc.lock and run_config.json); an existing one gets its record back."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [3, 4]}\n{"input_ids": "x"}\n')
    out = tmp_path / "new"
    rc = hf_trainer.run(base_flags(assets, out, dataset_name=str(bad)))
    one_line_error(capsys, rc, 2, "bad.jsonl:2")
    assert not out.exists()

    import lrc.teacher

    real = lrc.teacher.load_teacher

    def load(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(lrc.teacher, "load_teacher", load)
    rc = hf_trainer.run(base_flags(assets, out))
    monkeypatch.undo()
    one_line_error(capsys, rc, 130, "before training began")
    assert not out.exists()
    # an existing run: a failing resume puts its record back byte for byte
    train(assets, out, max_steps=2, save_steps=2)
    before = tree(out)
    rc = hf_trainer.run(base_flags(assets, out, resume="auto", max_steps=4, dataset_name=str(bad),
                                   allow_changed="dataset_name"))
    one_line_error(capsys, rc, 2, "bad.jsonl:2")
    assert tree(out) == before


# ---------------------------------------------------------------------------------------------- one-line errors
def test_a_non_finite_teacher_weight_is_named_at_load(assets, tmp_path, capsys):
    teacher = tiny_teacher("llama", tied=True, layers=2)
    with torch.no_grad():
        teacher.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    path = save_teacher(teacher, tmp_path / "nan_teacher")
    out = tmp_path / "out"
    rc = hf_trainer.run(base_flags(assets, out, raw_model_name=path))
    one_line_error(capsys, rc, 2, "model.layers.1.mlp.up_proj.weight", "1 NaN")
    assert not out.exists()
    rc = eval_cli(["--model", path, "--data", assets["heldout"], "--data_max_len", "16"])
    one_line_error(capsys, rc, 2, "model.layers.1.mlp.up_proj.weight")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_a_width_transformers_would_not_load_is_refused_before_training(family, tmp_path, capsys):
    """d_s 30 with 4 heads: Llama's config refuses it, so training refuses it at once with the nearest widths
    (before: it trained, then conversion crashed); the families that accept it train and convert to a student
    that stock transformers loads."""
    from transformers import AutoModelForCausalLM

    teacher = save_teacher(tiny_teacher(family, tied=True, layers=2), tmp_path / "teacher")
    assets = {"teacher": teacher, "packed": str(_packed(tmp_path))}
    out = tmp_path / "out"
    rc = hf_trainer.run(base_flags(assets, out, target_hidden_size=30, max_steps=1, save_steps=1))
    if family == "llama":
        one_line_error(capsys, rc, 2, "target_hidden_size=30", "nearest widths it accepts: 28, 32")
        assert not out.exists()
        return
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert convert("--ckpt-path", out, "--save-path", tmp_path / "student") == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "student").config.hidden_size == 30


def _packed(d: Path, n: int = 16, length: int = 32) -> Path:
    p = d / "p.jsonl"
    p.write_text("".join(json.dumps({"input_ids": [(i + k) % 90 + 3 for k in range(length)]}) + "\n" for i in range(n)))
    return p


def _full_disk_trainer(step: int):
    class Full(LRCTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == step:  # what torch raises when the disk fills under torch.save
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            super()._save_optimizer_and_scheduler(output_dir)

    return Full


def test_a_full_disk_under_torch_save_is_one_line(assets, tmp_path, capsys):
    """torch.save on a full disk raises RuntimeError from inline_container (not OSError): one line and exit 2, the
    half-written checkpoint removed, the earlier ones intact (before: torch's traceback)."""
    out = tmp_path / "f"
    rc = hf_trainer.run(base_flags(assets, out, max_steps=6, save_steps=2), trainer_cls=_full_disk_trainer(4))
    one_line_error(capsys, rc, 2, "writing checkpoint-4 failed", "inline_container", "free on the filesystem",
                   "--resume auto")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-2") is None


def test_a_really_full_disk(assets, tmp_path, capsys):
    """The same on a real 3 MB tmpfs (needs mount rights; skipped without them): whatever the writer that fails
    first (torch or safetensors), one line, 'the disk is full', nothing half-written."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "out"
        rc = hf_trainer.run(base_flags(assets, out, max_steps=200, save_steps=1, target_hidden_size=48))
        line, _ = one_line_error(capsys, rc, 2)
        assert "the disk is full" in line or "No space left on device" in line, line
        assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())
        assert all(verify_checkpoint(c) is None for c in out.glob("checkpoint-*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_convert_dtype_int8_is_one_line(run4, tmp_path, capsys):
    rc = convert("--ckpt-path", run4, "--save-path", tmp_path / "s", "--dtype", "int8")
    one_line_error(capsys, rc, 2, "--dtype 'int8'", "float32, bfloat16, float16")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- the converter's input
def test_the_converter_verifies_its_input(run4, tmp_path, capsys):
    """Bytes flipped in checkpoint-4's weights: conversion refuses in one line (before: exit 0 without a word)."""
    out = tmp_path / "out"
    shutil.copytree(run4, out)
    f = out / "checkpoint-4" / "lrc_weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    rc = convert("--ckpt-path", out / "checkpoint-4", "--save-path", tmp_path / "s")
    one_line_error(capsys, rc, 2, "does not verify against its manifest", "lrc_weights.safetensors does not match")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- numbers
class BlowUpAt(TrainerCallback):
    """At optimizer step ``step`` the learning rate jumps to 1e10 (as a run at lr 1e10 does from its first step)."""

    def __init__(self, step: int, optimizer_of):
        self.step, self.optimizer_of = step, optimizer_of

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            for g in self.optimizer_of().param_groups:
                g["lr"] = 1e10


class BlowUpTrainer(LRCTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.add_callback(BlowUpAt(3, lambda: self.optimizer))


def test_diverged_weights_are_named_skipped_and_never_converted(assets, tmp_path, capsys):
    """The update of step 3 blows the weights up; step 4's loss is NaN. The guard names checkpoint-2 as the last
    whose weights gave a finite loss and checkpoint-3 as the one that produced the NaN (before: it called checkpoint-3
    good); `--resume auto` skips checkpoint-3; its conversion is refused; `lrc eval` of a model whose logits
    overflow exits 3 (before: `ppl nan`, exit 0)."""
    out = tmp_path / "out"
    rc = hf_trainer.run(base_flags(assets, out, max_steps=8, save_steps=1, max_grad_norm=0.0),
                        trainer_cls=BlowUpTrainer)
    line, _ = one_line_error(capsys, rc, 3, "non-finite loss at step 4")
    assert f"The last checkpoint whose weights gave a finite loss: {out / 'checkpoint-2'}" in line
    assert f"{out / 'checkpoint-3'} holds the weights that produced the non-finite loss" in line
    assert json.loads((out / RUN_RECORD_NAME).read_text())["nonfinite"]["step"] == 4
    rc = convert("--ckpt-path", out / "checkpoint-3", "--save-path", tmp_path / "s")
    one_line_error(capsys, rc, 2, "NaN/inf", "checkpoint-3", "diverged")
    assert not (tmp_path / "s").exists()
    train(assets, out, resume="auto", max_steps=4, save_steps=1, max_grad_norm=0.0)
    said = capsys.readouterr().out
    assert f"skipped {out / 'checkpoint-3'} (its weights produced the non-finite loss of step 4" in said
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in said
    # a standard HF model whose logits overflow: lrc eval refuses to call NaN a score
    huge = tiny_teacher("llama", tied=False, layers=2)
    with torch.no_grad():  # finite weights whose product overflows fp32 in the logits
        huge.model.norm.weight.mul_(1e20)
        huge.lm_head.weight.mul_(1e20)
    path = save_teacher(huge, tmp_path / "huge")
    rc = eval_cli(["--model", path, "--data", assets["heldout"], "--data_max_len", "16"])
    one_line_error(capsys, rc, 3, "NaN/inf logits", "not a score")


# ---------------------------------------------------------------------------------------------- weak cases
def test_converting_a_run_says_which_step_and_names_a_newer_checkpoint(assets, run4, tmp_path, capsys, caplog):
    """An extension of a finished run was stopped after checkpoint-6: converting the run says it converts step 4 and
    names checkpoint-6 (before: the older root weights, silently)."""
    out = tmp_path / "out"
    shutil.copytree(run4, out)
    rc = hf_trainer.run(base_flags(assets, out, resume="auto", max_steps=8, save_steps=2), trainer_cls=signal_at(6))
    assert rc == 75
    capsys.readouterr()
    assert convert("--ckpt-path", out, "--save-path", tmp_path / "s") == 0
    said = capsys.readouterr().out
    assert f"(step 4 of {out / 'lrc_weights.safetensors'})" in said
    assert f"{out / 'checkpoint-6'} (step 6) is newer than the final weights converted here (step 4)" in caplog.text
    assert json.loads((tmp_path / "s" / "lrc_conversion.json").read_text())["step"] == 4


def test_a_moved_teacher_is_named(assets, run4, tmp_path, capsys):
    moved = tmp_path / "moved"
    os.rename(assets["teacher"], moved)
    try:
        rc = convert("--ckpt-path", run4, "--save-path", tmp_path / "s")
        one_line_error(capsys, rc, 2, "the teacher path stored in", "does not exist (moved or deleted?)",
                       "--raw-model-name")
        assert convert("--ckpt-path", run4, "--save-path", tmp_path / "s", "--raw-model-name", moved) == 0
    finally:
        os.rename(moved, assets["teacher"])


def test_cut_lines_are_reported_once(assets, tmp_path, capsys):
    """Packed lines of 32 tokens at --data_max_len 8: 75% of the tokens are dropped, and the run says so once."""
    train(assets, tmp_path / "out", data_max_len=8, max_steps=1, save_steps=1)
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "longer than --data_max_len 8" in ln]
    assert len(notes) == 1 and "96 of 96 lines" in notes[0] and "(75%) are never trained on" in notes[0]


def test_data_changed_in_place_is_detected_on_resume(assets, tmp_path, capsys):
    """The training file rewritten in place, same path and size, other bytes: the resume is refused, naming it
    (before: not detected); --allow_changed dataset_name applies it."""
    data = _packed(tmp_path, n=32)
    out = tmp_path / "out"
    train(assets, out, dataset_name=str(data), max_steps=2, save_steps=2)
    text = data.read_text()
    data.write_text(text.replace("[3,", "[4,").replace("[3, ", "[4, "))
    assert data.stat().st_size == len(text)
    rc = hf_trainer.run(base_flags(assets, out, dataset_name=str(data), resume="auto", max_steps=4, save_steps=2))
    one_line_error(capsys, rc, 2, "--dataset_name", "--allow_changed dataset_name")
    train(assets, out, dataset_name=str(data), resume="auto", max_steps=4, save_steps=2, allow_changed="dataset_name")
    assert finished_step(out) == 4


@pytest.mark.parametrize("text, needles", [
    ("target_hidden_size: 32\nlearning_rate: 1e-3\nlearning_rate: 1e-2\n",
     ["line 3: learning_rate is given twice (first on line 2)"]),
    ("target_hidden_size: 32\nlearning_rate:\n", ["line 2: learning_rate has no value"]),
    ("target_hidden_size: 32\nlearning_rat: 1e-3\n", ["line 2: unknown flag 'learning_rat' (did you mean "
                                                      "'learning_rate'?)"]),
])
def test_recipe_errors_name_the_file_once(tmp_path, text, needles):
    from lrc.training.parse import FlagError, parse_flags

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(FlagError) as e:
        parse_flags({"config": str(recipe)})
    msg = str(e.value)
    assert all(n in msg for n in needles), msg
    assert msg.count(str(recipe)) == 1 and "\n" not in msg


def test_a_misspelled_flag_gets_a_suggestion(assets, tmp_path, capsys):
    rc = cli("--raw_model_name", assets["teacher"], "--learning_rat", "1e-3", "--output-dirr", str(tmp_path))
    one_line_error(capsys, rc, 2, "--learning_rat (did you mean --learning_rate?)",
                   "--output_dirr (did you mean --output_dir?)")
    rc = convert("--ckpt-pat", "x")
    one_line_error(capsys, rc, 2, "--ckpt_pat (did you mean --ckpt_path?)")
