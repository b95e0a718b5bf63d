"""Train what you deploy: the full-matrix MLP terms of Dense-LRC and CORE-LRC, and the reachability audit.

Plain LRC ties every student MLP matrix to the teacher's (docs/METHOD.md §2):

- gate / up: ``W_S = W_T P`` (I x d_s) has its columns in the column space of ``W_T`` (I x d), a
  subspace of R^I of dimension r = rank(W_T) <= d;
- down: ``W_S = C W_T`` (d_s x I) has its rows in the row space of ``W_T`` (d x I), again of dimension r.

So (I - r) / I of each deployed MLP matrix can never be trained (62.5 % for SmolLM2-135M and
Llama-3.2-3B, 81.4 % for Qwen2.5-3B). ``LRCConfig.mlp_train`` ("Train What You Deploy", arXiv
2609.02006) adds a zero-initialised term ``Delta`` to the three generated MLP weights:

- ``dense``: ``W = W_T P + M`` with ``M`` a full trainable matrix of the deployed shape;
- ``core``: ``W = W_T P + Pi_perp(M)``, where ``Pi_perp`` projects onto the orthogonal complement of the
  teacher's column space (gate / up: ``M - Q (Q^T M)``) or row space (down: ``M - (M Q) Q^T``), and
  ``Q`` (I x r) is an orthonormal basis of that space from the teacher's fp64 SVD. Delta then adds exactly
  the directions plain LRC cannot reach.

``M`` is stored in the deployed shape in both modes (``layers.L.gate_delta``: (I, d_s), ``up_delta``:
(I, d_s), ``down_delta``: (d_s, I)), zero at step 0, so step 0 is plain LRC exactly. CORE keeps ``M`` in
full and projects it, rather than training coordinates in a complement basis, because the projector
``Q Q^T`` depends only on the teacher's column space (unique), while a basis of the complement is an
arbitrary choice among the zero singular values: recomputing ``Q`` at conversion, on any machine, gives
the same Delta up to rounding, and nothing but ``M`` has to be stored. The price: ``M``'s r x d_s
components inside the teacher's space are dead parameters (no gradient, they stay 0).

Rank tolerance: a singular value counts when ``sigma > sigma_max * max(m, n) * eps_fp32`` (NumPy's
``matrix_rank`` rule at fp32 precision: teacher weights are stored in bf16/fp32, smaller singular values
are rounding noise).

Trainable parameters added per kept layer (both modes): ``3 * I * d_s``. CORE also holds the frozen
bases, ``I * (r_gate + r_up + r_down)`` fp32 values per kept layer (``3 * I * d`` for full-rank teachers),
outside the optimizer and the checkpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lrc.config import MLP_TRAIN_MODES  # noqa: F401  (re-exported: the modes live with the config)
from lrc.families import LLAMA_LIKE, Family

MLP_KINDS = ("gate", "up", "down")
RANK_EPS = torch.finfo(torch.float32).eps


def delta_name(kind: str) -> str:
    """Parameter name of a layer's Delta for one MLP matrix kind (``gate_delta`` ...)."""
    return f"{kind}_delta"


def delta_shape(kind: str, intermediate: int, d_s: int) -> tuple[int, int]:
    """Deployed shape of the student's MLP matrix: gate / up (I, d_s), down (d_s, I)."""
    return (d_s, intermediate) if kind == "down" else (intermediate, d_s)


def _linalg_device() -> torch.device:
    """This process's GPU: the fp64 factorisations run there when there is one (the teacher may still be
    on the CPU when the model is built; on CPU the audit and CORE's bases take minutes for a 3B teacher)."""
    return torch.device("cuda", torch.cuda.current_device())


def rank_tolerance(sigma_max: float, shape: tuple[int, ...]) -> float:
    """Singular values at or below this are treated as zero (see the module docstring)."""
    return sigma_max * max(shape) * RANK_EPS


def numerical_rank(w: Tensor) -> int:
    """Rank of a matrix by ``rank_tolerance``, its singular values from the fp64 Gram matrix of its short side
    (computed on this process's GPU if there is one).

    sigma^2 = eig(A^T A) resolves singular values down to about 1e-8 sigma_max in fp64, far below the
    tolerance (>= 1e-4 sigma_max for any teacher matrix), at a quarter of an SVD's cost for a tall
    matrix such as the embedding.
    """
    a = w.detach().to(_linalg_device(), torch.float64) if torch.cuda.is_available() else w.detach().to(torch.float64)
    if a.shape[0] < a.shape[1]:
        a = a.t()
    if a.numel() == 0:
        return 0
    s = torch.linalg.eigvalsh(a.t() @ a).clamp_min(0).sqrt()  # ascending
    if s[-1] == 0:
        return 0
    return int((s > rank_tolerance(float(s[-1]), tuple(w.shape))).sum())


