"""Converted tiny students for tests of what happens after training (evaluation, SFT, serving)."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import randomize_projections, save_teacher, tiny_teacher
from transformers import AutoModelForCausalLM

from lrc.after.convert import convert_checkpoint
from lrc.checkpoint import TeacherRef, save_lrc_checkpoint
from lrc.config import LRCConfig
from lrc.model import LRCModel
from lrc.teacher import teacher_fingerprint


def lrc_checkpoint(tmp: Path, family: str = "llama", tied: bool = True, seed: int = 1,
                   **lrc_kw) -> tuple[Path, LRCModel]:
    """Save a tiny teacher under ``tmp/teacher`` and an LRC checkpoint with random projections under ``tmp/run``."""
    teacher_dir = save_teacher(tiny_teacher(family, tied), tmp / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, target_rms_norm_eps=1e-5, **lrc_kw)
    model = LRCModel(teacher, lrc)
    randomize_projections(model, seed)
    ref = TeacherRef(teacher_dir, teacher_fingerprint(teacher.config), teacher.config.model_type)
    save_lrc_checkpoint(tmp / "run", model.projections, lrc, ref)
    return tmp / "run", model


def converted_student(tmp: Path, family: str = "llama", tied: bool = True, **convert_kw) -> Path:
    """A converted tiny student directory (standard HF checkpoint + tokenizer) at ``tmp/student``."""
    run, _ = lrc_checkpoint(tmp, family, tied)
    return convert_checkpoint(str(run), str(tmp / "student"), **convert_kw)
