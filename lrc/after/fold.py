"""The student folded from a checkpoint: the projections loaded, each student tensor generated from the teacher
tensors it reads and stored in the output dtype (``build_student``, used by ``lrc.after.convert``).

A teacher directory of safetensors files is read a few tensors at a time (``lrc.tensor_files.TensorFiles``), so
converting needs memory for the student, not for the teacher: a run against a 70B teacher converts on a host that
cannot hold the teacher. The student is allocated uninitialised in the output dtype (never whole in fp32); each
tensor is generated in fp32 by ``lrc.generate.generate_student_weights``, the function training uses, then stored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from lrc.after.convert_checks import ConversionError
from lrc.checkpoint import (
    TeacherRef,
    core_basis_note,
    infer_official_variant,
    load_into_projections,
    load_lrc_checkpoint,
    official_to_ours,
)
from lrc.config import LRCConfig
from lrc.families import family_of, is_tied, student_config
from lrc.generate import generate_student_weights
from lrc.mlp_train import bases_fingerprint, core_bases
from lrc.projections import LRCProjections
from lrc.teacher import (
    TeacherError,
    allocate,
    empty_causal_lm,
    load_teacher,
    load_teacher_config,
    teacher_fingerprint,
    weights_fingerprint,
)
from lrc.tensor_files import TensorFiles

log = logging.getLogger(__name__)


def build_student(ckpt_path: str, raw_model_name: str | None = None, flags: dict[str, Any] | None = None,
                  ckpt=None, dtype: torch.dtype = torch.float32):
    """Return (the student, a standard HF model in ``dtype``; teacher path; LRC config) for a checkpoint (``ckpt``: the
    ``LRCCheckpoint`` of ``ckpt_path`` when already loaded).

    Each student tensor is generated in fp32 by ``lrc.generate.generate_student_weights``, the function training
    uses, from the teacher tensors it reads, and stored in ``dtype``. A teacher directory of safetensors files is
    read a few tensors at a time (``lrc.tensor_files.TensorFiles``): the host needs memory for the student, not for
    the teacher. Other teachers (a ``.gguf``) are loaded whole, in fp32.
    """
    ckpt = ckpt if ckpt is not None else load_lrc_checkpoint(ckpt_path)
    lrc = resolve_config(ckpt, flags or {})
    teacher_path = teacher_path_of(ckpt, raw_model_name)
    tcfg = load_teacher_config(teacher_path)
    if ckpt.teacher is not None:
        now = TeacherRef(teacher_path, teacher_fingerprint(tcfg), tcfg.model_type,
                         weights_fingerprint(teacher_path) if ckpt.teacher.weights_hash else "")
        why = ckpt.teacher.mismatch(now)
        if why:
            raise ConversionError(f"teacher mismatch: {ckpt.path} was trained against teacher "
                                  f"{ckpt.teacher.describe()}, but {now.describe()} has {why}")
    lrc.validate(tcfg)
    family = family_of(tcfg)
    kept = lrc.kept_layers(tcfg.num_hidden_layers)
    tensors = _teacher_tensors(teacher_path, tcfg)
    proj = LRCProjections(tcfg.hidden_size, lrc.target_hidden_size, kept, lrc, intermediate=tcfg.intermediate_size,
                          gains=family.gain_names).float()
    weights = official_to_ours(ckpt.weights, lrc, kept) if ckpt.official else ckpt.weights
    load_into_projections(proj, weights, f"checkpoint {str(ckpt.path)!r}")
    bases = core_bases(tensors, kept, family) if lrc.mlp_train == "core" else None
    note = core_basis_note(ckpt.core_basis, bases_fingerprint(bases) if bases else "", ckpt.path)
    if note:
        log.warning(note)
    student = fold(tensors, proj, lrc, tcfg, bases, dtype)
    return student, teacher_path, lrc


def _teacher_tensors(teacher_path: str, tcfg) -> Mapping[str, torch.Tensor]:
    """The teacher's tensors by name, in fp32: read a few at a time from its safetensors files when it has them and
    they hold every tensor its config needs, else the whole teacher loaded."""
    names = {n for n, _ in empty_causal_lm(tcfg).named_parameters()}
    if is_tied(tcfg):  # the head is the embedding (a meta-built model may list it apart)
        names.discard(f"{family_of(tcfg).head}.weight")
    try:
        files = TensorFiles(teacher_path, torch.float32)
        if names <= set(files):
            return files
    except TeacherError:
        pass  # a .gguf, or pickled weights: the loader below reads (or refuses) them
    return {n: p.detach() for n, p in load_teacher(teacher_path, dtype=torch.float32).named_parameters()}


@torch.no_grad()
def fold(tensors: Mapping[str, torch.Tensor], proj: LRCProjections, lrc: LRCConfig, tcfg, bases,
         dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The student as a standalone HF model in ``dtype``: each of its tensors generated in fp32 from the teacher's
    ``tensors`` and the projections, then stored (the model is allocated uninitialised, never in fp32 whole)."""
    student = empty_causal_lm(student_config(tcfg, lrc), dtype)
    allocate(student, "cpu")
    student.tie_weights()
    family = family_of(tcfg)
    kept = lrc.kept_layers(tcfg.num_hidden_layers)
    for name, p in student.named_parameters():
        w = generate_student_weights(tensors, proj, lrc, kept, [name], is_tied(tcfg), torch.float32,
                                     core_bases=bases, family=family)[name]
        p.copy_(w)
    return student.eval()


