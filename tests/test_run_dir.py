"""The run-directory contract without training: file names, atomic writes, manifests, the lock, the
resume plan and flag comparison, the data position after a batch-geometry change, weights-only loads."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrc.checkpoint import CheckpointError, TeacherRef
from lrc.errors import RunDirError
from lrc.files import MANIFEST_NAME, atomic_write, verify_manifest, write_json_atomic, write_manifest
from lrc.training.lock import RunLock
from lrc.training.record import run_record
from lrc.training.resume import CHECKED_FLAGS, DataPosition, compare_records, data_position, plan_resume
from lrc.training.run_dir import (
    RUN_RECORD_NAME,
    WEIGHTS_NAME,
    check_output_dir,
    finished_step,
    newest_complete_checkpoint,
    publish_checkpoint,
    unpickler_refusal,
    verify_checkpoint,
    weights_only_loads,
    write_final_outputs,
)


def test_file_names_are_transformers_own():
    import transformers.trainer as hf
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    import lrc.training.run_dir as rd

    assert (rd.TRAINER_STATE_NAME, rd.OPTIMIZER_NAME, rd.SCHEDULER_NAME) == \
        (hf.TRAINER_STATE_NAME, hf.OPTIMIZER_NAME, hf.SCHEDULER_NAME)
    assert rd.MODEL_WEIGHTS_NAME == "model.safetensors" and PREFIX_CHECKPOINT_DIR == "checkpoint"


# ---------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "f.json"
    write_json_atomic(p, {"a": 1})

    def fail(tmp: str) -> None:
        Path(tmp).write_text('{"a": 2, "half')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(p, fail)
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- manifests
def _checkpoint(root: Path, step: int) -> Path:
    staged = root / ".staging" / f"checkpoint-{step}"
    (staged / "global_step3").mkdir(parents=True)
    (staged / "a.bin").write_bytes(b"a" * 100)
    (staged / "global_step3" / "b.pt").write_bytes(b"b" * 10)
    publish_checkpoint(staged, root / f"checkpoint-{step}", step)
    return root / f"checkpoint-{step}"


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "a.bin").unlink(), "a.bin is missing"),
    (lambda c: (c / "a.bin").write_bytes(b"a" * 99), "a.bin has 99 bytes"),
    (lambda c: (c / "a.bin").write_bytes(b"x" * 100), "a.bin does not match its sha256"),
    (lambda c: (c / "global_step3" / "evil.pt").write_bytes(b"x"), "evil.pt is not in the manifest"),
    (lambda c: (c / MANIFEST_NAME).unlink(), "no lrc_manifest.json"),
    (lambda c: (c / MANIFEST_NAME).write_text("{garbage"), "not valid JSON"),
])
def test_manifest_detects_every_kind_of_damage(tmp_path, damage, reason):
    c = _checkpoint(tmp_path, 3)
    assert verify_checkpoint(c) is None
    damage(c)
    problem = verify_checkpoint(c)
    assert problem is not None and reason in problem


def test_newest_complete_checkpoint_skips_and_names_damaged_ones(tmp_path):
    _checkpoint(tmp_path, 3)
    c6 = _checkpoint(tmp_path, 6)
    (c6 / "a.bin").unlink()
    (tmp_path / "checkpoint-9").mkdir()  # a directory with nothing: e.g. an older version's half-copy
    found, skipped = newest_complete_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint-3"
    assert [(p.name, why.split(" ")[0]) for p, why in skipped] == [("checkpoint-9", "no"), ("checkpoint-6", "a.bin")]


def test_final_outputs_and_finished_step(tmp_path):
    c = _checkpoint(tmp_path, 6)
    for name in ("optimizer.pt", "rng_state.pth", "trainer_state.json"):  # resume-only files: not final outputs
        (c / name).write_text("x")
    write_manifest(c, 6)
    write_json_atomic(tmp_path / RUN_RECORD_NAME, {"x": 1})
    files = write_final_outputs(tmp_path, c, lambda p: Path(p).write_text("{}"))
    assert files == ["a.bin", "trainer_state.json", RUN_RECORD_NAME]
    assert os.path.samefile(tmp_path / "a.bin", c / "a.bin")  # hard-linked, not copied
    assert finished_step(tmp_path) == 6
    (tmp_path / "trainer_state.json").write_text("changed")
    assert finished_step(tmp_path) is None
    assert verify_manifest(tmp_path) == "trainer_state.json has 7 bytes, the manifest says 2"


# ---------------------------------------------------------------------------------------------- output dir, lock
def test_check_output_dir_reports_unwritable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a directory"):
        check_output_dir(f)
    with pytest.raises(RunDirError, match="is not writable"):
        check_output_dir(f / "sub")
    assert check_output_dir(tmp_path / "new") > 0 and (tmp_path / "new").is_dir()


LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from lrc.training.lock import RunLock
lock = RunLock({out!r}).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_lock_refuses_a_second_holder_and_replaces_a_dead_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    script = LOCK_HOLDER.format(repo=str(Path(__file__).resolve().parents[1]), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError) as e:
            RunLock(out).acquire()
        assert f"pid {proc.pid}" in str(e.value) and "is in use by another run" in str(e.value)
    finally:
        proc.kill()
        proc.wait()
    with RunLock(out) as lock:  # the holder was killed: its kernel lock went with it
        assert lock.stale_holder is not None and lock.stale_holder.pid == proc.pid
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            RunLock(out).acquire()  # a second lock in the same process is refused too
    with RunLock(out) as lock:  # released cleanly: nothing stale
        assert lock.stale_holder is None


# ---------------------------------------------------------------------------------------------- resume plan
def _record(**flags) -> dict:
    base = dict(learning_rate=1e-4, lr_scheduler="linear", warmup_ratio=0.005, warmup_steps=None, adam_beta2=0.999,
                max_grad_norm=1.0, bf16=False, batch_size=4, gradient_accumulation_steps=1, dataset_name="/d",
                data_max_len=32, text_field="text", seed=42, num_epochs=1, max_steps=10, model_cls="distill",
                save_steps=5, log_steps=1)
    base.update(flags)
    from lrc.training.config import TrainConfig

    bf16 = base.pop("bf16")
    cfg = TrainConfig.from_flags({**base, "raw_model_name": "/t", "output_dir": "/o", "target_hidden_size": 32})
    return run_record(cfg, 1, TeacherRef("/t", "c1", "llama", "w1"), bf16)


def test_compare_records_names_each_checked_flag():
    a = _record()
    assert compare_records(a, _record(save_steps=7, log_steps=3, max_steps=99)) == []  # free to change
    changed = compare_records(a, _record(learning_rate=5e-4, batch_size=8, seed=1))
    assert [c.name for c in changed] == ["learning_rate", "batch_size", "seed"]
    assert changed[0].describe() == "--learning_rate 0.0005 (checkpoint: 0.0001)"
    assert [c.name for c in compare_records(a, _record(num_epochs=3))] == []  # --max_steps decides the length
    assert [c.name for c in compare_records(_record(max_steps=-1), _record(max_steps=-1, num_epochs=3))] == ["num_epochs"]
    assert set(CHECKED_FLAGS) >= {"learning_rate", "lr_scheduler", "warmup_ratio", "batch_size", "world_size",
                                  "gradient_accumulation_steps", "dataset_name", "data_max_len", "seed"}


def test_plan_resume_rules(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    assert plan_resume(out, "auto", False, _record(), set()).checkpoint is None  # empty: a fresh start
    (out / RUN_RECORD_NAME).write_text("{}")  # the record of a start killed before its first checkpoint
    assert plan_resume(out, "auto", False, _record(), set()).checkpoint is None  # nothing of value: a fresh start
    assert plan_resume(out, None, False, _record(), set()).checkpoint is None
    (out / WEIGHTS_NAME).write_bytes(b"x")  # final weights: a run's work
    with pytest.raises(RunDirError, match="holds files of a run .* but no complete checkpoint"):
        plan_resume(out, "auto", False, _record(), set())
    with pytest.raises(RunDirError, match="already holds a run"):
        plan_resume(out, None, False, _record(), set())
    assert plan_resume(out, None, True, _record(), set()).checkpoint is None  # --overwrite_output_dir
    assert plan_resume(out, "auto", True, _record(), set()).checkpoint is None  # nothing to resume: start over
    c = _checkpoint(out, 5)
    write_json_atomic(c / RUN_RECORD_NAME, _record())
    write_manifest(c, 5)
    plan = plan_resume(out, "auto", False, _record(), set())
    assert plan.checkpoint == str(c) and plan.step == 5 and plan.finalize_from is None
    assert plan_resume(out, "auto", True, _record(), set()).checkpoint == str(c)  # the demo: resume wins
    with pytest.raises(CheckpointError, match=r"--learning_rate 0.0005 \(checkpoint: 0.0001\).*--allow_changed "
                                              r"learning_rate"):
        plan_resume(out, "auto", False, _record(learning_rate=5e-4), set())
    plan = plan_resume(out, "auto", False, _record(learning_rate=5e-4), {"learning_rate"})
    assert plan.changed == {"learning_rate"} and plan.record["changed_on_resume"][0]["to"] == 5e-4
    other = _record()
    other["teacher"]["weights_hash"] = "w2"
    with pytest.raises(CheckpointError, match="other weights"):
        plan_resume(out, "auto", False, other, {"learning_rate"})
    assert plan_resume(out, "auto", False, _record(max_steps=5), set()).finalize_from == str(c)  # at --max_steps
    with pytest.raises(CheckpointError, match="is not a complete checkpoint: no lrc_manifest"):
        (c / MANIFEST_NAME).unlink()
        plan_resume(out, str(c), False, _record(), set())


@pytest.mark.parametrize("old, new, expected", [
    ((4, 1, 1), (4, 1, 1), DataPosition(0, 3, 0)),     # unchanged: HF's own position (3 steps of 4)
    ((4, 1, 1), (8, 1, 1), DataPosition(0, 1, 4)),     # 12 samples seen: one batch of 8, 4 seen again
    ((4, 1, 1), (2, 2, 1), DataPosition(0, 6, 0)),     # the same 12 samples in micro-batches of 2
    ((2, 1, 2), (4, 1, 1), DataPosition(0, 3, 0)),     # 2 processes x 2 -> 1 process x 4
    ((4, 1, 1), (16, 1, 2), DataPosition(0, 0, 12)),   # less than one new step: start of the epoch again
])
def test_data_position_counts_samples(old, new, expected):
    stored = _record(batch_size=old[0], gradient_accumulation_steps=old[1])
    stored["world_size"], stored["train_sequences"] = old[2], 96
    assert data_position(stored, 3, *new, n_sequences=96) == expected


def test_data_position_crosses_into_the_next_epoch():
    stored = _record(batch_size=4)
    stored["world_size"], stored["train_sequences"] = 1, 10  # 3 batches per epoch (4, 4, 2)
    assert data_position(stored, 4, 4, 1, 1, 10) == DataPosition(1, 1, 0)
    assert data_position(stored, 2, 8, 1, 1, 10) == DataPosition(0, 1, 0)  # 8 samples: one batch of 8


# ---------------------------------------------------------------------------------------------- loading
def test_weights_only_loads_refuse_code_even_when_asked_not_to(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Planted()}, evil)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "step": 3}, good)
    with weights_only_loads():
        assert torch.load(good, weights_only=False)["step"] == 3
        with pytest.raises(pickle.UnpicklingError) as e:
            torch.load(evil, weights_only=False)  # what DeepSpeed's checkpoint engine asks for
    assert unpickler_refusal(e.value) == "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored
