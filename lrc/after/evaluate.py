"""Held-out cross-entropy and perplexity of a causal LM: a trained student, its teacher, or the
training-time LRC student (``LRCModel``).

The same function scores all three, so their numbers are comparable: next-token CE summed over
every counted position (position t predicts token t+1; padded positions and labels of -100 do not
count), divided by the number of counted positions; perplexity = exp(CE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, Subset

from lrc.cli.options import options, run_command
from lrc.data.datasets import collate_batch


@dataclass
class HeldoutResult:
    ce: float
    """Mean next-token cross-entropy (nats per token)."""
    ppl: float
    """exp(ce)."""
    tokens: int
    """Number of predicted positions that counted."""


def _logits_fn(model: nn.Module):
    """input_ids, attention_mask -> logits. For an ``LRCModel`` the student's weights are generated once."""
    from lrc.model import LRCModel  # local: keeps this module light for callers that only score HF models

    if isinstance(model, LRCModel):
        weights = model.student_weights()
        return lambda ids, mask: functional_call(model.student, weights, args=(), kwargs=dict(
            input_ids=ids, attention_mask=mask, use_cache=False)).logits
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@torch.no_grad()
def ce_sum(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(sum of next-token CE over counted positions, number of counted positions), fp32 tensors.

    ``batch``: ``input_ids`` (B, S) and optionally ``attention_mask`` / ``labels`` (B, S), as produced by
    ``lrc.data.datasets.collate_batch``. No host sync.
    """
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    labels = batch.get("labels", input_ids)
    valid = labels != -100
    if mask is not None:
        valid = valid & mask.bool()
    targets = torch.where(valid[:, 1:] & valid[:, :-1], labels[:, 1:], -100)  # (B, S-1)
    total = torch.zeros((), dtype=torch.float32, device=input_ids.device)
    logits_of = _logits_fn(model)
    for b in range(input_ids.shape[0]):  # one row at a time: (S, V) fp32 logits at most
        logits = logits_of(input_ids[b:b + 1], None if mask is None else mask[b:b + 1])[0, :-1].float()
        total += nn.functional.cross_entropy(logits, targets[b], ignore_index=-100, reduction="sum")
    return total, (targets >= 0).sum().float()


@torch.no_grad()
def heldout_perplexity(model: nn.Module, dataset: Dataset, batch_size: int = 4,
                       max_sequences: int | None = None) -> HeldoutResult:
    """Token-weighted CE and perplexity of ``model`` over ``dataset`` (items as in ``lrc.data.datasets``).

    ``model``: an ``LRCModel`` (its training-time student is scored) or any HF causal LM. It is run
    in eval mode on its own device; ``max_sequences`` scores only the first sequences.
    """
    if max_sequences:
        dataset = Subset(dataset, range(min(max_sequences, len(dataset))))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_batch):
            batch = {k: v.to(device) for k, v in batch.items()}
            s, n = ce_sum(model, batch)
            total += s.double()
            count += n.double()
    finally:
        model.train(was_training)
    n = int(count.item())
    if n == 0:
        raise ValueError("heldout_perplexity: the dataset has no predicted positions")
    ce = float(total.item()) / n
    return HeldoutResult(ce=ce, ppl=math.exp(min(ce, 700.0)), tokens=n)


@dataclass
class TeacherComparison:
    """A student scored against its teacher on the same held-out positions."""

    ce: float
    """Student mean next-token CE (nats)."""
    ppl: float
    """exp(ce)."""
    kl: float
    """Mean over positions of KL(teacher || student) of the next-token distributions at temperature 1 (nats)."""
    top1: float
    """Fraction of positions where the student's most likely next token is the teacher's."""
    tokens: int
    """Number of predicted positions."""


@torch.no_grad()
def teacher_logprobs(teacher: nn.Module, dataset: Dataset, batch_size: int = 4) -> list[Tensor]:
    """Per sequence, the teacher's next-token log-probabilities (S-1, V), stored as float16 (half of fp32's
    memory; relative error 5e-4, so < 1e-3 nats for the likely tokens that carry the KL). Unpadded sequences only."""
    device = next(teacher.parameters()).device
    out: list[Tensor] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_batch):
        if "attention_mask" in batch:
            raise ValueError("teacher_logprobs: the held-out sequences must be full (no padding)")
        ids = batch["input_ids"].to(device)
        for b in range(ids.shape[0]):
            logits = teacher(input_ids=ids[b:b + 1], use_cache=False).logits[0, :-1].float()
            out.append(torch.log_softmax(logits, -1).half().cpu())
    return out


@torch.no_grad()
def compare_with_teacher(model: nn.Module, dataset: Dataset, teacher_lp: list[Tensor],
                         batch_size: int = 4) -> TeacherComparison:
    """Held-out CE / perplexity, KL(teacher || student) and top-1 agreement of ``model`` (an ``LRCModel``
    or any HF causal LM) against cached teacher log-probabilities (``teacher_logprobs`` of the same dataset)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits_of = _logits_fn(model)
    ce = kl = agree = 0.0
    n = 0
    i = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_batch):
            ids = batch["input_ids"].to(device)
            for b in range(ids.shape[0]):
                lp_s = torch.log_softmax(logits_of(ids[b:b + 1], None)[0, :-1].float(), -1).cpu()  # (S-1, V)
                lp_t = teacher_lp[i].float()
                i += 1
                tgt = ids[b, 1:].cpu()
                ce += float(-lp_s.gather(1, tgt[:, None]).sum())
                kl += float((lp_t.exp() * (lp_t - lp_s)).sum())
                agree += float((lp_s.argmax(-1) == lp_t.argmax(-1)).sum())
                n += tgt.numel()
    finally:
        model.train(was_training)
    if i != len(teacher_lp):
        raise ValueError(f"compare_with_teacher: {len(teacher_lp)} cached teacher sequences, {i} in the dataset")
    return TeacherComparison(ce=ce / n, ppl=math.exp(min(ce / n, 700.0)), kl=kl / n, top1=agree / n, tokens=n)


