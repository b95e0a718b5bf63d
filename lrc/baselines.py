"""The baselines LRC is compared with, trained by the same trainer (``hf_trainer.py --model_cls``).

Every baseline trains a student (randomly initialised, except ``prune_kd``'s) with exactly the LRC student's architecture
(``lrc.families.student_config``: the config the converter writes for the same flags), so parameter
counts match LRC's converted student:

- ``origin``: ordinary training, next-token CE only.
- ``only_kd``: CE + KL(teacher || student) at temperature tau, reduced like LRC's KL
  (``kl_reduction``), unit weights (docs/METHOD.md §8).
- ``prune_kd``: the Minitron-style baseline: the student starts as the width-pruned teacher (the same
  activation-importance channel selection as LRC's ``proj_init="activation"``, lrc.activation_init,
  loaded by ``hf_trainer``) and trains densely with ``only_kd``'s CE + KL. No projections.
- ``tiny_bert``: ``only_kd`` + sum_i MSE(h_S^(i) M_i^T, h_T^(i)) over the embedding output and the
  input of every layer (learned maps M_i: d_s -> d, N(0, 0.02^2) init), + sum_i MSE(A_S^(i), A_T^(i))
  of the post-softmax attention maps with entries <= 0.01 set to 0 (``attn_loss``; it needs eager
  attention in both models). All MSEs are element means with unit weights (docs/METHOD.md §8).

The teacher is frozen and registered (so ``.to()`` and DDP place it), but it is never in
``trainable_parameters()`` and never in a checkpoint: ``BaselineTrainer`` saves the student as a
standard HF checkpoint (``config.json`` + ``model.safetensors``), plus ``tiny_bert_maps.safetensors``
for resuming ``tiny_bert``. Deliberate differences from the official baselines: the student keeps
the teacher's heads and head_dim (official ``only_kd`` halves the heads, ``tiny_bert`` shrinks
head_dim), so all methods share one architecture; CE and KL are computed in fp32, chunked, as LRC's;
no teacher CE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME as MODEL_WEIGHTS_NAME

from lrc.checkpoint import CheckpointError, check_resume_compatible
from lrc.config import LRCConfig, LRCConfigError
from lrc.families import family_of, student_config
from lrc.files import save_files_atomically
from lrc.losses import clone_distance, fused_logit_losses
from lrc.model import LRCOutput
from lrc.positions import loss_positions

BASELINES = ("origin", "only_kd", "prune_kd", "tiny_bert")
BASELINE_CONFIG_NAME = "baseline_config.json"
"""Written beside a baseline's ``model.safetensors``: the method and its settings."""
MAPS_NAME = "tiny_bert_maps.safetensors"
"""tiny_bert's trainable alignment maps (needed to resume, not to use the student)."""
HIDDEN_TERM = "hidden-mse"
ATTN_TERM = "attn-mse"


@dataclass
class BaselineConfig:
    """A baseline run: the method, and the LRC config that fixes the student architecture and the KL."""

    method: Literal["origin", "only_kd", "prune_kd", "tiny_bert"]
    """origin (CE only) | only_kd (CE + KL) | prune_kd (CE + KL from the width-pruned teacher) | tiny_bert
    (CE + KL + hidden-state and attention-map MSE)."""
    lrc: LRCConfig
    """Student architecture (``target_hidden_size``, ``del_layers``, ``tie_word_emb_proj``,
    ``target_rms_norm_eps``) and the KL settings (``kl_temperature``, ``kl_reduction``,
    ``use_ntp_loss``, ``use_logits_loss``, ``logits_chunk_tokens``), as for LRC."""
    attn_loss: bool = True
    """tiny_bert: add the attention-map MSE (official). Needs eager attention (S x S maps per layer)."""
    attn_threshold: float = 0.01
    """tiny_bert: attention probabilities <= this are set to 0 before the MSE (official)."""
    map_init_std: float = 0.02
    """tiny_bert: std of the N(0, std^2) init of the maps M_i (HF Linear init of the official code)."""

    def __post_init__(self) -> None:
        if self.method not in BASELINES:
            raise LRCConfigError(f"unknown baseline {self.method!r}; one of {', '.join(BASELINES)}")

    @property
    def uses_teacher(self) -> bool:
        return self.method != "origin"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lrc"] = self.lrc.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


