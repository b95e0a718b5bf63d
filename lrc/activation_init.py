"""Activation-aware initialisation (``proj_init="activation"``): the student starts as the width-pruned teacher.

RED (arXiv 2605.29327) initialises LRC-style projections as channel selections chosen from activation
statistics; Minitron (NVIDIA) prunes a model's width by the same kind of importance. Here:

1. **Importance** (``channel_importance``): the teacher runs on a few thousand calibration tokens; every
   RMSNorm whose output the layers read (each kept layer's norms before attention and before the MLP, the
   family's ``reader_norms``, and the final norm) reports its output, and channel i scores the mean over tokens of its squared value, summed over those
   norms. The normed stream is what every downstream matrix reads (gains included), so this scores
   what the network uses rather than raw residual magnitudes; squaring, Minitron's choice among its
   mean / L2 aggregations, keeps the few large-magnitude channels that carry much of the signal.
   Padding is excluded; sums run in fp64.
2. **One global selection** (``select_channels``): the top d_s channels, in increasing channel order, ties
   broken by the lower index. It must be global because every layer reads and writes the same residual
   stream.
3. **Projections** (``apply_channel_selection``): every projection becomes that selection (S, d x d_s,
   S[c_j, j] = 1, stored in each tensor's own layout), the student's RMSNorm gains become the teacher's at
   the selected channels, Deltas stay zero. The generated student is then exactly the teacher with the
   other d - d_s residual channels removed (its RMSNorms normalise over the kept channels): for q, k, v,
   gate and up ``W_T S`` keeps the selected input columns, for o and down ``S^T W_T`` (and ``S^T b``) the
   selected output rows, for the embedding and head the selected columns. Tested against a hand-pruned
   teacher.

Deterministic: the same teacher and calibration tokens give the same channels (recorded in the run's
``run_config.json``, hence in every checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from lrc.families import family_of
from lrc.projections import IN_SIDE_D_BY_DS, LRCProjections


@torch.no_grad()
def channel_importance(teacher, batches: Iterable[tuple[Tensor, Tensor | None]], kept_layers: list[int],
                       max_tokens: int) -> tuple[Tensor, int]:
    """(importance (d,) float64, tokens used): mean squared output of the residual stream's RMSNorms, summed
    over the norms of the kept layers and the final norm.

    ``batches``: ``(input_ids (B, S), attention_mask (B, S) or None)``; stops at the first whole sequence that
    brings the count of real tokens to ``max_tokens``."""
    d = teacher.config.hidden_size
    family = family_of(teacher.config)
    total = torch.zeros(d, dtype=torch.float64)
    state = {"mask": None}
    norms = [teacher.get_submodule(family.final_norm)]
    for L in kept_layers:
        layer = teacher.get_submodule(f"{family.layers}.{L}")
        norms += [layer.get_submodule(n) for n in family.reader_norms]

    def hook(mod, args, out):
        x = out.detach().double()
        m = state["mask"]
        if m is not None:
            x = x * m[..., None]
        total.add_(x.square().sum(dim=(0, 1)).cpu())

    handles = [n.register_forward_hook(hook) for n in norms]
    seen = 0
    try:
        for ids, mask in batches:
            if seen >= max_tokens:
                break
            counts = mask.sum(1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])
            rows = min(int((counts.cumsum(0) < max_tokens - seen).sum()) + 1, ids.shape[0])  # whole sequences
            ids, mask = ids[:rows], None if mask is None else mask[:rows]
            device = teacher.get_input_embeddings().weight.device
            ids = ids.to(device)
            mask = None if mask is None else mask.to(device)
            state["mask"] = None if mask is None else mask.double()
            teacher.get_submodule(family.backbone)(input_ids=ids, attention_mask=mask, use_cache=False)
            seen += int(ids.numel() if mask is None else mask.sum())
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("activation-aware initialisation: the calibration data holds no tokens")
    return total / seen, seen


def select_channels(importance: Tensor, d_s: int) -> list[int]:
    """The ``d_s`` most important channels, ascending; ties go to the lower index (stable sort)."""
    order = torch.sort(-importance, stable=True).indices[:d_s]
    return sorted(int(i) for i in order)


@torch.no_grad()
def apply_channel_selection(proj: LRCProjections, channels: list[int], teacher,
                            tensors: Mapping[str, Tensor] | None = None) -> None:
    """Set every projection to the channel selection and every gain to the teacher's gain at those channels.

    ``tensors``: the teacher's tensors by name (None: its ``named_parameters``; a sharded teacher's
    ``TeacherUnits.one_at_a_time`` view, read in the same order on every rank)."""
    d, d_s = proj.d, proj.d_s
    family = family_of(teacher.config)
    if len(channels) != d_s or len(set(channels)) != d_s or not all(0 <= c < d for c in channels):
        raise ValueError(f"need {d_s} distinct channels in [0, {d}), got {len(channels)}")
    idx = torch.tensor(channels)
    for name, p in proj.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in proj.gains or name == "final_norm":
            continue
        if p.dim() != 2 or leaf.endswith("_delta"):
            continue
        sel = torch.zeros(d, d_s, dtype=p.dtype, device=p.device)
        sel[idx, torch.arange(d_s)] = 1.0
        p.copy_(sel if leaf in IN_SIDE_D_BY_DS else sel.t())

    tensors = dict(teacher.named_parameters()) if tensors is None else tensors

    def gain(norm: str) -> Tensor:  # the gain the norm applies (Gemma stores gain - 1)
        w = tensors[f"{norm}.weight"].detach()
        return family.gain_from_stored(w[idx.to(w.device)])

    proj.final_norm.copy_(gain(family.final_norm))
    for L, layer in proj.layers.items():
        for norm, name in family.gains.items():
            getattr(layer, name).copy_(gain(f"{family.layers}.{L}.{norm}"))


def dataset_batches(dataset, batch_size: int = 8) -> Iterable[tuple[Tensor, Tensor | None]]:
    """``(input_ids, attention_mask or None)`` batches of a training dataset, in order (``lrc.data.datasets`` items)."""
    from lrc.data.datasets import collate_batch

    for start in range(0, len(dataset), batch_size):
        batch = collate_batch([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        yield batch["input_ids"], batch.get("attention_mask")


def initialise_from_activations(model, dataset, calib_tokens: int) -> dict:
    """Calibrate on ``dataset`` (its first ``calib_tokens`` real tokens, whole sequences) and set ``model``'s
    projections to the width-pruned teacher. Returns what to record: the channels and the tokens used."""
    importance, seen = channel_importance(model.teacher, dataset_batches(dataset), model.kept_layers, calib_tokens)
    channels = select_channels(importance, model.lrc_config.target_hidden_size)
    with model.teacher_tensors() as tensors:
        apply_channel_selection(model.projections, channels, model.teacher, tensors)
    return {"channels": channels, "calib_tokens": seen}


@torch.no_grad()
def pruned_teacher_weights(teacher, lrc, channels: list[int], student_param_names: list[str]) -> dict[str, Tensor]:
    """The width-pruned teacher's weights under the student's HF names (fp32): LRC's generation with the
    channel-selection projections, so they are exactly the student ``proj_init="activation"`` starts from."""
    from lrc.families import is_tied
    from lrc.generate import generate_student_weights

    tcfg = teacher.config
    family = family_of(tcfg)
    kept = lrc.kept_layers(tcfg.num_hidden_layers)
    with torch.device("cpu"):
        proj = LRCProjections(tcfg.hidden_size, lrc.target_hidden_size, kept, lrc, gains=family.gain_names)
    proj = proj.to(teacher.get_input_embeddings().weight.device)
    apply_channel_selection(proj, channels, teacher)
    teacher_params = {n: p.detach() for n, p in teacher.named_parameters()}
    return generate_student_weights(teacher_params, proj, lrc, kept, student_param_names, is_tied(tcfg),
                                    dtype=torch.float32, family=family)


def prune_student_from_activations(model, dataset, calib_tokens: int) -> dict:
    """``--model_cls prune_kd``: calibrate like ``initialise_from_activations`` and load the width-pruned teacher
    into ``model.student`` (a ``BaselineModel``'s standard HF student). Returns what to record."""
    importance, seen = channel_importance(model.teacher, dataset_batches(dataset), model.kept_layers, calib_tokens)
    channels = select_channels(importance, model.lrc_config.target_hidden_size)
    names = [n for n, _ in model.student.named_parameters()]
    weights = pruned_teacher_weights(model.teacher, model.lrc_config, channels, names)
    with torch.no_grad():
        for n, p in model.student.named_parameters():
            p.copy_(weights[n])
    return {"channels": channels, "calib_tokens": seen}