def _normalise(name: str, v: Any) -> Any:
    if name in ("use_all_attn", "use_in_out_mlp", "tie_word_emb_proj"):
        return bool(v)
    if name == "del_layers":
        return LRCConfig(target_hidden_size=1, del_layers=v).del_layers
    if name == "target_rms_norm_eps":
        return float(v)
    return v


def resolve_config(ckpt, flags: dict[str, Any]) -> LRCConfig:
    """The LRC config of a checkpoint, with user flags checked (ours) or applied (official)."""
    flags = {k: _normalise(k, v) for k, v in flags.items() if v is not None}
    if not ckpt.official:
        stored = ckpt.lrc.to_dict()
        for k, v in flags.items():
            have = _normalise(k, stored[k])
            if have != v:
                raise ConversionError(
                    f"--{k.replace('_', '-')}={v!r} contradicts the checkpoint's stored {k}={have!r} "
                    f"({ckpt.path}); drop the flag, the checkpoint describes itself"
                )
        return ckpt.lrc
    inferred = infer_official_variant(ckpt.weights)
    for k in ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj"):
        if k in flags and flags[k] != inferred[k]:
            raise ConversionError(
                f"--{k.replace('_', '-')}={flags[k]!r} contradicts the official checkpoint's tensors, "
                f"which imply {k}={inferred[k]!r} ({ckpt.path})"
            )
    kw = {k: inferred[k] for k in ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj")}
    for k in ("target_rms_norm_eps", "del_layers"):
        if k in flags:
            kw[k] = flags[k]
    return LRCConfig(**kw)


def teacher_path_of(ckpt, raw_model_name: str | None) -> str:
    """The teacher to fold against: ``--raw-model-name``, else the path stored in the checkpoint (which must still
    exist: a moved teacher is named as such, with the flag to pass)."""
    if raw_model_name:
        return raw_model_name
    stored = ckpt.teacher.name_or_path if ckpt.teacher else None
    if not stored:
        raise ConversionError(f"{ckpt.path} is an official-code checkpoint: pass --raw-model-name TEACHER")
    if os.path.isabs(stored) and not os.path.exists(stored):
        raise ConversionError(f"the teacher path stored in {ckpt.path}, {stored!r}, does not exist (moved or deleted?): "
                              f"pass --raw-model-name with its new path (it is checked against the checkpoint's "
                              f"teacher fingerprints)")
    return stored
