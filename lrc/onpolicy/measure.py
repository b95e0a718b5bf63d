"""What an on-policy stage is judged by (the demo's third act, the study in docs/REPRODUCE_SMALL.md):

- ``sample``: a model's completions of prompts (seeded, the same settings as training);
- ``teacher_scores``: on those completions, per completion token, the reverse KL of the model's next-token
  distribution to the teacher's, KL(model || teacher), and the teacher's log-probability of the sampled token
  (teacher-judged agreement: how likely the teacher finds what the model wrote).

One sequence at a time, full vocabulary in fp32 ([completion tokens x vocabulary] logits per model at most): an
evaluation of a few hundred completions, not a training loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str


@dataclass
class TeacherScores:
    reverse_kl: float
    """Mean over completion tokens of KL(model || teacher), nats."""
    teacher_logprob: float
    """Mean over completion tokens of the teacher's log-probability of the token, nats."""
    tokens: int


@torch.no_grad()
def sample(model, tokenizer, prompts: list, chat: bool, max_new_tokens: int, temperature: float = 1.0,
           seed: int = 0, batch: int = 1) -> list[Completion]:
    """One sampled completion per prompt (top-k and top-p off, as in training), cut after its end-of-sequence token;
    ``batch`` prompts at a time (left-padded), each batch seeded from ``seed``."""
    from lrc.onpolicy.prompts import prompt_ids
    from lrc.onpolicy.trainer import until_eos

    device = next(model.parameters()).device
    eos = [tokenizer.eos_token_id]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch):
        rows = [prompt_ids(tokenizer, p, chat) for p in prompts[i:i + batch]]
        width = max(map(len, rows))
        ids = torch.tensor([[eos[0]] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seq = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                             top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=eos[0], eos_token_id=eos)
        for r, comp in zip(rows, until_eos(seq[:, width:], eos)):
            out.append(Completion(r, comp, tokenizer.decode(comp, skip_special_tokens=True)))
    return out


def _completion_logits(model, prompt: list[int], completion: list[int]) -> Tensor:
    """(C, V) fp32 logits predicting each completion token."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + completion], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1: -1]
    return logits.float()


@torch.no_grad()
def teacher_scores(model, teacher, completions: list[Completion], temperature: float = 1.0) -> TeacherScores:
    """``TeacherScores`` of ``model``'s completions (module docstring)."""
    kl = lp = 0.0
    n = 0
    for c in completions:
        if not c.completion_ids:
            continue
        log_p = F.log_softmax(_completion_logits(model, c.prompt_ids, c.completion_ids) / temperature, -1)
        teacher_logits = _completion_logits(teacher, c.prompt_ids, c.completion_ids)
        log_t1 = F.log_softmax(teacher_logits, -1)  # the teacher's own distribution, for the log-probability
        log_t = log_t1 if temperature == 1.0 else F.log_softmax(teacher_logits / temperature, -1)
        kl += float((log_p.exp() * (log_p - log_t)).sum())
        tokens = torch.tensor(c.completion_ids, device=log_t.device)
        lp += float(log_t1.gather(-1, tokens[:, None]).sum())
        n += len(c.completion_ids)
    return TeacherScores(kl / max(n, 1), lp / max(n, 1), n)
