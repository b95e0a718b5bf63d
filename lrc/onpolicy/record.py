"""An on-policy run's record (``OUT/run_config.json`` and a copy in every checkpoint) and what a resume compares.

The record is ``lrc train``'s format (``lrc.training.record``: ``run_id``, ``lineage``, flags ...) with
``"kind": "onpolicy"``, the student's identity beside the teacher's, and the prompts' identity. A resume is strict:
the teacher and the student (weights fingerprints), the prompts (content) and every flag of
``lrc.onpolicy.options.CHECKED`` must be those of the checkpoint's run; nothing can be allowed to change.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from lrc.checkpoint import CheckpointError, TeacherRef
from lrc.onpolicy.options import CHECKED, OnPolicyOptions
from lrc.training.record import RECORD_FORMAT, dataset_identity, new_lineage, same_dataset
from lrc.training.resume import FlagChange, ResumeRules

KIND = "onpolicy"


def onpolicy_record(opts: OnPolicyOptions, world_size: int, teacher: TeacherRef, student: TeacherRef,
                    bf16: bool) -> dict[str, Any]:
    """The record of an on-policy run (JSON-ready). ``student`` uses ``TeacherRef``'s fields: path, config hash,
    model type, weights fingerprint."""
    run_id = uuid.uuid4().hex[:16]
    return {
        "lrc_run_record": RECORD_FORMAT,
        "kind": KIND,
        "run_id": run_id,
        "lineage": new_lineage(None, 0, run_id),
        "flags": {**opts.to_flags(), "bf16": bf16},
        "world_size": world_size,
        "prompts_identity": dataset_identity(opts.prompts),
        "teacher": teacher.to_dict(),
        "student": student.to_dict(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "resumed_from": None,
        "changed_on_resume": [],
    }


def _refuse_mismatch(stored: dict[str, Any], now: dict[str, Any], where: str) -> None:
    if stored.get("kind") != KIND:
        raise CheckpointError(f"cannot resume from {where}: it was written by lrc {stored.get('kind', 'train')}, not "
                              f"lrc onpolicy")
    for role in ("teacher", "student"):
        old, new = TeacherRef(**stored[role]), TeacherRef(**now[role])
        why = old.mismatch(new)
        if why:
            raise CheckpointError(f"cannot resume from {where}: it was trained with --{role} {old.describe()}, this "
                                  f"run has {new.describe()}: {why}")


def _changes(stored: dict[str, Any], now: dict[str, Any]) -> list[FlagChange]:
    a, b = OnPolicyOptions.from_record(stored), OnPolicyOptions.from_record(now)
    out = [FlagChange(n, getattr(a, n), getattr(b, n)) for n in CHECKED if n not in ("student", "teacher", "prompts")
           and getattr(a, n) != getattr(b, n)]
    if stored.get("world_size") != now.get("world_size"):
        out.append(FlagChange("world_size", stored.get("world_size"), now.get("world_size")))
    if not same_dataset(stored.get("prompts_identity"), now.get("prompts_identity")):
        out.append(FlagChange("prompts", stored.get("prompts_identity"), now.get("prompts_identity")))
    return out


ONPOLICY_RULES = ResumeRules(max_steps=lambda r: OnPolicyOptions.from_record(r).max_steps,
                             refuse_mismatch=_refuse_mismatch,
                             changes=_changes, can_allow=False)
