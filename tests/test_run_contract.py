"""What a run guarantees (docs/TRAINING.md): tiny teachers, real training, every failure probed.

Preemption (SIGTERM / SIGINT, 1 and 2 processes) and bitwise resume, two runs in one directory,
incomplete checkpoints, a full disk, changed flags, another teacher, a finished run, a planted pickle
in a DeepSpeed checkpoint, teachers without a tokenizer, data checked before the first step, and the
one-line errors. Test-only behaviour (a signal at step N, a failing write) comes from subclasses of
the trainer or from pytest's monkeypatch; the shipped code has no test hooks.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import VOCAB, save_teacher, tiny_teacher
from trainer_helpers import argv, base_flags, cli, free_port, make_assets, train, train_logs, weights
from transformers import TrainerCallback

import hf_trainer
from lrc.files import MANIFEST_NAME, write_manifest
from lrc.training.run_dir import (
    LOCK_NAME,
    STAGING_DIR,
    finished_step,
    newest_complete_checkpoint,
    previous_run_files,
    verify_checkpoint,
)
from lrc.training.trainer import LRCTrainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error: ")]


def one_line_error(capsys, rc: int, expected_rc: int, *needles: str) -> tuple[str, str]:
    """The run printed exactly one ``error:`` line containing every needle, and no traceback.
    Returns (that line, the run's stdout)."""
    captured = capsys.readouterr()
    err = captured.err
    assert rc == expected_rc, err[-3000:]
    lines = errors(err)
    assert len(lines) == 1 and all(n in lines[0] for n in needles), err[-3000:]
    assert "Traceback" not in err
    return lines[0], captured.out


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``out`` (the lock file aside) with its size and mtime."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


class SignalAt(TrainerCallback):
    """Send ``sig`` to this process while optimizer step ``step`` runs (on rank ``rank`` only): before its first
    micro-batch, or, ``mid_window``, after its first micro-batch (the weights generated for the step are live)."""

    def __init__(self, step: int, sig: int, rank: int | None = None, mid_window: bool = False) -> None:
        self.step, self.sig, self.rank, self.mid_window = step, sig, rank, mid_window
        self.sent = False

    def _send(self, args, state) -> None:
        if state.global_step + 1 == self.step and self.rank in (None, args.process_index) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.mid_window:
            self._send(args, state)

    def on_substep_end(self, args, state, control, **kwargs):
        if self.mid_window:
            self._send(args, state)


def signal_at(step: int, sig: int = signal.SIGTERM, mid_window: bool = False):
    class SignalTrainer(LRCTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(SignalAt(step, sig, mid_window=mid_window))

    return SignalTrainer


# ---------------------------------------------------------------------------------------------- preemption
@pytest.mark.parametrize("sig, mid_window", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_signal_saves_exits_75_and_resume_is_bitwise(assets, tmp_path, capsys, sig, mid_window):
    """A signal before an optimizer step, or in the middle of its accumulation window (GAS 2, the weights
    generated once for the step): the step completes, is saved, exit 75; the resume is bitwise equal."""
    over = dict(max_steps=7, save_steps=5, batch_size=2, gradient_accumulation_steps=2)
    train(assets, tmp_path / "one", **over)
    out = tmp_path / "two"
    rc = hf_trainer.run(base_flags(assets, out, **over), trainer_cls=signal_at(3, sig, mid_window))
    one_line_error(capsys, rc, 75, f"stopped by {signal.Signals(sig).name} after step 3", str(out / "checkpoint-3"),
                   "--resume auto")
    assert verify_checkpoint(out / "checkpoint-3") is None and finished_step(out) is None  # saved, not finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    train(assets, out, resume="auto", **over)
    a, b = weights(tmp_path / "one"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in train_logs(tmp_path / "one")] == [h["loss"] for h in train_logs(out)]
    assert finished_step(out) == 7


def test_second_signal_aborts_at_once(tmp_path):
    from lrc.training.preemption import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)  # within the grace: a launcher forwarding the same signal
        stop._at -= 10
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    code = (f"import os, signal, sys, time; sys.path.insert(0, {str(REPO)!r}); from lrc.training.preemption import GracefulStop\n"
            "with GracefulStop() as s:\n    os.kill(os.getpid(), signal.SIGTERM); s._at -= 10\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\nprint('survived')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGTERM and "survived" not in p.stdout


TWO_PROC = """
import os, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import hf_trainer
from lrc.training.trainer import LRCTrainer
from test_run_contract import SignalAt

class T(LRCTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if {step} > 0:
            self.add_callback(SignalAt({step}, signal.SIGTERM, rank=0))   # rank 1 never gets a signal

sys.exit(hf_trainer.run({flags!r}, trainer_cls=T))
"""


def _two_procs(tmp_path: Path, name: str, flags: dict, step: int) -> subprocess.CompletedProcess:
    script = tmp_path / f"{name}.py"
    script.write_text(TWO_PROC.format(repo=str(REPO), tests=str(REPO / "tests"), step=step, flags=flags))
    port = free_port()
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_sigterm_on_one_rank_stops_both_at_the_same_step(assets, tmp_path):
    """Only rank 0 is signalled (during step 2): both ranks agree to stop after step 3 and save it; resumed
    with 2 processes, the weights equal an uninterrupted 2-process run's bitwise. (GAS 2 with the default
    generation: once per optimizer step, unsharded on gloo, under DDP.)"""
    flags = base_flags(assets, tmp_path / "x", max_steps=6, save_steps=10, batch_size=1, gradient_accumulation_steps=2,
                       learning_rate=5e-3)
    p = _two_procs(tmp_path, "whole", {**flags, "output_dir": str(tmp_path / "whole")}, 0)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    out = tmp_path / "cut"
    p = _two_procs(tmp_path, "cut", {**flags, "output_dir": str(out)}, 2)
    assert p.returncode != 0
    assert len(errors(p.stderr)) == 1 and "stopped by SIGTERM after step 3" in p.stderr, p.stderr[-4000:]
    assert [c.name for c in out.glob("checkpoint-*")] == ["checkpoint-3"] and verify_checkpoint(out / "checkpoint-3") is None
    assert sorted(f.name for f in (out / "checkpoint-3").glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    p = _two_procs(tmp_path, "cut2", {**flags, "output_dir": str(out), "resume": "auto"}, 0)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    a, b = weights(tmp_path / "whole"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in train_logs(tmp_path / "whole")] == [h["loss"] for h in train_logs(out)]


# ---------------------------------------------------------------------------------------------- one run at a time
SLOW_RUN = """
import sys, time
sys.path.insert(0, {repo!r})
from transformers import TrainerCallback
import hf_trainer
from lrc.training.trainer import LRCTrainer

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.4)

class T(LRCTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.add_callback(Slow())

sys.exit(hf_trainer.run({flags!r}, trainer_cls=T))
"""


def test_second_run_into_the_same_directory_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "busy"
    flags = base_flags(assets, out, max_steps=14, save_steps=4)
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN.format(repo=str(REPO), flags=flags))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint-4").is_dir():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        before = snapshot(out)
        for extra in ({}, {"resume": "auto"}, {"overwrite_output_dir": True}):
            rc = hf_trainer.run(base_flags(assets, out, **extra))
            one_line_error(capsys, rc, 2, "is in use by another run", f"pid {proc.pid}")
        after = snapshot(out)
        assert all(after.get(k) == v for k, v in before.items() if k.startswith("checkpoint-4") or k == "run_config.json")
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert finished_step(out) == 14 and all(verify_checkpoint(out / f"checkpoint-{s}") is None for s in (12, 14))
    assert [h["step"] for h in train_logs(out)] == list(range(1, 15))


# ---------------------------------------------------------------------------------------------- resume rules
def test_incomplete_checkpoints_are_skipped_and_named(assets, tmp_path, capsys):
    out = tmp_path / "r"
    train(assets, out, max_steps=6, save_steps=2, save_total_limit=0)
    (out / "checkpoint-6" / "optimizer.pt").unlink()
    (out / "checkpoint-4" / "scheduler.pt").write_bytes(b"")
    train(assets, out, resume="auto", max_steps=8, save_steps=2)
    out_text = capsys.readouterr().out
    assert f"skipped {out / 'checkpoint-6'} (optimizer.pt is missing)" in out_text
    assert f"skipped {out / 'checkpoint-4'} (scheduler.pt has 0 bytes" in out_text
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in out_text
    # explicit paths: a truncated optimizer state or garbage in trainer_state.json is one line, nothing trains
    (out / "checkpoint-8" / "optimizer.pt").write_bytes((out / "checkpoint-8" / "optimizer.pt").read_bytes()[:100])
    (out / "checkpoint-6" / "trainer_state.json").write_text("{not json")
    for ck, needle in (("checkpoint-8", "optimizer.pt has 100 bytes"), ("checkpoint-6", "trainer_state.json")):
        before = snapshot(out)
        rc = hf_trainer.run(base_flags(assets, out, resume=str(out / ck), max_steps=10, save_steps=2))
        one_line_error(capsys, rc, 2, f"--resume {str(out / ck)!r} is not a complete checkpoint", needle)
        assert snapshot(out) == before


def test_resume_auto_never_starts_over_a_run(assets, tmp_path, capsys):
    out = tmp_path / "r"
    train(assets, out, max_steps=3, save_steps=3)
    (out / "checkpoint-3" / "lrc_weights.safetensors").unlink()
    (out / MANIFEST_NAME).unlink()
    before = snapshot(out)
    rc = hf_trainer.run(base_flags(assets, out, resume="auto", max_steps=6))
    one_line_error(capsys, rc, 2, "holds files of a run", "no complete checkpoint",
                   "checkpoint-3: lrc_weights.safetensors is missing", "--overwrite_output_dir")
    assert snapshot(out) == before


def test_finished_run_resumed_is_unchanged(assets, tmp_path, capsys):
    out = tmp_path / "r"
    train(assets, out, max_steps=4, save_steps=2)
    before = snapshot(out)
    assert train(assets, out, resume="auto", max_steps=4, save_steps=2) is None
    said = capsys.readouterr().out
    assert "finished at step 4" in said and "nothing to train" in said
    assert snapshot(out) == before and not (out / "checkpoint-5").exists()


def test_changed_flags_are_refused_then_applied_when_allowed(assets, tmp_path, capsys):
    out = tmp_path / "r"
    train(assets, out, max_steps=3, save_steps=3, lr_scheduler="linear", learning_rate=1e-2)
    flags = base_flags(assets, out, max_steps=6, save_steps=3, resume="auto", learning_rate=5e-3, batch_size=8,
                       gradient_accumulation_steps=2, data_max_len=16)
    before = snapshot(out)
    rc = hf_trainer.run(flags)
    one_line_error(capsys, rc, 2, "--learning_rate 0.005 (checkpoint: 0.01)", "--batch_size 8 (checkpoint: 4)",
                   "--gradient_accumulation_steps 2 (checkpoint: 1)", "--data_max_len 16 (checkpoint: 32)",
                   "--allow_changed learning_rate,batch_size,gradient_accumulation_steps,data_max_len")
    assert snapshot(out) == before
    rc = hf_trainer.run({**flags, "batch_size": 4, "gradient_accumulation_steps": 1, "data_max_len": 32,
                         "allow_changed": "learning_rate"})
    assert rc == 0, capsys.readouterr().err[-3000:]
    logs = train_logs(out)
    # the first run decayed linearly over its 3 steps from 1e-2; the resumed one over 6 steps from the new
    # peak 5e-3 (without --allow_changed the restored scheduler's 1e-2 would win: 1e-2 * 3 / 6 at step 4)
    assert logs[2]["learning_rate"] == pytest.approx(1e-2 * 1 / 3) and logs[3]["learning_rate"] == pytest.approx(5e-3 * 3 / 6)
    record = json.loads((out / "run_config.json").read_text())
    assert record["changed_on_resume"] == [{"flag": "learning_rate", "from": 1e-2, "to": 5e-3}]


class RecordBatches(LRCTrainer):
    """Records the first token of every sequence of every micro-batch it trains on."""

    seen: list[list[int]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            type(self).seen.append(inputs["input_ids"][:, 0].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_changed_batch_size_continues_at_the_same_sample(assets, tmp_path, capsys):
    data = tmp_path / "ids.jsonl"  # sequence i starts with token i + 3: its first token names it
    data.write_text("".join(json.dumps({"input_ids": [i + 3] + [(i + k) % 90 + 3 for k in range(15)]}) + "\n"
                            for i in range(96)))
    over = dict(dataset_name=str(data), data_max_len=16, save_steps=3)
    RecordBatches.seen = []
    train(assets, tmp_path / "whole", RecordBatches, max_steps=6, **over)
    order = [t for b in RecordBatches.seen for t in b]  # the sample order of the epoch (batch 4)
    train(assets, tmp_path / "cut", max_steps=3, **over)
    RecordBatches.seen = []
    train(assets, tmp_path / "cut", RecordBatches, resume="auto", max_steps=5, batch_size=8,
          allow_changed="batch_size", **over)
    assert "continuing at epoch 0, after 1 micro-batches of 8" in capsys.readouterr().out
    # 12 samples were trained on: the new run skips one batch of 8 and re-sees 4, instead of skipping 3 x 8
    assert [t for b in RecordBatches.seen for t in b] == order[8:24]


# ---------------------------------------------------------------------------------------------- teachers
def test_another_teacher_is_refused_at_resume_and_conversion(assets, tmp_path, capsys):
    out = tmp_path / "r"
    train(assets, out, max_steps=2, save_steps=2)
    other = save_teacher(tiny_teacher("llama", tied=True, layers=2, seed=5), tmp_path / "other")  # same architecture
    rc = hf_trainer.run(base_flags(assets, out, raw_model_name=other, resume="auto", max_steps=4))
    one_line_error(capsys, rc, 2, "cannot resume from", "other weights (weights fingerprint)", other)
    from convert_ckpt import main as convert_main
    from lrc.errors import run_cli

    rc = run_cli(lambda: convert_main(str(out), str(tmp_path / "s"), raw_model_name=other))
    one_line_error(capsys, rc, 2, "teacher mismatch", "other weights")
    assert not (tmp_path / "s").exists()
    moved = tmp_path / "moved"  # the same teacher at another path is the same teacher
    os.rename(assets["teacher"], moved)
    try:
        assert run_cli(lambda: convert_main(str(out), str(tmp_path / "s"), raw_model_name=str(moved))) == 0
    finally:
        os.rename(moved, assets["teacher"])


def _without_tokenizer(src: str, dst: Path) -> str:
    dst.mkdir()
    for f in Path(src).iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            (dst / f.name).write_bytes(f.read_bytes())
    return str(dst)


def test_teachers_without_a_tokenizer(assets, tmp_path, capsys, caplog):
    from lrc.teacher import find_tokenizer

    qwen = save_teacher(tiny_teacher("qwen2", tied=True, layers=2), tmp_path / "qwen_full")
    bare = _without_tokenizer(qwen, tmp_path / "qwen")
    rc = hf_trainer.run(base_flags(assets, tmp_path / "t", raw_model_name=bare, dataset_name=assets["text"]))
    one_line_error(capsys, rc, 2, "raw text needs the teacher's tokenizer", "has no tokenizer files", "--tokenizer")
    assert previous_run_files(tmp_path / "t") == []
    train(assets, tmp_path / "t", raw_model_name=bare, dataset_name=assets["text"], tokenizer=qwen, max_steps=2)
    # an "empty" tokenizer (far fewer tokens than the vocabulary) counts as none
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>")).save(str(Path(bare) / "tokenizer.json"))
    tok, why = find_tokenizer(bare, VOCAB)
    assert tok is None and f"tokens for a model vocabulary of {VOCAB} (an empty tokenizer" in why
    (Path(bare) / "tokenizer.json").unlink()
    # pre-tokenized data train without a tokenizer; conversion then writes the student without one, with a warning
    out = tmp_path / "p"
    train(assets, out, raw_model_name=bare, max_steps=2, save_steps=2)
    from lrc.after.convert import convert_checkpoint

    convert_checkpoint(str(out), str(tmp_path / "s1"))
    assert "has no tokenizer files" in caplog.text and "the student is written without a tokenizer" in caplog.text
    assert not any(f.name.startswith("tokenizer") for f in (tmp_path / "s1").iterdir())
    convert_checkpoint(str(out), str(tmp_path / "s2"), tokenizer=qwen)
    assert (tmp_path / "s2" / "tokenizer.json").is_file()
    # a Llama teacher without tokenizer files (transformers would need sentencepiece / tiktoken): the same
    llama = _without_tokenizer(assets["teacher"], tmp_path / "llama")
    train(assets, tmp_path / "l", raw_model_name=llama, max_steps=1, save_steps=1)
    assert convert_checkpoint(str(tmp_path / "l"), str(tmp_path / "s3")).is_dir()


# ---------------------------------------------------------------------------------------------- a full disk
def enospc_in_optimizer_save(step: int):
    class Full(LRCTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == step:
                Path(output_dir, "optimizer.pt").write_bytes(b"\0" * 64)
                raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir, "optimizer.pt")))
            super()._save_optimizer_and_scheduler(output_dir)

    return Full


def test_full_disk_during_a_checkpoint_leaves_nothing_that_looks_complete(assets, tmp_path, capsys):
    out = tmp_path / "f"
    rc = hf_trainer.run(base_flags(assets, out, max_steps=6, save_steps=2), trainer_cls=enospc_in_optimizer_save(4))
    one_line_error(capsys, rc, 2, "optimizer.pt: No space left on device", "free space")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / STAGING_DIR).exists() or not any((out / STAGING_DIR).iterdir())
    assert finished_step(out) is None and newest_complete_checkpoint(out)[0] == out / "checkpoint-2"
    train(assets, out, resume="auto", max_steps=6, save_steps=2)
    assert finished_step(out) == 6


def test_full_disk_during_the_final_outputs_then_resume_finishes(assets, tmp_path, capsys, monkeypatch):
    from transformers import TrainerState

    real = TrainerState.save_to_json

    def full(self, path):
        if Path(path).parent == out:  # the root's trainer_state.json, not a checkpoint's
            Path(path).write_text("")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path)

    out = tmp_path / "f"
    monkeypatch.setattr(TrainerState, "save_to_json", full)
    rc = hf_trainer.run(base_flags(assets, out, max_steps=4, save_steps=2))
    one_line_error(capsys, rc, 2, "No space left on device")
    monkeypatch.undo()
    assert finished_step(out) is None and not (out / MANIFEST_NAME).exists()
    assert not (out / "trainer_state.json").exists()  # the half-written file never got the final name
    assert train(assets, out, resume="auto", max_steps=4, save_steps=2) is None  # finishes without training
    assert "training had finished" in capsys.readouterr().out
    assert finished_step(out) == 4 and torch.equal(weights(out)["layers.0.q"], weights(out / "checkpoint-4")["layers.0.q"])


# ---------------------------------------------------------------------------------------------- DeepSpeed
def ds_yaml(tmp_path: Path) -> Path:
    """configs/accel_cpu_ds_zero2_2proc.yaml with one process."""
    y = (REPO / "configs/accel_cpu_ds_zero2_2proc.yaml").read_text().replace("num_processes: 2", "num_processes: 1")
    (tmp_path / "ds.yaml").write_text(y)
    return tmp_path / "ds.yaml"


DS_RUN = """
import sys
sys.path.insert(0, {repo!r})
import hf_trainer
sys.exit(hf_trainer.run({flags!r}))
"""


def test_planted_pickle_in_a_deepspeed_checkpoint_is_never_executed(assets, tmp_path):
    pytest.importorskip("deepspeed")
    out, marker = tmp_path / "ds", tmp_path / "PWNED"
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ds_yaml(tmp_path)),
                "--main_process_port", free_port()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def launch(**over) -> subprocess.CompletedProcess:
        script = tmp_path / "ds_run.py"
        script.write_text(DS_RUN.format(repo=str(REPO), flags=base_flags(assets, out, save_steps=2, **over)))
        return subprocess.run([*launcher, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    p = launch(max_steps=2)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    states = sorted((out / "checkpoint-2" / "global_step2").glob("*.pt"))
    assert states, "no DeepSpeed engine state was written"
    p = launch(max_steps=4, resume="auto")  # DeepSpeed's own states load through the weights-only path
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    code = (f"import os, torch\nclass P:\n    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'module': P()}}, {str(states[0])!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    write_manifest(out / "checkpoint-2", 2)  # the attacker also rewrites the manifest: it verifies
    assert verify_checkpoint(out / "checkpoint-2") is None
    p = launch(max_steps=4, resume=str(out / "checkpoint-2"), overwrite_output_dir=False)
    assert not marker.exists()
    assert p.returncode != 0 and "Traceback" not in p.stderr.split("error: ")[0][-200:]
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and "holds more than tensors and plain data" in line[0] and "posix.system" in line[0], \
        p.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- one-line errors
def _truncated_teacher(assets, d: Path) -> str:
    d.mkdir()
    for f in Path(assets["teacher"]).iterdir():
        data = f.read_bytes()
        (d / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    return str(d)


def _data_with(d: Path, line_no: int, line: str) -> str:
    rows = [json.dumps({"input_ids": [3, 4, 5, 6]})] * 30
    rows[line_no - 1] = line
    (d / "bad.jsonl").write_text("\n".join(rows) + "\n")
    return str(d / "bad.jsonl")


@pytest.mark.parametrize("case, needles", [
    ("read_only_output", ["/sys/lrc-probe/out", "is not writable"]),
    ("teacher_without_config", ["has no config.json", "expected a Hugging Face model directory"]),
    ("truncated_teacher", ["cannot load the weights of model", "file not fully covered"]),
    ("bad_data_type", ["bad.jsonl:20: no 'input_ids' list"]),
    ("single_token", ["bad.jsonl:7: 'input_ids' has 1 token; a sequence needs at least 2"]),
    ("id_out_of_range", [f"bad.jsonl:3: token id {VOCAB} >= vocab size {VOCAB}"]),
    ("allow_changed_unknown", ["--allow_changed save_steps: not a flag a resume compares"]),
    ("data_max_len_1", ["--data_max_len must be at least 2"]),
])
def test_one_line_errors_write_nothing(assets, tmp_path, capsys, case, needles):
    out = tmp_path / "out"
    over: dict = {}
    if case == "read_only_output":
        out = Path("/sys/lrc-probe/out")  # sysfs refuses new directories, root included
    elif case == "teacher_without_config":
        d = tmp_path / "t"
        d.mkdir()
        (d / "model.safetensors").write_bytes((Path(assets["teacher"]) / "model.safetensors").read_bytes())
        over["raw_model_name"] = str(d)
    elif case == "truncated_teacher":
        over["raw_model_name"] = _truncated_teacher(assets, tmp_path / "t")
    elif case == "bad_data_type":
        over["dataset_name"] = _data_with(tmp_path, 20, '{"input_ids": "abc"}')
    elif case == "single_token":
        over["dataset_name"] = _data_with(tmp_path, 7, '{"input_ids": [5]}')
    elif case == "id_out_of_range":
        over["dataset_name"] = _data_with(tmp_path, 3, json.dumps({"input_ids": [1, VOCAB]}))
    elif case == "allow_changed_unknown":
        over["allow_changed"] = "save_steps"
    elif case == "data_max_len_1":
        over["data_max_len"] = 1
    rc = cli(*argv(base_flags(assets, out, **over)))
    _, said = one_line_error(capsys, rc, 2, *needles)
    assert previous_run_files(out) == []  # no record, checkpoint or final file
    assert "loaded in" not in said  # failed before the teacher loaded


def test_debug_env_prints_the_traceback(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LRC_DEBUG", "1")
    rc = cli(*argv(base_flags(assets, tmp_path / "o", data_max_len=1)))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and errors(err) == ["error: --data_max_len must be at least 2 (one token to "
                                                              "read, one to predict), got 1"]
