"""The activation clone terms (docs/METHOD.md §4.1): where the teacher's targets are captured, where each
student term is computed.

``capture_teacher`` hooks the teacher's linears during its forward and stores each kept layer's targets;
``student_losses`` hooks the student's linears during its forward and computes each term as soon as the student's
activation exists (``student_term``: the pair compared; ``lrc.losses.clone_distance``: the distance), dropping the
teacher's target once used. ``model`` is the ``lrc.model.LRCModel``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lrc import config as C
from lrc.losses import clone_distance

# Where each clone term is taken: (the linear kind of the decoder layer, "in" | "out": its input or its output). The
# teacher's target is captured there, and the student's term is computed by a hook on the same module (the module's
# path comes from the family, ``lrc.families.Family.linear``).
CAPTURE = {
    C.ATTN_Q: ("q", "out"), C.ATTN_K: ("k", "out"), C.ATTN_V: ("v", "out"), C.ATTN_IN: ("q", "in"),
    C.ATTN_OUT: ("o", "out"), C.MLP_GATE: ("gate", "out"), C.MLP_UP: ("up", "out"), C.MLP_IN: ("gate", "in"),
    C.MLP_OUT: ("down", "out"),
}


@contextmanager
def capture_teacher(model, store: dict):
    """While inside: forward hooks on the teacher store each kept, non-banned layer's clone targets in
    ``store[(teacher layer, term)]`` (the linear's input or output, ``CAPTURE``)."""
    handles = []
    layers = model.teacher.get_submodule(model.family.layers)
    banned_layers = set(model.lrc_config.ban_layers)
    for L in model.kept_layers:
        if L in banned_layers:
            continue
        for term in model.lrc_config.active_clone_terms():
            kind, side = CAPTURE[term]
            path = model.family.linear(kind)

            def hook(mod, args, out, L=L, term=term, side=side):
                store[(L, term)] = args[0] if side == "in" else out

            handles.append(layers[L].get_submodule(path).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def student_term(model, L: int, term: str, args, out: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(student tensor, target tensor) of one clone term for teacher layer L."""
    lrc, proj = model.lrc_config, model.projections.layers[str(L)]
    if term in (C.ATTN_Q, C.ATTN_K, C.ATTN_V, C.MLP_GATE, C.MLP_UP):
        return out, target
    if term == C.ATTN_IN:  # u_S A^T vs u_T
        return args[0] @ proj.qkv.to(args[0].dtype).t(), target
    if term == C.MLP_IN:  # w_S A_m^T vs w_T
        return args[0] @ proj.mlp_in.to(args[0].dtype).t(), target
    if term == C.ATTN_OUT:
        if lrc.attn_out_space == "teacher":  # a_S W_o^T (+ b_o) vs o_T, width d
            return teacher_linear(model, L, "o", args[0]), target
        return out, nn.functional.linear(target, proj.o.to(target.dtype))  # o_S vs o_T C_o^T
    if term == C.MLP_OUT:
        if lrc.use_in_out_mlp:  # teacher space: (student FFN inner) W_d^T vs f_T
            return teacher_linear(model, L, "down", args[0]), target
        return out, nn.functional.linear(target, proj.down.to(target.dtype))  # f_S vs f_T C_d^T
    raise AssertionError(term)


def teacher_linear(model, L: int, kind: str, x: Tensor) -> Tensor:
    """The teacher's linear ``kind`` of layer L applied to ``x`` (gathered when the teacher is sharded)."""
    path = f"{model.family.layers}.{L}.{model.family.linear(kind)}"
    if model.units is not None:
        from lrc.gathered_generation import teacher_linear as gathered_linear

        return gathered_linear(model.units, path, x)
    m = model.teacher.get_submodule(path)
    return nn.functional.linear(x, m.weight, m.bias)


@contextmanager
def student_losses(model, store: dict, results: dict, mask: Tensor | None):
    """While inside: forward hooks on the student compute each clone term as soon as its activation exists,
    into ``results[(teacher layer, term)]`` (the target taken from ``store``; ``mask``: (B, S) counted
    positions or None)."""
    lrc = model.lrc_config
    handles = []
    layers = model.student.get_submodule(model.family.layers)
    banned_layers = set(lrc.ban_layers)
    grad_ctx = torch.enable_grad if lrc.use_aux_loss else torch.no_grad
    for j, L in enumerate(model.kept_layers):
        if L in banned_layers:
            continue
        for term in lrc.active_clone_terms():

            def hook(mod, args, out, L=L, term=term):
                # Without checkpointing the target is dropped once used; with it, the backward
                # replay of the layer recomputes the same term (and only the first value counts).
                target = store.get((L, term)) if model.gradient_checkpointing else store.pop((L, term), None)
                if target is None:
                    return
                with grad_ctx():
                    s, t = student_term(model, L, term, args, out, target)
                    # Without checkpointing nothing reads the popped target again: reuse it.
                    d = clone_distance(s, t, lrc.aux_loss_type, mask,
                                       target_is_scratch=not model.gradient_checkpointing)
                results.setdefault((L, term), d)

            handles.append(layers[j].get_submodule(model.family.linear(CAPTURE[term][0])).register_forward_hook(hook))
    try:
        yield
    finally:
        if model.gradient_checkpointing:
            model._gc_hooks = handles  # removed at the next forward, after this step's backward
        else:
            for h in handles:
                h.remove()
