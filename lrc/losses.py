"""The LRC loss terms: clone distances, and a fused, token-chunked head + KL + CE.

Where the KL is computed: ``fused_logit_losses`` (below). It never materialises full B x S x V
logits: for each chunk of tokens it computes the teacher and student logits, the fp32
log-softmaxes, the KL(teacher || student) at temperature tau and the next-token CE, and, when a
gradient is needed, the gradients w.r.t. the student's final hidden states and head weight (so the
backward pass needs no recomputation). Peak extra memory is O(chunk x V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- clone distances


_DOT_BLOCK = 1 << 17


def _sum_of_squares_cpu(flat: Tensor) -> Tensor:
    """sum(flat^2) without a temporary: BLAS dot products over blocks of 128K elements, summed in
    float64 (one dot over millions of elements accumulates too much rounding error)."""
    n = flat.numel()
    if n <= _DOT_BLOCK:
        return torch.dot(flat, flat)
    parts = [torch.dot(b, b) for b in flat.split(_DOT_BLOCK)]
    return torch.stack(parts).sum(dtype=torch.float64).float()


class _MeanSquaredError(torch.autograd.Function):
    """mean((s - t)^2) as an fp32 scalar, for the unmasked ``mseloss`` clone term.

    Same value as ``F.mse_loss(s, t)`` up to float rounding, with fewer passes over the activations:
    forward is one subtraction and one BLAS dot product, and only ``s - t`` is kept for backward
    (the target itself is freed), whose gradient is that difference times a scalar.
    ``F.mse_loss`` writes a squared temporary, and its backward zero-fills a new tensor
    then reads both inputs again.
    """

    @staticmethod
    def forward(ctx, s, t, t_is_scratch):
        diff = torch.sub(s, t, out=t) if t_is_scratch else torch.sub(s, t)
        flat = diff.reshape(-1)
        n = flat.numel()
        if flat.device.type == "cpu" and flat.dtype == torch.float32:
            total = _sum_of_squares_cpu(flat)
        else:
            total = flat.float().square().sum()
        ctx.save_for_backward(diff)
        ctx.scale = 2.0 / n
        ctx.t_grad = ctx.needs_input_grad[1]
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad_out):
        (diff,) = ctx.saved_tensors
        g = diff * (grad_out * ctx.scale).to(diff.dtype)
        return g, (-g if ctx.t_grad else None), None


def clone_distance(s: Tensor, t: Tensor, kind: str, mask: Tensor | None = None, *,
                   target_is_scratch: bool = False) -> Tensor:
    """Distance D(s, t) of one clone term (docs/METHOD.md §4.2), as an fp32 scalar.

    Args:
        s, t: student activation and target, same shape (B, S, width).
        kind: mseloss (mean of squares over all elements) | mseloss_v2 (sum over width, mean over
            tokens) | l1loss (mean of |s-t|) | l1loss_v2 (sum |s-t| over width / 50, mean over tokens)
            | nmse (sum (s-t)^2 / sum t^2 over the counted tokens; gradient through both, so a
            target that depends on trainable weights gains nothing from shrinking them).
        mask: optional (B, S) bool, True where the token counts; means are then over counted
            tokens only (computed by weighting, without a host sync).
        target_is_scratch: the caller never reads ``t`` again (and it needs no gradient), so its
            memory may be reused for ``s - t``.
    """
    if mask is None:
        if kind == "mseloss":
            if s.shape == t.shape and s.dtype == t.dtype:
                scratch = target_is_scratch and not t.requires_grad and t.is_contiguous()
                return _MeanSquaredError.apply(s, t, scratch)
            return F.mse_loss(s, t).float()
        if kind == "l1loss":
            return F.l1_loss(s, t).float()
    diff = s - t
    if kind == "nmse":
        num, den = diff.pow(2).sum(-1, dtype=torch.float32), t.pow(2).sum(-1, dtype=torch.float32)  # (B, S)
        if mask is not None:
            num, den = num * mask, den * mask
        return num.sum() / den.sum().clamp_min(1e-12)
    if kind in ("mseloss", "mseloss_v2"):
        per_tok = diff.pow(2).sum(-1, dtype=torch.float32)  # (B, S)
    elif kind in ("l1loss", "l1loss_v2"):
        per_tok = diff.abs().sum(-1, dtype=torch.float32)
    else:
        raise ValueError(f"unknown aux_loss_type {kind!r}")
    if mask is None:
        total, n_tok = per_tok.sum(), per_tok.numel()
    else:
        total, n_tok = (per_tok * mask).sum(), mask.sum().clamp_min(1)
    if kind in ("mseloss", "l1loss"):
        return total / (n_tok * s.shape[-1])
    return total / n_tok / (50.0 if kind == "l1loss_v2" else 1.0)


# ----------------------------------------------------------------------------- KL + CE


# On CPU the chunk is additionally capped so that one (chunk, V) fp32 buffer stays around 48 MiB
# (256 tokens at V = 49,152): the loss alone then ran 0.76 s instead of 0.89 s with 1024-token chunks
# on a nearly idle 2-core machine (1,024 tokens), and its buffers take 4x less memory. Smaller chunks were faster still when idle
# (128 tokens) but much slower when the cores are shared (more, shorter parallel regions). Never below
# 64 tokens, so the head matmuls still amortise reading the (V, d) weights.
_CPU_CHUNK_BYTES = 48 * 2**20
_CPU_MIN_CHUNK = 64
# Elsewhere one (chunk, V) fp32 buffer is capped at the size of the default 1024 tokens at V = 152,064 (Qwen2.5's
# vocabulary, the largest of the Llama-like families): 594 MiB. No Llama / Mistral / Qwen teacher is affected at the
# default; a 256K vocabulary gets 608-token (Gemma 2, V = 256,000) or 594-token (Gemma 3, V = 262,144) chunks
# instead of 1024, so the loss's four or five buffers stay under 3 GiB. Like the CPU cap it also bounds a larger --logits_chunk_tokens (chunking changes memory, not results).
_CHUNK_BYTES = 1024 * 152_064 * 4


def _effective_chunk(chunk: int, n: int, V: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_BYTES if device.type == "cpu" else _CHUNK_BYTES
    return max(1, min(chunk, n, max(_CPU_MIN_CHUNK, budget // (4 * V))))


class _FusedLogitLosses(torch.autograd.Function):
    """loss = w_ce * sum CE + w_kl * sum KL, computed chunk-wise; gradients computed in forward.

    Each chunk works in three or four reused (chunk, V) fp32 buffers with in-place ops: fresh V-wide
    temporaries per op cost more than the arithmetic on CPU (page faults) and fragment GPU memory.
    With lse = log-sum-exp, the per-token quantities are
        CE  = lse(z_S) - z_S[target],          dCE/dz_S = softmax(z_S) - onehot(target)
        KL  = sum_v p_T (z_T - z_S) / tau - lse(z_T / tau) + lse(z_S / tau),
        dKL/dz_S = (softmax(z_S / tau) - p_T) / tau,   with p_T = softmax(z_T / tau).
    KL is formed from the (small) logit differences and per-row log-sums, not as a difference of
    two log-softmaxes (each ~log V in size): that keeps it accurate when teacher and student are close.
    With a soft-cap (Gemma 2's final logits) both models' logits are ``cap * tanh(z / cap)`` first, and the
    gradient is multiplied by ``1 - tanh(z / cap)^2`` (one more (chunk, V) buffer holds the tanh).
    """

    @staticmethod
    def forward(ctx, h_s, u_s, h_t, u_t, targets, kl_mask, w_ce, w_kl, tau, chunk, stats, softcap=None):
        n, V = h_s.shape[0], u_s.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        do_kl = h_t is not None
        dev, f32 = h_s.device, torch.float32
        f64 = f32 if dev.type == "mps" else torch.float64  # MPS has no float64
        sharded_head = do_kl and not isinstance(u_t, Tensor)  # lrc.sharded_head: the chunks are collectives
        rows = u_t.rows_everywhere(n) if sharded_head else n  # every rank runs the chunks of the longest
        chunk = _effective_chunk(chunk, rows, V, dev)
        c0 = min(chunk, n)
        zs_buf = torch.empty(c0, V, dtype=f32, device=dev)  # z_S, then (z_S - max) / tau, then its exp
        g_buf = torch.empty(c0, V, dtype=f32, device=dev) if need_grad else None  # dLoss/dz_S
        zt_buf = torch.empty(c0, V, dtype=f32, device=dev) if do_kl else None  # z_T / tau shifted, then p_T * diff
        pt_buf = torch.empty(c0, V, dtype=f32, device=dev) if do_kl else None  # p_T
        cap_buf = torch.empty(c0, V, dtype=f32, device=dev) if softcap else None  # tanh(z_S / cap)
        grad_h = torch.empty_like(h_s) if need_grad else None
        grad_u = torch.empty(u_s.shape, dtype=f32, device=dev) if need_grad else None  # first chunk writes it
        ce_sum = torch.zeros((), dtype=f32, device=dev)
        kl_sum = torch.zeros((), dtype=f32, device=dev)
        inv_tau = 1.0 / tau
        ht_scaled = h_t * inv_tau if do_kl else None
        for a in range(0, rows, chunk):
            b = min(a + chunk, n)
            c = b - a
            if c <= 0:  # this rank's tokens are done; another rank's exchange needs it
                u_t.logits_into(None, ht_scaled[:0], chunk)
                continue
            hs = h_s[a:b]
            zs = zs_buf[:c]
            _mm_into(zs, hs, u_s)  # (c, V) student logits
            if softcap:
                tcap = torch.div(zs, softcap, out=cap_buf[:c]).tanh_()
                torch.mul(tcap, softcap, out=zs)
            tgt = targets[a:b]
            ce_valid = tgt >= 0
            tgt0 = tgt.clamp_min(0).unsqueeze(1)
            picked = zs.gather(1, tgt0).squeeze(1)
            m1 = zs.amax(-1, keepdim=True)
            e = torch.sub(zs, m1, out=g_buf[:c]) if need_grad else zs - m1
            e.exp_()
            s1 = e.sum(-1, keepdim=True)
            ce_sum += ((m1.squeeze(1) + s1.log().squeeze(1) - picked) * ce_valid).sum()
            if need_grad:  # g = (softmax(z_S) - onehot) * w_ce on counted rows
                wc = (ce_valid.to(f32) * w_ce).unsqueeze(1)
                e.mul_(wc / s1)
                e.scatter_add_(1, tgt0, -wc)
            del e
            if do_kl:
                m = kl_mask[a:b].to(f32)
                zt = zt_buf[:c]
                if sharded_head:
                    u_t.logits_into(zt, ht_scaled[a:b], chunk)  # z_T / tau, from the ranks' vocabulary slices
                else:
                    _mm_into(zt, ht_scaled[a:b], u_t)  # z_T / tau
                if softcap:  # cap * tanh(z_T / cap) / tau
                    zt.mul_(tau / softcap).tanh_().mul_(softcap / tau)
                zt.sub_(zt.amax(-1, keepdim=True))
                pt = torch.exp(zt, out=pt_buf[:c])
                st = pt.sum(-1, keepdim=True)
                pt.div_(st)  # p_T
                # z_S / tau shifted by its max (= max(z_S) / tau, tau > 0)
                zs.sub_(m1).mul_(inv_tau)
                zt.sub_(zs).mul_(pt)  # p_T * (shifted z_T/tau - shifted z_S/tau)
                ps = zs.exp_()  # unnormalised p_S(tau)
                ss = ps.sum(-1, keepdim=True)
                # per-row log-sums in float64: log(sum) ~ log V would otherwise round to ~1e-6, which is
                # a large part of a small KL (student close to the teacher)
                kl_tok = zt.sum(-1).to(f64) + (ss.to(f64).log() - st.to(f64).log()).squeeze(1)
                kl_sum += (kl_tok * m).sum().to(f32)
                if need_grad:  # g += (p_S(tau) - p_T) * m * w_kl / tau
                    k = (m * (w_kl * inv_tau)).unsqueeze(1)
                    g = g_buf[:c]
                    g.addcmul_(ps, k / ss)
                    g.addcmul_(pt, k, value=-1.0)
            if need_grad:
                g = g_buf[:c]
                if softcap:  # through the cap: d(cap tanh(z / cap))/dz = 1 - tanh^2
                    g.mul_(cap_buf[:c].square_().neg_().add_(1.0))
                gd = g if h_s.dtype == f32 else g.to(h_s.dtype)
                torch.mm(gd, u_s, out=grad_h[a:b])
                if gd.dtype == f32:
                    if a == 0:
                        torch.mm(gd.t(), hs, out=grad_u)
                    else:
                        grad_u.addmm_(gd.t(), hs)
                elif a == 0:
                    grad_u.copy_(gd.t() @ hs)
                else:
                    grad_u += (gd.t() @ hs).float()
        if sharded_head:
            u_t.release()
        stats.append((ce_sum.detach(), kl_sum.detach()))
        if need_grad:
            ctx.save_for_backward(grad_h, grad_u)
        ctx.u_dtype = u_s.dtype
        return w_ce * ce_sum + w_kl * kl_sum

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_u = ctx.saved_tensors
        if grad_out.device.type == "cpu" and grad_out.item() == 1.0:
            # the usual case (the loss is a plain sum): skip two full-size copies; reading the
            # value costs no device sync on CPU
            return grad_h, grad_u.to(ctx.u_dtype), None, None, None, None, None, None, None, None, None, None
        gh = grad_h * grad_out.to(grad_h.dtype)
        gu = (grad_u * grad_out).to(ctx.u_dtype)
        return gh, gu, None, None, None, None, None, None, None, None, None, None


def _mm_into(out: Tensor, x: Tensor, w: Tensor) -> None:
    """out (fp32, (c, V)) <- x (c, k) @ w (V, k)^T, without a temporary when x is fp32."""
    if x.dtype == out.dtype and w.dtype == out.dtype:
        torch.mm(x, w.t(), out=out)
    else:
        out.copy_(x @ w.t())


def fused_logit_losses(
    h_s: Tensor,
    u_s: Tensor,
    targets: Tensor,
    *,
    h_t: Tensor | None = None,
    u_t: Tensor | None = None,
    kl_mask: Tensor | None = None,
    w_ce: float | Tensor = 1.0,
    w_kl: float | Tensor = 1.0,
    tau: float = 1.0,
    chunk_tokens: int = 1024,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted CE + KL from final hidden states, chunked over tokens.

    Args:
        h_s: (N, d_s) student final hidden states (after the final norm), N = B*S.
        u_s: (V, d_s) student head weight (generated, requires grad).
        targets: (N,) next-token ids, -100 where the position does not count for CE.
        h_t: (N, d) teacher final hidden states, or None for no KL.
        u_t: (V, d) teacher head weight, or, for a teacher sharded over the ranks, its head as
            ``lrc.sharded_head.ShardedHeadLogits`` (every chunk is then a collective).
        kl_mask: (N,) bool, tokens counted in the KL (None: all).
        w_ce, w_kl: weights applied to the *sums* (e.g. 1/n_ce for a mean CE; 1/B for the
            official sequence-summed KL; 0 to compute a term for logging only).
        tau: KL temperature.
        softcap: the models' final-logit soft-cap ``cap * tanh(z / cap)`` (Gemma 2), applied to both before CE and
            KL; None: none.

    Returns:
        (loss, ce_sum, kl_sum): loss = w_ce * ce_sum + w_kl * kl_sum (differentiable w.r.t. h_s and
        u_s); ce_sum and kl_sum are detached fp32 scalars (kl_sum is 0 without h_t).
    """
    if kl_mask is None and h_t is not None:
        kl_mask = torch.ones(h_s.shape[0], dtype=torch.bool, device=h_s.device)
    stats: list = []
    w_ce = torch.as_tensor(w_ce, dtype=torch.float32, device=h_s.device)
    w_kl = torch.as_tensor(w_kl, dtype=torch.float32, device=h_s.device)
    loss = _FusedLogitLosses.apply(h_s, u_s, h_t, u_t, targets, kl_mask, w_ce, w_kl,
                                   float(tau), int(chunk_tokens), stats, float(softcap) if softcap else None)
    ce_sum, kl_sum = stats[0]
    return loss, ce_sum, kl_sum
