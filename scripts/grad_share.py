#!/usr/bin/env python
"""Which loss term steers an LRC update: per-term gradient norms and directions.

    python scripts/grad_share.py --teacher runs/reproduce_small/teacher_hf \
        --data runs/reproduce_small/train.jsonl --checkpoint runs/reproduce_small/runs/lrc \
        --json_out grad_share.json

For one batch (or the mean over ``--batches``), it computes the gradient of the trainable LRC
parameters (projections + student gains) of each loss component on its own: the CE, the KL, the
weighted clone sum alpha * sum(terms), and each clone-term name alone (alpha * that term, summed over
layers). It reports each gradient's norm, its share of the total gradient's norm, and its cosine
with the total and with the CE + KL gradient (the language-modelling signal). A clone gradient with
a large norm and a cosine near 0 with CE + KL means the update mostly serves the clone terms.

``--checkpoint`` (an LRC run directory, ``checkpoint-N`` directory or ``lrc_weights.safetensors``)
takes the projections from a run; without it they are the N(0, 0.02^2) initialisation and
``--target_hidden_size`` is required. The LRC flags (``--aux_loss_type``, ``--aux_loss_scale_factor``,
``--attn_out_space``, ...) are hf_trainer's; with a checkpoint they default to the ones stored in it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from lrc.cli.options import options, run_command


def _flat_grad(params) -> "torch.Tensor":
    import torch

    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def component_gradients(model, batches: list[dict], base, clone_terms: tuple[str, ...]) -> dict[str, Any]:
    """{component: flat fp32 gradient (mean over batches)} for ce, kl, clone and each clone term, and
    {component: its loss (mean over batches)}."""
    params = model.trainable_parameters()
    only = {
        "ce": dict(use_ntp_loss=True, use_logits_loss=False, use_aux_loss=False),
        "kl": dict(use_ntp_loss=False, use_logits_loss=True, use_aux_loss=False),
        "clone": dict(use_ntp_loss=False, use_logits_loss=False, use_aux_loss=True),
    }
    for t in clone_terms:
        only[t] = dict(use_ntp_loss=False, use_logits_loss=False, use_aux_loss=True,
                       ban_losses=tuple(x for x in clone_terms if x != t) + tuple(base.ban_losses))
    grads, values = {}, {}
    # One forward per component: the fused head returns CE + KL as one autograd node, and the clone
    # terms are summed inside the model, so a component's gradient needs its own loss configuration.
    try:
        for name, change in only.items():
            model.lrc_config = dataclasses.replace(base, **change)
            acc, loss = None, 0.0
            for b in batches:
                for p in params:
                    p.grad = None
                out = model(**b)
                out.loss.backward()
                g = _flat_grad(params)
                acc = g if acc is None else acc.add_(g)
                loss += float(out.loss.detach())
            grads[name] = acc / len(batches)
            values[name] = loss / len(batches)
            print(f"  {name:>18}: loss {values[name]:.4g}  |grad| {grads[name].norm():.4g}", flush=True)
    finally:
        model.lrc_config = base
        for p in params:
            p.grad = None
    return {"grads": grads, "values": values}


def param_groups(model) -> list[tuple[str, int]]:
    """(kind, numel) per trainable tensor in ``trainable_parameters()`` order; kind is the projection
    name without its layer (``q``, ``down``, ``embed``, ``input_norm``, ...)."""
    return [(n.rsplit(".", 1)[-1], p.numel()) for n, p in model.projections.named_parameters()]


def summarize(grads: dict[str, Any], clone_terms: tuple[str, ...],
              groups: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
    """Norms, shares and cosines of each component's gradient (see the module docstring), in float64
    (fp32 dot products over tens of millions of elements are off by about 1e-2), and where each
    gradient goes: the fraction of its squared norm in each kind of projection."""
    import torch

    g64 = {k: v.double() for k, v in grads.items()}
    g64["total"] = g64["ce"] + g64["kl"] + g64["clone"]
    lm = g64["ce"] + g64["kl"]

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))

    rows = {}
    for name in ("ce", "kl", "clone", *clone_terms, "total"):
        g = g64[name]
        sq = g.square()
        where: dict[str, float] = {}
        for (kind, _), part in zip(groups, sq.split([n for _, n in groups])):
            where[kind] = where.get(kind, 0.0) + float(part.sum())
        tot = sum(where.values()) or 1.0
        rows[name] = {"norm": float(g.norm()), "share_of_total_norm": float(g.norm() / g64["total"].norm()),
                      "cos_total": cos(g, g64["total"]), "cos_ce_plus_kl": cos(g, lm), "cos_ce": cos(g, g64["ce"]),
                      "sq_norm_fraction_by_kind": {k: v / tot for k, v in sorted(where.items(), key=lambda x: -x[1])}}
    return rows


@options(group="what to measure, on what")
class GradShareOptions:
    """``scripts/grad_share.py``'s own flags (the LRC method flags follow them)."""

    teacher: str | None = None
    """required: the teacher (HF directory or .gguf)"""
    data: str | None = None
    """required: the batches' data (any format the training reads)"""
    checkpoint: str = ""
    """an LRC run directory, checkpoint-N directory or lrc_weights.safetensors: the projections to measure at
    (default: the N(0, 0.02^2) initialisation; then --target_hidden_size is required)"""
    batches: int = 1
    """batches to average the gradients over"""
    batch_size: int = 4
    """sequences per batch"""
    seq_len: int = 256
    """tokens per sequence"""
    seed: int = 0
    """seed of the initialisation and the batches"""
    json_out: str = ""
    """also write the report to this JSON file"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""


def main(teacher: str, data: str, checkpoint: str = "", batches: int = 1, batch_size: int = 4, seq_len: int = 256,
         seed: int = 0, json_out: str = "", threads: int = 0, **lrc_flags: Any) -> dict:
    """The report (printed, and written to ``json_out``); the arguments are ``GradShareOptions``' fields and
    ``lrc_flags`` are ``lrc train``'s LRC method flags (``lrc.training.flags.MethodFlags``)."""
    import torch

    from lrc.checkpoint import load_into_projections, load_lrc_checkpoint
    from lrc.data.datasets import build_dataset, collate_batch
    from lrc.model import LRCModel
    from lrc.teacher import load_teacher, load_tokenizer
    from lrc.training.parse import parse_method_flags

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ckpt = load_lrc_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.official:
        raise SystemExit(f"error: {checkpoint} is an official-code checkpoint; convert its names first")
    base = {} if ckpt is None else {"target_hidden_size": ckpt.lrc.target_hidden_size}  # the checkpoint knows it
    lrc, given = parse_method_flags({**base, **lrc_flags})
    if ckpt is not None:  # the checkpoint's LRC config, with the LRC flags given here on top
        lrc = dataclasses.replace(ckpt.lrc, **{k: getattr(lrc, k) for k in given})
    t = load_teacher(teacher, dtype=torch.float32)
    model = LRCModel(t, lrc)
    if ckpt is not None:
        load_into_projections(model.projections, ckpt.weights, str(ckpt.path))
    model.train()
    ds = build_dataset(data, seq_len, t.config.vocab_size, tokenizer=load_tokenizer(teacher))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: batches * batch_size].tolist()
    data_batches = [collate_batch([ds[i] for i in idx[k * batch_size:(k + 1) * batch_size]]) for k in range(batches)]
    terms = lrc.active_clone_terms()
    print(f"gradients of {len(terms) + 3} components over {batches} batch(es) of {batch_size} x {seq_len} "
          f"({'checkpoint ' + str(ckpt.path) if ckpt else 'initialisation'}; alpha {lrc.aux_loss_scale_factor}, "
          f"{lrc.aux_loss_type})", flush=True)
    res = component_gradients(model, data_batches, lrc, terms)
    rows = summarize(res["grads"], terms, param_groups(model))
    print(f"\n{'component':>18} {'|grad|':>10} {'share':>7} {'cos(total)':>10} {'cos(CE+KL)':>10} {'cos(CE)':>8}"
          f"  where its gradient goes (fraction of squared norm)")
    for name, r in rows.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["sq_norm_fraction_by_kind"].items())[:3])
        print(f"{name:>18} {r['norm']:>10.4g} {r['share_of_total_norm']:>7.3f} {r['cos_total']:>10.3f} "
              f"{r['cos_ce_plus_kl']:>10.3f} {r['cos_ce']:>8.3f}  {top}")
    report = {"teacher": teacher, "checkpoint": str(ckpt.path) if ckpt else None, "batches": batches,
              "batch_size": batch_size, "seq_len": seq_len, "lrc": lrc.to_dict(), "loss_values": res["values"],
              "components": rows}
    if json_out:
        from lrc.files import write_json_atomic

        write_json_atomic(json_out, report)
        print(f"\nwritten: {json_out}")
    return report


if __name__ == "__main__":
    from lrc.training.flags import MethodFlags

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run_command((GradShareOptions, MethodFlags), None, main, prog="python scripts/grad_share.py",
                          description=__doc__, required=("teacher", "data"),
                          keywords=True))
