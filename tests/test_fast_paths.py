"""The speed paths of lrc/losses.py give the same numbers as the plain formulas (up to float rounding):
the fused mean-squared clone distance, the CPU chunk cap of the fused KL/CE kernel, and its backward
with a unit / non-unit upstream gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrc import losses
from lrc.losses import clone_distance, fused_logit_losses


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 300, 500)])  # the second one takes the blocked dot path
@pytest.mark.parametrize("t_grad", [False, True])
@pytest.mark.parametrize("scratch", [False, True])
def test_mse_clone_distance_matches_mse_loss(shape, t_grad, scratch):
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(*shape, generator=g) * 0.3
    t0 = torch.randn(*shape, generator=g) * 0.3 + 0.1
    s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_(t_grad)
    d = clone_distance(s, t, "mseloss", target_is_scratch=scratch)
    assert d.dtype == torch.float32 and d.shape == ()
    (0.7 * d).backward()
    sd, td = s0.double().requires_grad_(), t0.double().requires_grad_()
    ref = F.mse_loss(sd, td)
    (0.7 * ref).backward()
    assert torch.allclose(d.double(), ref, rtol=1e-5)
    assert torch.allclose(s.grad.double(), sd.grad, rtol=1e-5, atol=1e-9)
    if t_grad:
        assert torch.allclose(t.grad.double(), td.grad, rtol=1e-5, atol=1e-9)
        assert torch.equal(t.detach(), t0)  # a target that needs a gradient is never overwritten
    elif not scratch:
        assert torch.equal(t, t0)


def test_mse_clone_distance_same_as_before_in_model_terms():
    """Unmasked mseloss via the fused path equals F.mse_loss (what clone_distance used to return)."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 16, 48, generator=g), torch.randn(4, 16, 48, generator=g)
    assert torch.allclose(clone_distance(s, t, "mseloss"), F.mse_loss(s, t), rtol=1e-6)


def _reference(h_s, u_s, h_t, u_t, targets, kl_mask, tau, w_ce, w_kl):
    zs, zt = h_s @ u_s.t(), h_t @ u_t.t()
    valid = targets >= 0
    ce = F.cross_entropy(zs[valid], targets[valid], reduction="sum")
    lt, ls = torch.log_softmax(zt / tau, -1), torch.log_softmax(zs / tau, -1)
    kl = ((lt.exp() * (lt - ls)).sum(-1) * kl_mask).sum()
    return w_ce * ce + w_kl * kl, ce, kl


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("upstream", [1.0, 0.37])
def test_fused_losses_with_cpu_chunk_cap(monkeypatch, tau, upstream):
    """Force the CPU chunk cap to 4 tokens (of a requested 64): same losses and gradients."""
    V = 37
    monkeypatch.setattr(losses, "_CPU_CHUNK_BYTES", 4 * 4 * V)
    monkeypatch.setattr(losses, "_CPU_MIN_CHUNK", 1)
    assert losses._effective_chunk(64, 13, V, torch.device("cpu")) == 4
    g = torch.Generator().manual_seed(0)
    N, ds, d = 13, 8, 12
    h_s = torch.randn(N, ds, generator=g).requires_grad_()
    u_s = torch.randn(V, ds, generator=g).requires_grad_()
    h_t, u_t = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[2, 9]] = -100
    kl_mask = torch.ones(N, dtype=torch.bool)
    kl_mask[[4, 5]] = False
    loss, ce_sum, kl_sum = fused_logit_losses(h_s, u_s, targets, h_t=h_t, u_t=u_t, kl_mask=kl_mask, w_ce=0.7,
                                              w_kl=0.2, tau=tau, chunk_tokens=64)
    (upstream * loss).backward()
    hs, us = h_s.detach().double().requires_grad_(), u_s.detach().double().requires_grad_()
    ref, ce, kl = _reference(hs, us, h_t.double(), u_t.double(), targets, kl_mask, tau, 0.7, 0.2)
    (upstream * ref).backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(ce_sum.double(), ce, rtol=1e-5)
    assert torch.allclose(kl_sum.double(), kl, rtol=1e-5)
    assert torch.allclose(h_s.grad.double(), hs.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(u_s.grad.double(), us.grad, rtol=1e-4, atol=1e-6)


def test_fused_ce_only_without_grad():
    g = torch.Generator().manual_seed(2)
    h_s, u_s = torch.randn(9, 8, generator=g), torch.randn(29, 8, generator=g)
    targets = torch.randint(0, 29, (9,), generator=g)
    loss, ce_sum, kl_sum = fused_logit_losses(h_s, u_s, targets, chunk_tokens=4)
    ref = F.cross_entropy(h_s @ u_s.t(), targets, reduction="sum")
    assert torch.allclose(ce_sum, ref, rtol=1e-5) and torch.allclose(loss, ref, rtol=1e-5)
    assert kl_sum.item() == 0.0
