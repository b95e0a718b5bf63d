"""The LRC method configuration: every knob of Low-Rank Clone in one typed, documented dataclass.

Defaults are the recipe behind the published LRC-1.5B checkpoint (docs/METHOD.md §4.5):
``use_all_attn=True``, ``tie_word_emb_proj=True``, ``use_in_out_mlp=False``, tau = 40, alpha = 0.2,
MSE clone terms, KL summed over tokens and divided by the number of sequences.

The config serialises to JSON (``to_json`` / ``from_json``) and is stored inside every checkpoint,
so conversion needs no flags. ``validate`` rejects contradictions with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from lrc.errors import LRCError

AUX_LOSS_TYPES = ("mseloss", "mseloss_v2", "l1loss", "l1loss_v2", "nmse")
KL_REDUCTIONS = ("sequence_sum", "token_mean")
ATTN_OUT_SPACES = ("teacher", "student")
MLP_TRAIN_MODES = ("lrc", "dense", "core")
PROJ_INITS = ("random", "activation")

# Clone-term names exactly as the official code logs and bans them (docs/METHOD.md §4.1).
ATTN_Q, ATTN_K, ATTN_V = "attn-q-sim-loss", "attn-k-sim-loss", "attn-v-sim-loss"
ATTN_IN, ATTN_OUT = "attn-in-sim-loss", "attn-out-sim-loss"
MLP_GATE, MLP_UP, MLP_IN, MLP_OUT = "mlp-gate-loss", "mlp-up-loss", "mlp-in-loss", "mlp-out-loss"


FLAG_RENAMES = {"ban_losses": "str_ban_losses"}
"""``LRCConfig`` fields whose command-line flag is spelled otherwise (the official ``--str_ban_losses``)."""


def flag_name(field_name: str) -> str:
    """The command-line flag of an ``LRCConfig`` field."""
    return FLAG_RENAMES.get(field_name, field_name)


class LRCConfigError(LRCError, ValueError):
    """A configuration value is invalid or contradicts another value / the teacher."""


@dataclass
class LRCConfig:
    """Low-Rank Clone method configuration (the method: docs/METHOD.md; the code: docs/DESIGN.md)."""

    target_hidden_size: int
    """Student hidden size d_s. Must be smaller than the teacher's hidden size d."""

    use_all_attn: bool = True
    """True: separate input projections for q, k and v ("AllAttn", README recipe, paper Algorithm 1).
    False: one projection shared by q, k and v ("Attn", the official code's default)."""

    use_in_out_mlp: bool = False
    """True: one input projection shared by gate and up, plus an output projection ("OnlyInOutMLP").
    False: separate projections for gate, up and down (README recipe)."""

    tie_word_emb_proj: bool = True
    """True: one projection Z_E serves both the embedding and the LM head (README recipe).
    False: a separate head projection Z_U (the official code's default)."""

    del_layers: tuple[int, ...] = ()
    """Teacher layer indices the student drops (teacher-only layers: no projections, no losses), comma-separated
    on the command line (e.g. 3,7)."""

    ban_losses: tuple[str, ...] = ()
    """Clone-term names that are neither computed nor logged, comma-separated on the command line (e.g.
    ``attn-out-sim-loss``; the official placeholder ``no``: none)."""

    ban_layers: tuple[int, ...] = ()
    """Teacher layer indices whose clone terms are skipped (the student still computes the layer),
    comma-separated on the command line."""

    aux_loss_type: Literal["mseloss", "mseloss_v2", "l1loss", "l1loss_v2", "nmse"] = "mseloss"
    """Distance D of the clone terms. mseloss: mean squared error over all elements; mseloss_v2:
    sum over the feature axis, mean over tokens; l1loss: mean |s-t|; l1loss_v2: sum |s-t| / 50 over
    the feature axis, mean over tokens. nmse (this project's extension, not in the official code):
    relative squared error sum (s-t)^2 / sum t^2 over the batch, so every term starts near 1 and a
    teacher with a few huge activations does not let one term dominate (docs/REPRODUCE_SMALL.md)."""

    aux_loss_scale_factor: float = 0.2
    """alpha: weight of every clone term (plain sum over layers and terms, docs/METHOD.md §4.2). README recipe; the
    official code's default is 1.0."""

    kl_temperature: float = 40.0
    """tau: softmax temperature of KL(teacher || student). No tau^2 factor (as the official code). README recipe;
    the official code's default is 10.0."""

    kl_reduction: Literal["sequence_sum", "token_mean"] = "sequence_sum"
    """sequence_sum: KL summed over tokens, divided by the number of sequences (official code,
    PyTorch ``batchmean``). token_mean: mean over (unmasked) tokens."""

    attn_out_space: Literal["teacher", "student"] = "teacher"
    """Space of the attention-output clone term. teacher: a_S W_o^T vs o_T in width d (official
    code; the output projection gets no gradient from this term). student: o_S vs o_T C_o^T in width
    d_s (paper Algorithm 1; the target is not detached, like the FFN-output term)."""

    use_ntp_loss: bool = True
    """Add the next-token cross-entropy (it is always computed for logging)."""

    use_logits_loss: bool = True
    """Add the KL to the teacher's logits (not computed when False)."""

    use_aux_loss: bool = True
    """Add the clone terms. When False they are still computed, without gradient, for logging."""

    target_rms_norm_eps: float = 1e-5
    """epsilon of the student's RMSNorms (written into the converted student's config)."""

    init_std: float = 0.02
    """Standard deviation of the N(0, std^2) initialisation of every projection (docs/METHOD.md §6)."""

    logits_chunk_tokens: int = 1024
    """Tokens per chunk of the fused head + KL + CE computation, at most (each (chunk, V) fp32 buffer is also capped:
    48 MiB on CPU, 594 MiB on GPU, lrc.losses). Changes memory, not results."""

    mlp_train: Literal["lrc", "dense", "core"] = "lrc"
    """What of each student MLP matrix (gate, up, down) trains (lrc.mlp_train). lrc: only the projections
    (the paper). dense: plus a full zero-initialised Delta (Dense-LRC). core: plus a zero-initialised Delta
    restricted to the orthogonal complement of the teacher's column / row space (CORE-LRC). Both extensions
    come from "Train What You Deploy" (arXiv 2609.02006), not from the official code."""

    proj_init: Literal["random", "activation"] = "random"
    """Where the projections start. random: N(0, init_std^2), gains 1 (the paper and the official code).
    activation: the width-pruned teacher, every projection selecting the d_s residual channels of highest
    activation importance on calibration tokens, the gains the teacher's at those channels
    (lrc.activation_init; RED, arXiv 2605.29327). Applied at step 0 only."""

    def __post_init__(self) -> None:
        # Accept lists / comma strings (CLI, JSON) for the tuple fields.
        self.del_layers = _int_tuple(self.del_layers, "del_layers")
        self.ban_layers = _int_tuple(self.ban_layers, "ban_layers")
        self.ban_losses = _str_tuple(self.ban_losses)
        self.validate()

    # ------------------------------------------------------------------ validation
    def clone_terms(self) -> tuple[str, ...]:
        """Clone-term names of this variant, in computation order (before bans)."""
        attn = (ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT) if self.use_all_attn else (ATTN_IN, ATTN_OUT)
        mlp = (MLP_IN, MLP_OUT) if self.use_in_out_mlp else (MLP_GATE, MLP_UP, MLP_OUT)
        return attn + mlp

    def active_clone_terms(self) -> tuple[str, ...]:
        """Clone-term names computed for a non-banned layer."""
        return tuple(t for t in self.clone_terms() if t not in self.ban_losses)

    def teacher_space_linears(self) -> tuple[str, ...]:
        """The linear kinds (``lrc.families.Family.linear``) whose teacher weight a clone term reads again in the
        student's pass: "o" for attn_out measured in the teacher's space, "down" for mlp_out under use_in_out_mlp
        (a sharded teacher gives these matrices units of their own, ``lrc.sharded_teacher``)."""
        active = self.active_clone_terms()
        return (("o",) if ATTN_OUT in active and self.attn_out_space == "teacher" else ()) + (
            ("down",) if MLP_OUT in active and self.use_in_out_mlp else ())

    def validate(self, teacher_config: Any | None = None) -> "LRCConfig":
        """Check the config on its own and, if given, against a transformers teacher config.

        Raises LRCConfigError naming the offending field and what was expected.
        """
        if not isinstance(self.target_hidden_size, int) or self.target_hidden_size <= 0:
            raise LRCConfigError(f"target_hidden_size must be a positive integer, got {self.target_hidden_size!r}")
        if self.aux_loss_type not in AUX_LOSS_TYPES:
            raise LRCConfigError(f"aux_loss_type must be one of {AUX_LOSS_TYPES}, got {self.aux_loss_type!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise LRCConfigError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}")
        if self.attn_out_space not in ATTN_OUT_SPACES:
            raise LRCConfigError(f"attn_out_space must be one of {ATTN_OUT_SPACES}, got {self.attn_out_space!r}")
        if not self.kl_temperature > 0:
            raise LRCConfigError(f"kl_temperature must be > 0, got {self.kl_temperature!r}")
        if self.aux_loss_scale_factor < 0:
            raise LRCConfigError(f"aux_loss_scale_factor must be >= 0, got {self.aux_loss_scale_factor!r}")
        if not self.target_rms_norm_eps > 0:
            raise LRCConfigError(f"target_rms_norm_eps must be > 0, got {self.target_rms_norm_eps!r}")
        if not self.init_std > 0:
            raise LRCConfigError(f"init_std must be > 0, got {self.init_std!r}")
        if self.proj_init not in PROJ_INITS:
            raise LRCConfigError(f"proj_init must be one of {PROJ_INITS}, got {self.proj_init!r}")
        if self.mlp_train not in MLP_TRAIN_MODES:
            raise LRCConfigError(f"mlp_train must be one of {MLP_TRAIN_MODES}, got {self.mlp_train!r}")
        if self.logits_chunk_tokens <= 0:
            raise LRCConfigError(f"logits_chunk_tokens must be > 0, got {self.logits_chunk_tokens!r}")
        valid = self.clone_terms()
        unknown = [b for b in self.ban_losses if b not in valid]
        if unknown:
            raise LRCConfigError(
                f"ban_losses: unknown clone-term name(s) {unknown} for this variant "
                f"(use_all_attn={self.use_all_attn}, use_in_out_mlp={self.use_in_out_mlp}); valid names: {list(valid)}"
            )
        for name, idx in (("del_layers", self.del_layers), ("ban_layers", self.ban_layers)):
            if len(set(idx)) != len(idx):
                raise LRCConfigError(f"{name} has duplicate layer indices: {list(idx)}")
            if any(i < 0 for i in idx):
                raise LRCConfigError(f"{name} must hold non-negative layer indices, got {list(idx)}")
        if teacher_config is not None:
            d = teacher_config.hidden_size
            n = teacher_config.num_hidden_layers
            if self.target_hidden_size >= d:
                raise LRCConfigError(
                    f"target_hidden_size={self.target_hidden_size} must be smaller than the teacher's hidden_size={d}"
                )
            for name, idx in (("del_layers", self.del_layers), ("ban_layers", self.ban_layers)):
                bad = [i for i in idx if i >= n]
                if bad:
                    raise LRCConfigError(f"{name}: layer index {bad} out of range, the teacher has {n} layers (0..{n - 1})")
            if len(self.del_layers) >= n:
                raise LRCConfigError(f"del_layers removes all {n} teacher layers; keep at least one")
        return self

    def kept_layers(self, num_teacher_layers: int) -> list[int]:
        """Teacher layer indices that become student layers, in order (student layer j = kept[j])."""
        dropped = set(self.del_layers)
        return [i for i in range(num_teacher_layers) if i not in dropped]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("del_layers", "ban_layers", "ban_losses"):
            d[k] = list(d[k])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LRCConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise LRCConfigError(f"unknown LRC config field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "LRCConfig":
        return cls.from_dict(json.loads(s))


def _int_tuple(v: Any, name: str) -> tuple[int, ...]:
    if v is None or v == "" or v == ():
        return ()
    if isinstance(v, int):
        return (v,)
    if isinstance(v, str):
        v = [p for p in v.replace(" ", "").split(",") if p]
    try:
        return tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise LRCConfigError(f"{name} must be a list of integer layer indices, got {v!r}") from None


def _str_tuple(v: Any) -> tuple[str, ...]:
    if v is None or v == "" or v == ():
        return ()
    if isinstance(v, str):
        v = v.split(",")
    out = tuple(str(x).strip() for x in v if str(x).strip())
    # The official CLI's placeholder "no" bans nothing.
    return tuple(x for x in out if x != "no")