def reachable_space_basis(w: Tensor, kind: str) -> Tensor:
    """Orthonormal basis Q (I x r, fp32) of the space plain LRC reaches in R^I for one teacher MLP matrix.

    gate / up (``w``: (I, d)): the column space of ``w``; down (``w``: (d, I)): its row space. fp64 SVD on
    the tensor's device; deterministic for a given device and library build.
    """
    a = w.detach().to(torch.float64)
    if kind == "down":
        a = a.t()
    u, s, _ = torch.linalg.svd(a, full_matrices=False)  # u: (I, min(I, d))
    r = int((s > rank_tolerance(float(s[0]), tuple(a.shape))).sum()) if s.numel() and s[0] > 0 else 0
    return u[:, :r].to(torch.float32).contiguous()


def core_bases(teacher_params: Mapping[str, Tensor], kept_layers: list[int],
               family: Family = LLAMA_LIKE) -> dict[tuple[int, str], Tensor]:
    """``(teacher layer, kind) -> Q`` for every kept layer's gate, up and down (``reachable_space_basis``; the
    names are the teacher ``family``'s).

    Computed on this process's GPU when there is one (fp64 SVD of 3 x 28 matrices of 8192 x 3072 for
    Llama-3.2-3B: minutes on CPU), returned on the teacher's device. Under several processes every rank
    computes its own from identical weights, and the fingerprints are compared: replicas with different
    bases would train different students, so that stops the run.
    """
    work = _linalg_device() if torch.cuda.is_available() else None
    bases = {}
    for L in kept_layers:
        for kind in MLP_KINDS:
            w = teacher_params[f"{family.layers}.{L}.{family.linear(kind)}.weight"]
            bases[(L, kind)] = reachable_space_basis(w if work is None else w.to(work), kind).to(w.device)
    _check_same_on_every_rank(bases)
    return bases


def _check_same_on_every_rank(bases: Mapping[tuple[int, str], Tensor]) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = bases_fingerprint(bases)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if len(set(everyone)) > 1:
        from lrc.errors import LRCError

        raise LRCError(f"mlp_train='core': the ranks computed different CORE bases from the same teacher "
                       f"(fingerprints by rank: {everyone}); the processes' linear-algebra libraries or devices differ")


def bases_fingerprint(bases: Mapping[tuple[int, str], Tensor]) -> str:
    """sha256 (16 hex digits) of all bases' fp32 bytes, in (layer, kind) order: recorded in checkpoints."""
    h = hashlib.sha256()
    for key in sorted(bases):
        q = bases[key].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{key}:{tuple(q.shape)}".encode())
        h.update(q.numpy().tobytes())
    return h.hexdigest()[:16]


def complement_projection(m: Tensor, q: Tensor, kind: str) -> Tensor:
    """Pi_perp(M): the part of M outside the teacher's reachable space.

    Args:
        m: (I, d_s) for gate / up, (d_s, I) for down.
        q: (I, r) orthonormal basis of the reachable space (``reachable_space_basis``).
    Returns:
        gate / up: ``M - Q (Q^T M)``; down: ``M - (M Q) Q^T``; same shape as ``m``, computed in q's dtype.
    """
    m = m.to(q.dtype)
    if kind == "down":
        return m - (m @ q) @ q.t()
    return m - q @ (q.t() @ m)


def mlp_delta(mode: str, kind: str, m: Tensor, basis: Tensor | None) -> Tensor:
    """The Delta added to a generated MLP weight: ``m`` (dense) or its complement projection (core)."""
    if mode == "dense":
        return m
    if mode == "core":
        if basis is None:
            raise KeyError(f"CORE basis for {kind} is missing")
        return complement_projection(m, basis, kind)
    raise ValueError(f"mlp_train {mode!r} has no Delta")


