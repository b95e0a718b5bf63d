"""Self-describing LRC checkpoints: trainable weights + LRC config + teacher identity.

Layout of a checkpoint directory (a training output dir or a ``checkpoint-N`` dir):

- ``lrc_weights.safetensors``: the projections and student gains only (names of
  ``LRCProjections``, e.g. ``layers.3.q``), with safetensors metadata ``format=pt``,
  ``lrc_config`` (JSON), ``teacher_name_or_path``, ``teacher_config_hash``, ``lrc_format_version``;
- ``lrc_config.json``: the same information, human-readable.

Writes are atomic (``lrc.training.run_dir.atomic_write``: temporary file, fsync, rename), so a crash never
leaves a half-written file under the final name. Official-code checkpoints (``model.zoom.weight`` ...) are read too, with the
variant inferred from the tensor names and shapes (``read_official_state``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lrc.config import LRCConfig
from lrc.errors import LRCError
from lrc.files import atomic_write
from lrc.projections import LRCProjections, official_names

FORMAT_VERSION = "1"
WEIGHTS_NAME = "lrc_weights.safetensors"
"""An LRC checkpoint's trainable tensors (projections and student gains)."""
CONFIG_NAME = "lrc_config.json"
"""The same checkpoint's LRC config and teacher identity, readable."""
_CKPT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory in ``output_dir``, oldest first (unverified)."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name)))


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` directory (None for another name)."""
    m = _CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


class CheckpointError(LRCError, ValueError):
    """A checkpoint is missing, malformed, or inconsistent with what it is used with."""


@dataclass
class TeacherRef:
    """Identity of the teacher a checkpoint was trained against."""

    name_or_path: str
    config_hash: str
    model_type: str
    weights_hash: str = ""
    """``lrc.teacher.weights_fingerprint`` (empty in checkpoints written before it existed)."""

    def to_dict(self) -> dict[str, str]:
        return {"name_or_path": self.name_or_path, "config_hash": self.config_hash, "model_type": self.model_type,
                "weights_hash": self.weights_hash}

    def describe(self) -> str:
        return (f"{self.name_or_path!r} (config {self.config_hash or '?'}, weights {self.weights_hash or '?'})")

    def mismatch(self, other: TeacherRef) -> str | None:
        """Why ``other`` is not this teacher (None if it is). Unrecorded hashes are not compared."""
        if self.config_hash and other.config_hash and self.config_hash != other.config_hash:
            return "another architecture (config hash)"
        if self.weights_hash and other.weights_hash and self.weights_hash != other.weights_hash:
            return "other weights (weights fingerprint)"
        return None


@dataclass
class LRCCheckpoint:
    """What a checkpoint holds."""

    weights: dict[str, torch.Tensor]
    lrc: LRCConfig | None  # None for an official checkpoint before inference
    teacher: TeacherRef | None
    path: Path
    official: bool = False
    core_basis: str = ""
    """``bases_fingerprint`` of the CORE bases it was trained with (mlp_train core; "" otherwise)."""


def save_lrc_checkpoint(directory: str | os.PathLike, projections: LRCProjections, lrc: LRCConfig,
                        teacher: TeacherRef, state_dict: dict[str, torch.Tensor] | None = None,
                        core_basis: str = "") -> Path:
    """Write ``lrc_weights.safetensors`` and ``lrc_config.json`` into ``directory`` (atomically).

    ``state_dict`` overrides the tensors taken from ``projections`` (e.g. gathered under ZeRO).
    ``core_basis``: the fingerprint of CORE's bases (``LRCModel.core_bases_fingerprint``), if any.
    """
    d = Path(directory)
    sd = state_dict if state_dict is not None else projections.state_dict()
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    meta = {
        "format": "pt",
        "lrc_format_version": FORMAT_VERSION,
        "lrc_config": lrc.to_json(),
        "teacher_name_or_path": teacher.name_or_path,
        "teacher_config_hash": teacher.config_hash,
        "teacher_model_type": teacher.model_type,
        "teacher_weights_hash": teacher.weights_hash,
    }
    if core_basis:
        meta["core_basis_sha256"] = core_basis
    atomic_write(d / WEIGHTS_NAME, lambda p: save_file(sd, p, metadata=meta))
    info = {"lrc_format_version": FORMAT_VERSION, "lrc": lrc.to_dict(), "teacher": teacher.to_dict()}
    if core_basis:
        info["core_basis_sha256"] = core_basis
    atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(info, indent=2) + "\n"))
    return d / WEIGHTS_NAME


def resolve_weights_file(path: str | os.PathLike) -> Path:
    """Find the weights file of a checkpoint given as a file, a ``checkpoint-N`` dir or a run dir.

    A run directory without final weights falls back to its latest ``checkpoint-N``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {str(p)!r} does not exist")
    if p.is_file():
        return p
    for name in (WEIGHTS_NAME, "model.safetensors"):
        if (p / name).is_file():
            return p / name
    for _, ckpt in reversed(list_checkpoints(p)):
        if (ckpt / WEIGHTS_NAME).is_file():
            return ckpt / WEIGHTS_NAME
    raise CheckpointError(
        f"no {WEIGHTS_NAME} (or official model.safetensors) in {str(p)!r}, and no checkpoint-N sub-directory"
    )


def load_lrc_checkpoint(path: str | os.PathLike) -> LRCCheckpoint:
    """Read weights and self-description; an official-code file comes back with ``official=True``."""
    f = resolve_weights_file(path)
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata() or {}
        weights = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {str(f)!r} as safetensors: {e}") from None
    if "lrc_config" in meta:
        lrc = LRCConfig.from_json(meta["lrc_config"])
        teacher = TeacherRef(meta.get("teacher_name_or_path", ""), meta.get("teacher_config_hash", ""),
                             meta.get("teacher_model_type", ""), meta.get("teacher_weights_hash", ""))
        return LRCCheckpoint(weights, lrc, teacher, f, official=False, core_basis=meta.get("core_basis_sha256", ""))
    if any("zoom" in k or "target_" in k for k in weights):
        return LRCCheckpoint(weights, None, None, f, official=True)
    raise CheckpointError(
        f"{str(f)!r} is neither an LRC checkpoint (no 'lrc_config' metadata) nor an official LRC "
        f"checkpoint (no 'zoom'/'target_' tensors); first keys: {sorted(weights)[:5]}"
    )


def infer_official_variant(weights: dict[str, torch.Tensor]) -> dict:
    """Infer the variant flags of an official checkpoint from its tensor names and shapes."""
    if "model.zoom.weight" not in weights:
        raise CheckpointError("official checkpoint lacks 'model.zoom.weight' (the embedding projection)")
    d_s, _ = weights["model.zoom.weight"].shape
    layers = sorted({int(m.group(1)) for k in weights if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    if not layers:
        raise CheckpointError("official checkpoint holds no layer projections")
    L = layers[0]
    use_all_attn = f"model.layers.{L}.self_attn.zoom_q.weight" in weights
    use_in_out_mlp = f"model.layers.{L}.mlp.zoom_gate.weight" not in weights
    return {
        "target_hidden_size": int(d_s),
        "use_all_attn": use_all_attn,
        "use_in_out_mlp": use_in_out_mlp,
        "tie_word_emb_proj": "zoom_down.weight" not in weights,
        "present_layers": layers,
    }


def official_to_ours(weights: dict[str, torch.Tensor], lrc: LRCConfig, kept_layers: list[int]) -> dict[str, torch.Tensor]:
    """Rename an official state dict to ``LRCProjections`` names; unknown or missing tensors raise."""
    names = official_names(lrc, kept_layers)
    inverse = {v: k for k, v in names.items()}
    unexpected = sorted(k for k in weights if k not in inverse)
    missing = sorted(v for v in names.values() if v not in weights)
    if unexpected or missing:
        raise CheckpointError(_missing_unexpected_msg(missing, unexpected, "official checkpoint"))
    return {inverse[k]: v for k, v in weights.items()}


def _missing_unexpected_msg(missing: list[str], unexpected: list[str], what: str) -> str:
    parts = []
    if missing:
        parts.append(f"missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"unexpected tensor(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    return f"{what} does not match the LRC configuration: " + "; ".join(parts)


def load_into_projections(projections: LRCProjections, weights: dict[str, torch.Tensor], what: str) -> None:
    """Strictly load ``weights`` (our names) into ``projections``; shape or name mismatches raise."""
    own = projections.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise CheckpointError(_missing_unexpected_msg(missing, unexpected, what))
    bad = [f"{k}: {tuple(weights[k].shape)} vs expected {tuple(v.shape)}" for k, v in own.items()
           if tuple(weights[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{what}: tensor shape mismatch: {bad[:4]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(weights[k].to(v.dtype))


def core_basis_note(stored: str, now: str, where: str | os.PathLike) -> str | None:
    """A warning when CORE's bases recomputed now differ from those a checkpoint was trained with (else None).

    The bases are recomputed from the teacher by fp64 SVD. On another machine or library build the
    basis itself can differ, but the projector onto the teacher's space it defines cannot beyond
    rounding, so the student differs by rounding only (lrc.mlp_train).
    """
    if not stored or not now or stored == now:
        return None
    return (f"{where}: the CORE bases recomputed here (fingerprint {now}) are not bitwise those the checkpoint was "
            f"trained with ({stored}): another machine or linear-algebra build. Delta uses only the projector onto "
            f"the teacher's space, which is unique, so the student differs by rounding only")


# Fields of the LRC config that may differ between a checkpoint and the run resuming from it.
_RESUME_FREE_FIELDS = ("logits_chunk_tokens",)


def check_resume_compatible(stored: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume a checkpoint under a different LRC configuration (names the differing fields)."""
    # A field added after the checkpoint was written has its default there (e.g. mlp_train = "lrc").
    defaults = {f.name: f.default for f in dataclasses.fields(LRCConfig) if f.default is not dataclasses.MISSING}
    stored = {**{k: v for k, v in defaults.items() if k in current}, **stored}
    diff = [f"{k}: checkpoint {stored.get(k)!r} vs now {current.get(k)!r}" for k in sorted(set(stored) | set(current))
            if k not in _RESUME_FREE_FIELDS and stored.get(k) != current.get(k)]
    if diff:
        raise CheckpointError(f"cannot resume from {str(where)!r} with a different LRC configuration ({'; '.join(diff)}); "
                              f"use the checkpoint's settings (see its {CONFIG_NAME}), or --load_model_weight_path "
                              f"for a warm start without optimizer state")


# ---------------------------------------------------------------------------------------------- --init_from
INIT_FROM_MATCHED = ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj", "del_layers")
"""LRC config fields a ``--init_from`` source must share with the new run (they fix the tensors' meaning)."""


def init_from_checkpoint(path: str | os.PathLike, projections: LRCProjections, lrc: LRCConfig,
                         kept_layers: list[int], teacher: TeacherRef) -> str:
    """Start a new run from an earlier LRC checkpoint: its projections and gains, new Deltas at zero.

    The paper's two-phase recipe ("Train What You Deploy"): plain LRC for N tokens, then ``mlp_train``
    dense or core for M, with a fresh optimizer at step 0. The source must have the same
    ``INIT_FROM_MATCHED`` fields and teacher (config hash and weights fingerprint), and either plain LRC
    (the Deltas start at 0) or the new run's own ``mlp_train`` (everything is taken). An official-code
    checkpoint counts as plain LRC; its teacher cannot be checked (it records none).

    Returns a one-line description of what was loaded. Raises CheckpointError naming any difference.
    """
    from lrc.projections import DELTAS

    ck = load_lrc_checkpoint(path)
    what = f"--init_from {str(path)!r}"
    if ck.official:
        inferred = infer_official_variant(ck.weights)
        if inferred["present_layers"] != list(kept_layers):
            raise CheckpointError(f"{what}: its layers {inferred['present_layers']} are not this run's kept layers "
                                  f"{list(kept_layers)} (--del_layers differs)")
        src = {k: inferred[k] for k in INIT_FROM_MATCHED if k != "del_layers"}
        src_mode, weights = "lrc", official_to_ours(ck.weights, LRCConfig(**src, del_layers=lrc.del_layers), kept_layers)
    else:
        src, src_mode, weights = ck.lrc.to_dict(), ck.lrc.mlp_train, dict(ck.weights)
        why = ck.teacher.mismatch(teacher) if ck.teacher is not None else None
        if why:
            raise CheckpointError(f"{what} was trained against teacher {ck.teacher.describe()}, but this run's teacher "
                                  f"{teacher.describe()} has {why}")
    now = lrc.to_dict()
    diff = [f"{k}: source {src[k]!r} vs this run {now[k]!r}" for k in INIT_FROM_MATCHED if k in src and src[k] != now[k]]
    if diff:
        raise CheckpointError(f"{what} does not fit this run ({'; '.join(diff)}); start it with the source's settings "
                              f"(its {CONFIG_NAME})")
    if src_mode not in ("lrc", lrc.mlp_train):
        raise CheckpointError(f"{what} was trained with mlp_train={src_mode!r}; a new run starts from plain LRC "
                              f"(mlp_train='lrc') or from its own mode ({lrc.mlp_train!r}), not from another "
                              f"mode's Deltas")
    own = projections.state_dict()
    fresh = [k for k in own if k.rsplit(".", 1)[-1] in DELTAS and k not in weights]
    if src_mode == "lrc":
        weights.update({k: torch.zeros_like(own[k]) for k in fresh})
    load_into_projections(projections, weights, what)
    desc = f"projections and gains from {ck.path}" + (" (official-code checkpoint: its teacher is not recorded)"
                                                     if ck.official else "")
    if fresh and src_mode == "lrc":
        desc += f"; {len(fresh)} new mlp_train={lrc.mlp_train} Delta tensors start at 0"
    return desc