def model_heldout_perplexity(model: str, data: str, data_max_len: int = 1024, batch_size: int = 4,
                             max_sequences: int | None = None, text_field: str = "text",
                             device: str | torch.device | None = None) -> HeldoutResult:
    """Load a model by path (a converted student directory, a teacher directory, or a teacher ``.gguf``)
    in fp32 and score it on ``data`` (any format ``lrc.data.datasets.build_dataset`` reads, tokenized with the
    model's own tokenizer)."""
    from lrc.data.datasets import build_dataset
    from lrc.teacher import load_causal_lm, load_tokenizer

    lm = load_causal_lm(model, dtype=torch.float32, device=device)
    ds = build_dataset(data, data_max_len, lm.config.vocab_size, load_tokenizer(model), text_field)
    return heldout_perplexity(lm, ds, batch_size, max_sequences)


@options(group="what to score, on what")
class EvalOptions:
    """``lrc eval``'s flags."""

    model: str | None = None
    """required: a converted student directory, a teacher directory, or a teacher .gguf file"""
    data: str | None = None
    """required: held-out data, any format the training reads (tokenized with the model's own tokenizer)"""
    data_max_len: int = 1024
    """sequence length"""
    batch_size: int = 4
    """sequences per forward pass"""
    max_sequences: int = 0
    """score the first N sequences only (0: all)"""
    text_field: str = "text"
    """field holding the text in a text jsonl"""


def evaluate(opts: EvalOptions) -> HeldoutResult:
    """Score ``opts.model`` on ``opts.data`` and print one line: tokens, CE and perplexity."""
    from lrc.errors import NonFiniteError

    r = model_heldout_perplexity(opts.model, opts.data, opts.data_max_len, opts.batch_size,
                                 opts.max_sequences or None, opts.text_field)
    print(f"{opts.model}: {r.tokens} predicted tokens of {opts.data} (sequences of {opts.data_max_len}): "
          f"ce {r.ce:.4f}  ppl {r.ppl:.2f}")
    if not math.isfinite(r.ce):
        raise NonFiniteError(f"{opts.model}: its cross-entropy on {opts.data} is {r.ce} (NaN/inf logits): the model's "
                             f"weights overflow on this input (e.g. converted from a checkpoint that diverged); this is "
                             f"not a score")
    return r


def cli(argv: list[str] | None = None) -> int:
    """``lrc eval`` (flags: ``--help``; ``argv`` default: sys.argv[1:]); the exit code of ``lrc.errors.run_cli``."""
    return run_command(EvalOptions, argv, evaluate, prog="lrc eval", description=__doc__,
                       required=("model", "data"))


if __name__ == "__main__":
    import sys

    sys.exit(cli())