class BaselineModel(nn.Module):
    """A random-init student (+ tiny_bert maps) and the frozen teacher; ``forward -> LRCOutput``."""

    def __init__(self, teacher: PreTrainedModel, cfg: BaselineConfig):
        super().__init__()
        tcfg = teacher.config
        self.family = family_of(tcfg)
        self.logit_softcap = self.family.logit_softcap(tcfg)  # Gemma 2: both models' logits are capped
        cfg.lrc.validate(tcfg)
        self.cfg = cfg
        self.lrc_config = cfg.lrc
        self.teacher = teacher
        teacher.requires_grad_(False)
        teacher.eval()
        self.kept_layers = cfg.lrc.kept_layers(tcfg.num_hidden_layers)
        scfg = student_config(tcfg, cfg.lrc)
        scfg._attn_implementation = tcfg._attn_implementation
        device = teacher.get_input_embeddings().weight.device
        self.student: PreTrainedModel = AutoModelForCausalLM.from_config(scfg, dtype=torch.float32).to(device)
        self.maps = nn.ModuleList()
        if cfg.method == "tiny_bert":
            for _ in self.kept_layers:
                m = nn.Linear(cfg.lrc.target_hidden_size, tcfg.hidden_size, bias=False, device=device)
                nn.init.normal_(m.weight, std=cfg.map_init_std)
                self.maps.append(m)
            if cfg.attn_loss:
                impls = {tcfg._attn_implementation, scfg._attn_implementation}
                if impls != {"eager"}:
                    raise LRCConfigError(f"tiny_bert's attention-map loss needs eager attention in both models "
                                         f"(got {sorted(map(str, impls))}): load the teacher with "
                                         f"attn_implementation='eager', or turn the attention loss off")

    def train(self, mode: bool = True) -> "BaselineModel":
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and the tiny_bert maps (never the teacher)."""
        return list(self.student.parameters()) + list(self.maps.parameters())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, **unused) -> LRCOutput:
        """One baseline step's loss (same conventions as ``LRCModel.forward``).

        Args:
            input_ids: (B, S); attention_mask: (B, S) or None; labels: (B, S) or None (-100: ignored).
        """
        cfg, lrc = self.cfg, self.cfg.lrc
        B, S = input_ids.shape
        pos = loss_positions(input_ids, attention_mask, labels, lrc.kl_reduction)
        tiny = cfg.method == "tiny_bert"
        want_attn = tiny and cfg.attn_loss
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                  output_hidden_states=tiny, output_attentions=want_attn)
        kl_on = cfg.uses_teacher and lrc.use_logits_loss
        t_out = None
        if cfg.uses_teacher:
            with torch.no_grad():
                t_out = self.teacher.get_submodule(self.family.backbone)(**kw)
        s_out = self.student.get_submodule(self.family.backbone)(**kw)
        h_s = s_out.last_hidden_state  # (B, S, d_s)
        u_s = self.student.get_output_embeddings().weight  # (V, d_s)
        loss, ce_sum, kl_sum = fused_logit_losses(
            h_s.reshape(B * S, -1), u_s, pos.targets.reshape(-1),
            h_t=t_out.last_hidden_state.reshape(B * S, -1) if kl_on else None,
            u_t=self.teacher.get_output_embeddings().weight if kl_on else None,
            kl_mask=pos.valid.reshape(-1),
            w_ce=(1.0 if lrc.use_ntp_loss else 0.0) / pos.n_ce,
            w_kl=1.0 / pos.kl_divisor,
            tau=lrc.kl_temperature, chunk_tokens=lrc.logits_chunk_tokens, softcap=self.logit_softcap,
        )
        ce, kl = ce_sum / pos.n_ce, kl_sum / pos.kl_divisor
        results: dict[tuple[int, str], Tensor] = {}
        if tiny:
            for j, L in enumerate(self.kept_layers):  # h^(j): embedding output / input of layer j
                hs = self.maps[j](s_out.hidden_states[j])
                results[(L, HIDDEN_TERM)] = clone_distance(hs, t_out.hidden_states[L].to(hs.dtype), "mseloss",
                                                           pos.mask)
                if want_attn:  # (B, H, S, S); a padded query row does not count
                    a_s = _threshold(s_out.attentions[j], cfg.attn_threshold)
                    a_t = _threshold(t_out.attentions[L], cfg.attn_threshold).to(a_s.dtype)
                    rows = None if pos.mask is None else pos.mask[:, None, :].expand(a_s.shape[:3])
                    results[(L, ATTN_TERM)] = clone_distance(a_s, a_t, "mseloss", rows)
        clone = sum(results.values()) if results else h_s.new_zeros((), dtype=torch.float32)
        if results:
            loss = loss + clone
        return LRCOutput.from_results(loss, ce, kl, clone, results)


def _threshold(a: Tensor, thr: float) -> Tensor:
    """Attention probabilities (B, H, S, S) with entries <= thr set to 0."""
    return a.masked_fill(a <= thr, 0.0)


# ---------------------------------------------------------------------------------------------- checkpoints
def save_baseline_checkpoint(directory: str | Path, model: BaselineModel, state_dict: dict[str, Tensor],
                             tokenizer=None) -> None:
    """Write the student (standard HF files), ``baseline_config.json``, tiny_bert's maps and the tokenizer
    (if given) into ``directory``, each file atomically (``lrc.files.save_files_atomically``)."""
    from safetensors.torch import save_file

    student_sd = {k[len("student."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("student.")}
    maps_sd = {k[len("maps."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("maps.")}

    def write(tmp: Path) -> None:
        model.student.save_pretrained(tmp, state_dict=student_sd)
        if maps_sd:
            save_file(maps_sd, str(tmp / MAPS_NAME), metadata={"format": "pt"})
        (tmp / BASELINE_CONFIG_NAME).write_text(model.cfg.to_json())
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    save_files_atomically(directory, write)


def load_baseline_checkpoint(directory: str | Path, model: BaselineModel) -> None:
    """Restore a baseline's student (and maps) from a checkpoint written by ``save_baseline_checkpoint``.

    Strict: the method, the student architecture and every tensor name and shape must match.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / MODEL_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"cannot resume from {str(d)!r}: no {MODEL_WEIGHTS_NAME} in it (not a baseline checkpoint)")
    cfg_file = d / BASELINE_CONFIG_NAME
    if cfg_file.is_file():
        stored = json.loads(cfg_file.read_text())
        current = model.cfg.to_dict()
        diff = [k for k in ("method", "attn_loss") if stored.get(k) != current.get(k)]
        if diff:
            raise CheckpointError(f"cannot resume from {str(d)!r}: it was trained with "
                                  + ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
                                  + " but this run has " + ", ".join(f"{k}={current.get(k)!r}" for k in diff))
        check_resume_compatible(stored.get("lrc", {}), current["lrc"], d)
    _load_strict(model.student, load_file(str(d / MODEL_WEIGHTS_NAME)), f"{d / MODEL_WEIGHTS_NAME}", tied_ok=True)
    if len(model.maps):
        if not (d / MAPS_NAME).is_file():
            raise CheckpointError(f"cannot resume tiny_bert from {str(d)!r}: {MAPS_NAME} is missing")
        _load_strict(model.maps, load_file(str(d / MAPS_NAME)), f"{d / MAPS_NAME}")


def load_student_weights(directory: str | Path, model: BaselineModel) -> None:
    """Start ``model``'s student from the standard HF model in ``directory`` (``lrc convert``'s output, or any
    checkpoint of exactly the student's architecture): one ``model.safetensors``, every tensor name and shape
    matching (one-line ``CheckpointError`` otherwise)."""
    from safetensors.torch import load_file

    d = Path(directory)
    f = d / MODEL_WEIGHTS_NAME
    if not f.is_file():
        raise CheckpointError(f"--init_from {str(d)!r}: no {MODEL_WEIGHTS_NAME} in it (expected a standard HF model "
                              f"directory with one safetensors file, e.g. lrc convert's output)")
    _load_strict(model.student, load_file(str(f)), f"--init_from {f}", tied_ok=True)


def _load_strict(module: torch.nn.Module, sd: dict[str, Tensor], what: str, tied_ok: bool = False) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    if tied_ok and getattr(module.config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = sorted(set(sd) - set(own))
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{what} does not fit this run's model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatch {bad[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