# ---------------------------------------------------------------------------------------------- the audit
@dataclass
class AuditRow:
    """Degrees of freedom of one student matrix kind, summed over the layers that have it."""

    kind: str
    """q, k, v, o, gate, up, down, embed, lm_head."""
    deployed: int
    """Entries of the deployed student matrices."""
    reachable: int
    """Dimension of the set of deployed matrices training can reach in the chosen mode."""
    trainable_params: int
    """Trainable tensor entries generating this kind (shared projections counted for each kind using them)."""

    @property
    def fraction(self) -> float:
        return self.reachable / self.deployed if self.deployed else 1.0

    def to_dict(self) -> dict[str, float | int | str]:
        return {"kind": self.kind, "deployed": self.deployed, "reachable": self.reachable,
                "trainable_params": self.trainable_params, "reachable_fraction": round(self.fraction, 6)}


IN_SIDE_KINDS = ("q", "k", "v", "gate", "up")
OUT_SIDE_KINDS = ("o", "down")


def reachability_audit(teacher_params: Mapping[str, Tensor], kept_layers: list[int], d_s: int, mode: str,
                       teacher_tied: bool, tie_word_emb_proj: bool,
                       ranks: Mapping[tuple[int, str], int] | None = None,
                       family: Family = LLAMA_LIKE) -> list[AuditRow]:
    """Deployed vs reachable degrees of freedom per matrix kind (ranks by ``numerical_rank``).

    Input side (q, k, v, gate, up; ``W_T``: out x d): deployed ``out * d_s``, reachable ``r * d_s``.
    Output side (o, down; ``W_T``: d x in): deployed ``d_s * in``, reachable ``d_s * r``.
    Embedding / head (``E_T``: V x d): deployed ``V * d_s``, reachable ``r * d_s``.
    In dense / core mode the MLP kinds reach everything (``out * d_s``). ``ranks`` may supply known ranks
    by (layer, kind) to skip their SVD.
    """
    rows: dict[str, AuditRow] = {}

    def add(kind: str, deployed: int, reachable: int, trainable: int) -> None:
        row = rows.setdefault(kind, AuditRow(kind, 0, 0, 0))
        row.deployed += deployed
        row.reachable += reachable
        row.trainable_params += trainable

    for L in kept_layers:
        for kind in IN_SIDE_KINDS + OUT_SIDE_KINDS:
            w = teacher_params[f"{family.layers}.{L}.{family.linear(kind)}.weight"]
            r = ranks[(L, kind)] if ranks and (L, kind) in ranks else numerical_rank(w)
            out_dim, in_dim = w.shape
            wide = out_dim if kind in IN_SIDE_KINDS else in_dim  # the axis the student keeps
            deployed = wide * d_s
            full_mlp = kind in MLP_KINDS and mode != "lrc"
            reachable = deployed if full_mlp else r * d_s
            trainable = w.shape[1] * d_s if kind in IN_SIDE_KINDS else w.shape[0] * d_s  # the projection
            if full_mlp:
                trainable += deployed
            add(kind, deployed, reachable, trainable)
    e = teacher_params[f"{family.embed}.weight"]
    r = numerical_rank(e)
    add("embed", e.shape[0] * d_s, r * d_s, e.shape[1] * d_s)
    if f"{family.head}.weight" in teacher_params and not teacher_tied:
        u = teacher_params[f"{family.head}.weight"]
        ru = numerical_rank(u)
        add("lm_head", u.shape[0] * d_s, ru * d_s, 0 if tie_word_emb_proj else u.shape[1] * d_s)
    elif not tie_word_emb_proj:
        add("lm_head", e.shape[0] * d_s, r * d_s, e.shape[1] * d_s)
    order = ("q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head")
    return [rows[k] for k in order if k in rows]


def format_audit(rows: list[AuditRow], mode: str) -> str:
    """The audit as a printed table (one line per matrix kind)."""
    lines = [f"reachability audit (--mlp_train {mode}): deployed vs reachable degrees of freedom, all kept layers",
             f"  {'matrix':<8} {'deployed':>14} {'reachable':>14} {'fraction':>9} {'trainable params':>17}"]
    for r in rows:
        lines.append(f"  {r.kind:<8} {r.deployed:>14,} {r.reachable:>14,} {r.fraction:>8.1%} {r.trainable_params:>17,}")
    return "\n".join(lines)


def added_trainable_parameters(num_kept_layers: int, intermediate: int, d_s: int, mode: str) -> int:
    """Trainable entries dense / core add over plain LRC: ``3 * I * d_s`` per kept layer (0 for lrc)."""
    return 0 if mode == "lrc" else num_kept_layers * 3 * intermediate * d_s
