"""LRC core: losses against an independent explicit-matmul reference, gradient reach, parameter
counts, the loss registry, the fused KL/CE kernel, config validation and family dispatch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import randomize_projections, tiny_teacher

from lrc.config import LRCConfig, LRCConfigError
from lrc.families import SUPPORTED_FAMILIES, UnsupportedTeacherError, student_config
from lrc.losses import fused_logit_losses
from lrc.model import LRCModel

# ============================================================================ reference model
# Written from docs/METHOD.md §3-4 with explicit matmuls; it does not call the library's model or losses.


def _rms(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def _rope(x, theta):  # x: (B, H, S, h), rotate-half convention
    h, S = x.shape[-1], x.shape[-2]
    inv = 1.0 / (theta ** (torch.arange(0, h, 2, dtype=torch.float32) / h))
    ang = torch.arange(S, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : h // 2], x[..., h // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attention(q, k, v, n_heads, n_kv, h, theta, key_mask, qn=None, kn=None, eps=None):
    B, S, _ = q.shape
    q = q.view(B, S, n_heads, h)
    k = k.view(B, S, n_kv, h)
    if qn is not None:  # Qwen3: RMSNorm over head_dim, after the projection, before RoPE
        q, k = _rms(q, qn, eps), _rms(k, kn, eps)
    q = _rope(q.transpose(1, 2), theta)
    k = _rope(k.transpose(1, 2), theta)
    v = v.view(B, S, n_kv, h).transpose(1, 2)
    rep = n_heads // n_kv
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(h)
    allowed = torch.ones(S, S, dtype=torch.bool).tril()[None, None] & key_mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    a = s.softmax(-1) @ v  # (B, H, S, h)
    return a.transpose(1, 2).reshape(B, S, n_heads * h)


def _lin(x, w, b=None):
    return x @ w.t() + (0 if b is None else b)


def _forward(W, cfg, ids, key_mask, layers, eps, d_in, gains=None):
    """Run a decoder from a weight dict W (teacher names). Returns (final normed hidden, acts per layer).

    gains: student RMSNorm gains {"L.in", "L.post", "final"} (else the weights' own norm gains).
    """
    theta = cfg.rope_parameters["rope_theta"]
    h_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    x = W["model.embed_tokens.weight"][ids]
    acts = {}
    for j, L in enumerate(layers):
        p = f"model.layers.{L}."
        g_in = gains[f"{L}.in"] if gains else W[p + "input_layernorm.weight"]
        g_post = gains[f"{L}.post"] if gains else W[p + "post_attention_layernorm.weight"]
        u = _rms(x, g_in, eps)
        q = _lin(u, W[p + "self_attn.q_proj.weight"], W.get(p + "self_attn.q_proj.bias"))
        k = _lin(u, W[p + "self_attn.k_proj.weight"], W.get(p + "self_attn.k_proj.bias"))
        v = _lin(u, W[p + "self_attn.v_proj.weight"], W.get(p + "self_attn.v_proj.bias"))
        a = _attention(q, k, v, cfg.num_attention_heads, cfg.num_key_value_heads, h_dim, theta, key_mask,
                       W.get(p + "self_attn.q_norm.weight"), W.get(p + "self_attn.k_norm.weight"), cfg.rms_norm_eps)
        o = _lin(a, W[p + "self_attn.o_proj.weight"])
        x = x + o
        w = _rms(x, g_post, eps)
        g = _lin(w, W[p + "mlp.gate_proj.weight"])
        up = _lin(w, W[p + "mlp.up_proj.weight"])
        inner = F.silu(g) * up
        f = _lin(inner, W[p + "mlp.down_proj.weight"])
        x = x + f
        acts[L] = dict(u=u, q=q, k=k, v=v, a=a, o=o, w=w, g=g, up=up, inner=inner, f=f)
    final = gains["final"] if gains else W["model.norm.weight"]
    return _rms(x, final, eps), acts


def _reference_losses(model: LRCModel, ids, attention_mask):
    """Every loss component recomputed from raw tensors (teacher weights + projections)."""
    lrc = model.lrc_config
    t = model.teacher
    cfg = t.config
    T = {k: v.detach() for k, v in t.state_dict().items()}
    if cfg.tie_word_embeddings:
        T["lm_head.weight"] = T["model.embed_tokens.weight"]
    P = {k: v.detach() for k, v in model.projections.state_dict().items()}
    kept = [i for i in range(cfg.num_hidden_layers) if i not in lrc.del_layers]
    B, S = ids.shape
    key_mask = torch.ones(B, S, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

    # student weights: W_S = W_T W_p, written out here independently of lrc.generate
    Sw = {"model.embed_tokens.weight": T["model.embed_tokens.weight"] @ P["embed"].t()}
    Z_head = P["embed"] if lrc.tie_word_emb_proj else P["lm_head"]
    U_S = T["lm_head.weight"] @ Z_head.t()
    for L in kept:
        p, q = f"model.layers.{L}.", f"layers.{L}."
        for m in ("q", "k", "v"):
            A = P[q + m] if lrc.use_all_attn else P[q + "qkv"]
            Sw[p + f"self_attn.{m}_proj.weight"] = T[p + f"self_attn.{m}_proj.weight"] @ A
            if p + f"self_attn.{m}_proj.bias" in T:
                Sw[p + f"self_attn.{m}_proj.bias"] = T[p + f"self_attn.{m}_proj.bias"]
        for n in ("q_norm", "k_norm"):
            if p + f"self_attn.{n}.weight" in T:
                Sw[p + f"self_attn.{n}.weight"] = T[p + f"self_attn.{n}.weight"]
        Sw[p + "self_attn.o_proj.weight"] = P[q + "o"] @ T[p + "self_attn.o_proj.weight"]
        for m in ("gate", "up"):
            Pm = P[q + "mlp_in"] if lrc.use_in_out_mlp else P[q + m].t()
            Sw[p + f"mlp.{m}_proj.weight"] = T[p + f"mlp.{m}_proj.weight"] @ Pm
        Sw[p + "mlp.down_proj.weight"] = P[q + "down"] @ T[p + "mlp.down_proj.weight"]
    gains = {"final": P["final_norm"]}
    for L in kept:
        gains[f"{L}.in"], gains[f"{L}.post"] = P[f"layers.{L}.input_norm"], P[f"layers.{L}.post_attention_norm"]

    hT, aT = _forward(T, cfg, ids, key_mask, range(cfg.num_hidden_layers), cfg.rms_norm_eps, cfg.hidden_size)
    hS, aS = _forward(Sw, cfg, ids, key_mask, kept, lrc.target_rms_norm_eps, lrc.target_hidden_size, gains)

    valid = key_mask
    vf = valid.float()

    def D(s, tt):
        diff = s - tt
        if lrc.aux_loss_type == "nmse":  # relative squared error over the counted tokens
            return (diff.pow(2).sum(-1) * vf).sum() / (tt.pow(2).sum(-1) * vf).sum()
        per_tok = diff.pow(2).sum(-1) if lrc.aux_loss_type.startswith("mse") else diff.abs().sum(-1)
        n = vf.sum()
        if lrc.aux_loss_type in ("mseloss", "l1loss"):
            return (per_tok * vf).sum() / (n * s.shape[-1])
        return (per_tok * vf).sum() / n / (50.0 if lrc.aux_loss_type == "l1loss_v2" else 1.0)

    terms = {}
    for L in kept:
        if L in lrc.ban_layers:
            continue
        s_, t_ = aS[L], aT[L]
        p, q = f"model.layers.{L}.", f"layers.{L}."
        cand = {}
        if lrc.use_all_attn:
            cand["attn-q-sim-loss"] = (s_["q"], t_["q"])
            cand["attn-k-sim-loss"] = (s_["k"], t_["k"])
            cand["attn-v-sim-loss"] = (s_["v"], t_["v"])
        else:
            cand["attn-in-sim-loss"] = (s_["u"] @ P[q + "qkv"].t(), t_["u"])
        if lrc.attn_out_space == "teacher":
            cand["attn-out-sim-loss"] = (s_["a"] @ T[p + "self_attn.o_proj.weight"].t(), t_["o"])
        else:
            cand["attn-out-sim-loss"] = (s_["o"], t_["o"] @ P[q + "o"].t())
        if lrc.use_in_out_mlp:
            cand["mlp-in-loss"] = (s_["w"] @ P[q + "mlp_in"].t(), t_["w"])
            cand["mlp-out-loss"] = (s_["inner"] @ T[p + "mlp.down_proj.weight"].t(), t_["f"])
        else:
            cand["mlp-gate-loss"] = (s_["g"], t_["g"])
            cand["mlp-up-loss"] = (s_["up"], t_["up"])
            cand["mlp-out-loss"] = (s_["f"], t_["f"] @ P[q + "down"].t())
        for name, (a, b) in cand.items():
            if name not in lrc.ban_losses:
                terms[(L, name)] = D(a, b)

    zS = hS @ U_S.t()
    zT = hT @ T["lm_head.weight"].t()
    lt = torch.log_softmax(zT / lrc.kl_temperature, -1)
    ls = torch.log_softmax(zS / lrc.kl_temperature, -1)
    kl_tok = (lt.exp() * (lt - ls)).sum(-1)  # (B, S)
    kl_sum = (kl_tok * vf).sum()
    kl = kl_sum / B if lrc.kl_reduction == "sequence_sum" else kl_sum / vf.sum()
    logp = torch.log_softmax(zS, -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    ce_valid = (valid[:, :-1] & valid[:, 1:]).float()
    ce = (nll * ce_valid).sum() / ce_valid.sum()
    return ce, kl, terms


def _assert_close(a, b, what):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    assert abs(a - b) <= 1e-5 * max(abs(b), 1e-3), f"{what}: library {a} vs reference {b}"


VARIANTS = [
    # family, all_attn, in_out, attn_out_space, kl_reduction, aux_loss_type, del_layers, masked
    ("llama", True, False, "teacher", "sequence_sum", "mseloss", (), False),
    ("llama", True, False, "student", "token_mean", "mseloss", (), False),
    ("llama", True, False, "teacher", "token_mean", "mseloss", (), True),
    ("llama", True, False, "student", "sequence_sum", "mseloss", (), True),
    ("llama", False, True, "teacher", "sequence_sum", "mseloss_v2", (1,), False),
    ("llama", False, False, "student", "sequence_sum", "l1loss", (), True),
    ("qwen2", True, False, "teacher", "sequence_sum", "l1loss_v2", (), False),
    ("qwen2", False, True, "student", "token_mean", "mseloss", (0,), True),
    ("qwen3", True, False, "teacher", "sequence_sum", "mseloss", (2,), True),
    ("qwen3", True, True, "student", "token_mean", "mseloss", (), False),
    ("mistral", True, False, "student", "sequence_sum", "mseloss", (), False),
    ("llama", True, False, "student", "sequence_sum", "nmse", (), False),
    ("qwen2", True, False, "teacher", "token_mean", "nmse", (), True),
]


@pytest.mark.parametrize("family,all_attn,in_out,space,kl_red,aux,del_layers,masked", VARIANTS)
def test_losses_match_reference(family, all_attn, in_out, space, kl_red, aux, del_layers, masked):
    teacher = tiny_teacher(family, tied=(family != "mistral"))
    lrc = LRCConfig(target_hidden_size=32, use_all_attn=all_attn, use_in_out_mlp=in_out, attn_out_space=space,
                    kl_reduction=kl_red, aux_loss_type=aux, del_layers=del_layers, kl_temperature=2.0,
                    aux_loss_scale_factor=0.3, logits_chunk_tokens=7)
    model = LRCModel(teacher, lrc)
    randomize_projections(model)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 101, (2, 11), generator=g)
    mask = None
    if masked:
        mask = torch.ones(2, 11, dtype=torch.long)
        mask[1, 7:] = 0  # right padding on the second sequence
    out = model(ids, attention_mask=mask)
    with torch.no_grad():
        ce, kl, terms = _reference_losses(model, ids, mask)
    _assert_close(out.ce, ce, "ce")
    _assert_close(out.kl, kl, "kl")
    assert set(out.layer_terms) == set(terms)
    for key, ref in terms.items():
        _assert_close(out.layer_terms[key], ref, f"clone term {key}")
    clone = 0.3 * sum(terms.values())
    _assert_close(out.clone, clone, "clone")
    _assert_close(out.loss, ce + kl + clone, "total loss")


def test_kl_sequence_sum_is_sum_of_token_kls():
    """B=1: the official reduction equals the sum of per-token KLs (S x the mean), no tau^2."""
    teacher = tiny_teacher("llama")
    ids = torch.randint(0, 101, (1, 9))
    outs = {}
    for red in ("sequence_sum", "token_mean"):
        m = LRCModel(teacher, LRCConfig(target_hidden_size=32, kl_reduction=red, kl_temperature=40.0))
        randomize_projections(m)
        outs[red] = m(ids).kl
    assert torch.allclose(outs["sequence_sum"], 9 * outs["token_mean"], rtol=1e-5)


# ============================================================================ fused KL / CE kernel


@pytest.mark.parametrize("chunk, softcap", [(1, None), (5, None), (64, None), (1, 2.5), (5, 2.5), (64, 2.5)])
def test_fused_logit_losses_match_autograd(chunk, softcap):
    """The chunked, fused CE + KL (and, for Gemma 2, with its final-logit soft-cap) against autograd on the whole
    logits: chunked equals unchunked."""
    g = torch.Generator().manual_seed(0)
    N, ds, d, V = 13, 8, 12, 37
    h_s = torch.randn(N, ds, generator=g, dtype=torch.float64).requires_grad_()
    u_s = torch.randn(V, ds, generator=g, dtype=torch.float64).requires_grad_()
    h_t, u_t = torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(V, d, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[2, 9]] = -100
    kl_mask = torch.ones(N, dtype=torch.bool)
    kl_mask[[4, 5]] = False
    tau, w_ce, w_kl = 3.0, 0.7, 0.2
    loss, ce_sum, kl_sum = fused_logit_losses(h_s, u_s, targets, h_t=h_t, u_t=u_t, kl_mask=kl_mask, w_ce=w_ce,
                                              w_kl=w_kl, tau=tau, chunk_tokens=chunk, softcap=softcap)
    loss.backward()
    gh, gu = h_s.grad.clone(), u_s.grad.clone()
    h_s.grad = u_s.grad = None
    zs, zt = h_s @ u_s.t(), h_t @ u_t.t()
    if softcap:
        assert zs.abs().max() > softcap and zt.abs().max() > softcap  # the cap binds: the test data goes past it
        zs, zt = softcap * torch.tanh(zs / softcap), softcap * torch.tanh(zt / softcap)
    valid = targets >= 0
    ce_ref = F.cross_entropy(zs[valid], targets[valid], reduction="sum")
    lt, ls = torch.log_softmax(zt / tau, -1), torch.log_softmax(zs / tau, -1)
    kl_ref = ((lt.exp() * (lt - ls)).sum(-1) * kl_mask).sum()
    (w_ce * ce_ref + w_kl * kl_ref).backward()
    assert torch.allclose(ce_sum.double(), ce_ref, rtol=1e-5)
    assert torch.allclose(kl_sum.double(), kl_ref, rtol=1e-5)
    assert torch.allclose(gh, h_s.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(gu, u_s.grad, rtol=1e-5, atol=1e-7)


# ============================================================================ gradient reach


def _only_attn_out(space):
    others = [t for t in LRCConfig(target_hidden_size=32).clone_terms() if t != "attn-out-sim-loss"]
    return LRCConfig(target_hidden_size=32, attn_out_space=space, ban_losses=others, ban_layers=(1, 2),
                     use_ntp_loss=False, use_logits_loss=False)


def test_teacher_space_attn_out_gives_no_gradient_to_o_projection():
    model = LRCModel(tiny_teacher("llama"), _only_attn_out("teacher"))
    randomize_projections(model)
    model(torch.randint(0, 101, (2, 8))).loss.backward()
    layer0 = model.projections.layers["0"]
    assert layer0.o.grad is None or layer0.o.grad.abs().max() == 0
    assert layer0.q.grad.abs().max() > 0  # the term does train the input side
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.projections.layers["2"].parameters())


def test_student_space_attn_out_trains_o_projection():
    model = LRCModel(tiny_teacher("llama"), _only_attn_out("student"))
    randomize_projections(model)
    model(torch.randint(0, 101, (2, 8))).loss.backward()
    assert model.projections.layers["0"].o.grad.abs().max() > 0


def test_mlp_out_term_trains_down_projection_from_both_sides():
    others = [t for t in LRCConfig(target_hidden_size=32).clone_terms() if t != "mlp-out-loss"]
    model = LRCModel(tiny_teacher("llama"), LRCConfig(target_hidden_size=32, ban_losses=others, ban_layers=(1, 2),
                                                      use_ntp_loss=False, use_logits_loss=False))
    randomize_projections(model)
    model(torch.randint(0, 101, (2, 8))).loss.backward()
    assert model.projections.layers["0"].down.grad.abs().max() > 0


def test_teacher_never_gets_gradient_and_no_aux_means_no_clone_gradient():
    model = LRCModel(tiny_teacher("qwen2"), LRCConfig(target_hidden_size=32, use_aux_loss=False,
                                                      use_logits_loss=False, use_ntp_loss=False))
    randomize_projections(model)
    out = model(torch.randint(0, 101, (2, 8)))
    assert out.clone > 0  # still computed for logging
    assert not out.loss.requires_grad or out.loss.detach() == 0
    assert all(not p.requires_grad for p in model.teacher.parameters())


# ============================================================================ parameter counts


def _expected_count(d, ds, n_kept, all_attn, in_out, tie_proj):
    p_attn = 4 * d * ds if all_attn else 2 * d * ds
    p_ffn = 2 * d * ds if in_out else 3 * d * ds
    return n_kept * (p_attn + p_ffn + 2 * ds) + d * ds + ds + (0 if tie_proj else d * ds)


@pytest.mark.parametrize("all_attn,in_out,tie_proj,del_layers",
                         list(itertools.product((True, False), (True, False), (True, False), ((), (0, 2)))))
def test_trainable_count_matches_spec_formula(all_attn, in_out, tie_proj, del_layers):
    teacher = tiny_teacher("llama", layers=3)
    model = LRCModel(teacher, LRCConfig(target_hidden_size=32, use_all_attn=all_attn, use_in_out_mlp=in_out,
                                        tie_word_emb_proj=tie_proj, del_layers=del_layers))
    n = sum(p.numel() for p in model.trainable_parameters())
    assert n == _expected_count(64, 32, 3 - len(del_layers), all_attn, in_out, tie_proj)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"projections.{k}" for k, _ in model.projections.named_parameters()}
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_llama_3b_trainable_count_is_the_papers():
    """Spec §1.3 worked example: Llama-3.2-3B -> 1536 has 929,650,176 trainable parameters."""
    assert _expected_count(3072, 1536, 28, True, False, True) == 929_650_176
    from lrc.projections import LRCProjections

    with torch.device("meta"):
        proj = LRCProjections(3072, 1536, list(range(28)), LRCConfig(target_hidden_size=1536))
    assert sum(p.numel() for p in proj.parameters()) == 929_650_176


def test_initialisation_per_spec():
    torch.manual_seed(0)
    model = LRCModel(tiny_teacher("llama"), LRCConfig(target_hidden_size=32))
    mats = torch.cat([p.flatten() for p in model.projections.parameters() if p.ndim == 2])
    gains = torch.cat([p.flatten() for p in model.projections.parameters() if p.ndim == 1])
    assert abs(mats.std().item() - 0.02) < 0.002 and abs(mats.mean().item()) < 0.002
    assert torch.equal(gains, torch.ones_like(gains))


# ============================================================================ loss registry


def test_clone_term_names_default_variant():
    model = LRCModel(tiny_teacher("llama"), LRCConfig(target_hidden_size=32))
    out = model(torch.randint(0, 101, (1, 6)))
    expected = {"attn-q-sim-loss", "attn-k-sim-loss", "attn-v-sim-loss", "attn-out-sim-loss", "mlp-gate-loss",
                "mlp-up-loss", "mlp-out-loss"}
    assert set(out.terms) == expected
    assert {k for k in out.layer_terms} == {(L, n) for L in range(3) for n in expected}


@pytest.mark.parametrize("banned", ["attn-k-sim-loss", "attn-out-sim-loss", "mlp-out-loss"])
def test_banning_removes_exactly_that_term(banned):
    teacher = tiny_teacher("qwen2")  # the official code's Qwen2 ban-key mix-up must not happen here
    ids = torch.randint(0, 101, (2, 6))
    full = LRCModel(teacher, LRCConfig(target_hidden_size=32))
    randomize_projections(full)
    ban = LRCModel(teacher, LRCConfig(target_hidden_size=32, ban_losses=(banned,)))
    ban.projections.load_state_dict(full.projections.state_dict())
    a, b = full(ids), ban(ids)
    assert set(a.layer_terms) - set(b.layer_terms) == {(L, banned) for L in range(3)}
    for k, v in b.layer_terms.items():
        assert torch.equal(v, a.layer_terms[k])


def test_ban_layers_removes_that_layers_terms():
    teacher = tiny_teacher("llama")
    out = LRCModel(teacher, LRCConfig(target_hidden_size=32, ban_layers=(1,)))(torch.randint(0, 101, (1, 6)))
    assert {L for L, _ in out.layer_terms} == {0, 2}


# ============================================================================ config and families


def test_config_json_round_trip():
    c = LRCConfig(target_hidden_size=32, del_layers="1,2", ban_losses="attn-q-sim-loss,no", kl_reduction="token_mean")
    assert c.del_layers == (1, 2) and c.ban_losses == ("attn-q-sim-loss",)
    assert LRCConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("kwargs,needle", [
    (dict(target_hidden_size=64), "must be smaller than the teacher's hidden_size=64"),
    (dict(target_hidden_size=32, ban_losses=("attn-q-sim-loss-typo",)), "unknown clone-term name"),
    (dict(target_hidden_size=32, use_all_attn=False, ban_losses=("attn-q-sim-loss",)), "valid names"),
    (dict(target_hidden_size=32, del_layers=(3,)), "del_layers: layer index [3] out of range"),
    (dict(target_hidden_size=32, ban_layers=(7,)), "ban_layers: layer index [7] out of range"),
    (dict(target_hidden_size=32, del_layers=(0, 1, 2)), "removes all 3 teacher layers"),
    (dict(target_hidden_size=32, aux_loss_type="mse"), "aux_loss_type must be one of"),
    (dict(target_hidden_size=32, kl_reduction="mean"), "kl_reduction must be one of"),
    (dict(target_hidden_size=32, attn_out_space="paper"), "attn_out_space must be one of"),
    (dict(target_hidden_size=0), "positive integer"),
])
def test_config_rejects_contradictions(kwargs, needle):
    teacher = tiny_teacher("llama")
    with pytest.raises(LRCConfigError) as e:
        LRCConfig(**kwargs).validate(teacher.config)
    assert needle in str(e.value)


def test_unknown_config_field_rejected():
    with pytest.raises(LRCConfigError, match="unknown LRC config field"):
        LRCConfig.from_dict({"target_hidden_size": 8, "zoom": 1})


def test_unsupported_family_is_refused():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedTeacherError, match="supported families: " + ", ".join(SUPPORTED_FAMILIES)):
        student_config(GPT2Config(), LRCConfig(target_hidden_size=8))


def test_student_config_is_the_teachers_but_narrower():
    t = tiny_teacher("qwen3", layers=4)
    c = student_config(t.config, LRCConfig(target_hidden_size=32, del_layers=(1,), target_rms_norm_eps=1e-5))
    assert (c.hidden_size, c.head_dim, c.num_hidden_layers, len(c.layer_types)) == (32, 24, 3, 3)
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (4, 2, 96)
    assert c.rms_norm_eps == 1e-5 and c.rope_parameters == t.config.rope_parameters


def test_bf16_teacher_with_fp32_master_projections_trains():
    """The mixed-precision layout (bf16 frozen teacher, fp32 trainable tensors) needs no autocast."""
    teacher = tiny_teacher("qwen3").to(torch.bfloat16)
    model = LRCModel(teacher, LRCConfig(target_hidden_size=32))
    out = model(torch.randint(0, 101, (2, 8)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name, p in model.projections.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name


@pytest.mark.parametrize("family,masked", [("llama", False), ("qwen3", True)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family, masked):
    teacher = tiny_teacher(family)
    lrc = LRCConfig(target_hidden_size=32, attn_out_space="student")
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = None
    if masked:
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[0, 6:] = 0
    results = []
    for gc in (False, True):
        model = LRCModel(teacher, lrc)
        randomize_projections(model)
        if gc:
            model.enable_gradient_checkpointing()
        for _ in range(2):  # twice: the second step must not reuse the first step's hooks or targets
            model.projections.zero_grad()
            out = model(ids, attention_mask=mask)
            out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.projections.named_parameters()}))
    (a, ga), (b, gb) = results
    assert torch.allclose(a.loss, b.loss, rtol=1e-6)
    assert a.layer_terms.keys() == b.layer_terms.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-5, atol=1e-7), k
