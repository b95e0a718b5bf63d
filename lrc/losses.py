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


def clone_distance(s: Tensor, t: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """Distance D(s, t) of one clone term (LRC_SPEC §3.1), as an fp32 scalar.

    Args:
        s, t: student activation and target, same shape (B, S, width).
        kind: mseloss (mean of squares over all elements) | mseloss_v2 (sum over width, mean over
            tokens) | l1loss (mean of |s-t|) | l1loss_v2 (sum |s-t| over width / 50, mean over tokens).
        mask: optional (B, S) bool, True where the token counts; means are then over counted
            tokens only (computed by weighting, without a host sync).
    """
    if mask is None:
        if kind == "mseloss":
            return F.mse_loss(s, t).float()
        if kind == "l1loss":
            return F.l1_loss(s, t).float()
    diff = s - t
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


class _FusedLogitLosses(torch.autograd.Function):
    """loss = w_ce * sum CE + w_kl * sum KL, computed chunk-wise; gradients computed in forward.

    Each chunk works in four reused (chunk, V) fp32 buffers with in-place ops: fresh V-wide
    temporaries per op cost more than the arithmetic on CPU (page faults) and fragment GPU memory.
    With lse = log-sum-exp, the per-token quantities are
        CE  = lse(z_S) - z_S[target],          dCE/dz_S = softmax(z_S) - onehot(target)
        KL  = sum_v p_T (z_T - z_S) / tau - lse(z_T / tau) + lse(z_S / tau),
        dKL/dz_S = (softmax(z_S / tau) - p_T) / tau,   with p_T = softmax(z_T / tau).
    """

    @staticmethod
    def forward(ctx, h_s, u_s, h_t, u_t, targets, kl_mask, w_ce, w_kl, tau, chunk, stats):
        n, V = h_s.shape[0], u_s.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        do_kl = h_t is not None
        dev, f32 = h_s.device, torch.float32
        c0 = min(chunk, n)
        zs_buf = torch.empty(c0, V, dtype=f32, device=dev)  # z_S, then z_S / tau shifted, then p_S
        g_buf = torch.empty(c0, V, dtype=f32, device=dev) if need_grad else None  # dLoss/dz_S
        zt_buf = torch.empty(c0, V, dtype=f32, device=dev) if do_kl else None  # z_T / tau shifted, then p_T * diff
        pt_buf = torch.empty(c0, V, dtype=f32, device=dev) if do_kl else None  # p_T
        grad_h = torch.empty_like(h_s) if need_grad else None
        grad_u = torch.zeros(u_s.shape, dtype=f32, device=dev) if need_grad else None
        ce_sum = torch.zeros((), dtype=f32, device=dev)
        kl_sum = torch.zeros((), dtype=f32, device=dev)
        inv_tau = 1.0 / tau
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            c = b - a
            hs = h_s[a:b]
            zs = zs_buf[:c]
            _mm_into(zs, hs, u_s)  # (c, V) student logits
            tgt = targets[a:b]
            ce_valid = tgt >= 0
            tgt0 = tgt.clamp_min(0)
            picked = zs.gather(1, tgt0.unsqueeze(1)).squeeze(1)
            m1 = zs.amax(-1, keepdim=True)
            if need_grad:
                e = g_buf[:c]
                torch.sub(zs, m1, out=e).exp_()
            else:
                e = (zs - m1).exp_()
            s1 = e.sum(-1, keepdim=True)
            lse1 = (m1 + s1.log()).squeeze(1)
            ce_sum += ((lse1 - picked) * ce_valid).sum()
            if need_grad:  # g = (softmax(z_S) - onehot) * w_ce on counted rows
                e.div_(s1)
                e[torch.arange(c, device=dev), tgt0] -= 1.0
                e.mul_((ce_valid.to(f32) * w_ce).unsqueeze(1))
            del e
            if do_kl:
                m = kl_mask[a:b].to(f32)
                zt = zt_buf[:c]
                _mm_into(zt, h_t[a:b] * inv_tau, u_t)  # z_T / tau
                zt.sub_(zt.amax(-1, keepdim=True))
                pt = pt_buf[:c]
                torch.exp(zt, out=pt)
                st = pt.sum(-1, keepdim=True)
                pt.div_(st)  # p_T
                zs.mul_(inv_tau)
                zs.sub_(zs.amax(-1, keepdim=True))  # z_S / tau, shifted
                zt.sub_(zs).mul_(pt)  # p_T * (shifted z_T/tau - shifted z_S/tau)
                zs.exp_()
                ss = zs.sum(-1, keepdim=True)
                kl_tok = zt.sum(-1) - st.log().squeeze(1) + ss.log().squeeze(1)
                kl_sum += (kl_tok * m).sum()
                if need_grad:  # g += (p_S - p_T) * m * w_kl / tau
                    zs.div_(ss).sub_(pt).mul_((m * (w_kl * inv_tau)).unsqueeze(1))
                    g_buf[:c].add_(zs)
            if need_grad:
                g = g_buf[:c]
                gd = g if h_s.dtype == f32 else g.to(h_s.dtype)
                torch.mm(gd, u_s, out=grad_h[a:b])
                if gd.dtype == f32:
                    grad_u.addmm_(gd.t(), hs)
                else:
                    grad_u += (gd.t() @ hs).float()
        stats.append((ce_sum.detach(), kl_sum.detach()))
        if need_grad:
            ctx.save_for_backward(grad_h, grad_u)
        ctx.u_dtype = u_s.dtype
        return w_ce * ce_sum + w_kl * kl_sum

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_u = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype)
        gu = (grad_u * grad_out).to(ctx.u_dtype)
        return gh, gu, None, None, None, None, None, None, None, None, None


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
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted CE + KL from final hidden states, chunked over tokens.

    Args:
        h_s: (N, d_s) student final hidden states (after the final norm), N = B*S.
        u_s: (V, d_s) student head weight (generated, requires grad).
        targets: (N,) next-token ids, -100 where the position does not count for CE.
        h_t: (N, d) teacher final hidden states, or None for no KL.
        u_t: (V, d) teacher head weight.
        kl_mask: (N,) bool, tokens counted in the KL (None: all).
        w_ce, w_kl: weights applied to the *sums* (e.g. 1/n_ce for a mean CE; 1/B for the
            official sequence-summed KL; 0 to compute a term for logging only).
        tau: KL temperature.

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
                                   float(tau), int(chunk_tokens), stats)
    ce_sum, kl_sum = stats[0]
    return loss, ce_sum, kl_sum
