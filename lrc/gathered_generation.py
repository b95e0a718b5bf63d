"""Weight generation and teacher-space clone terms against a sharded teacher (``lrc.sharded_teacher``).

W_S = W_T P reads each teacher matrix twice per generation: in forward (the product) and in backward
(dL/dP = W_T^T dL/dW_S). With a sharded teacher (docs/METHOD.md section 9):

- **forward**: each unit's student tensors are generated in a pre-forward hook of the unit, inside the teacher's
  own forward, while FSDP holds the unit gathered for it: no gather of its own (``UnitGeneration.collecting``);
- **backward**: one autograd node for the whole generation (``_GatheredGeneration``) walks every unit in reverse
  order, gathering each (the next one prefetched), and runs the backward of the graph the hook recorded for the
  unit's tensors. That graph saved the unit's gathered tensors by reference; FSDP frees their storage at reshard
  and refills the same storage when the unit is gathered again, so nothing is recomputed and nothing of the
  teacher stays allocated in between. Every rank walks every unit in the same order (a gather is a collective),
  whatever share of the tensors it generated under ``--shard_generation`` (``lrc.sharded_generation``).

A teacher-space clone term (``a_S W_o^T`` vs ``o_T``) reads the teacher's matrix in the student's forward and
backward: ``teacher_linear`` gathers that matrix's own unit both times.

What is computed is exactly ``lrc.generate.generate_student_weights`` (the same function, on the unit's tensors):
the gradient of every projection is the same sum of the same products as with a whole teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from lrc.generate import generate_student_weights
from lrc.sharded_teacher import TeacherUnits

Generate = Callable[[Mapping[str, Tensor], list[str]], dict[str, Tensor]]
"""``generate(teacher tensors by name, student names) -> student tensors`` (``lrc.generate``, bound to the model)."""


class UnitGeneration:
    """The student's weights generated unit by unit from a sharded teacher (module docstring)."""

    def __init__(self, units: TeacherUnits, generate: Generate, unit_of: Mapping[str, str | None],
                 differentiable: set[str], params: list[Tensor]):
        """``unit_of``: student name -> the teacher unit its generation reads (None: none, a trainable gain);
        ``differentiable``: the names whose generation depends on ``params`` (the trainable tensors)."""
        self.units = units
        self.generate = generate
        self.unit_of = dict(unit_of)
        self.differentiable = differentiable
        self.params = params
        needed = {u for n, u in self.unit_of.items() if u is not None and n in differentiable}
        self.backward_order = [u for u in reversed(units.order) if u in needed]
        """The units the generation's backward gathers, in its order."""

    def _generate_unit(self, tparams: Mapping[str, Tensor], names: list[str], graph: bool = False
                       ) -> dict[str, Tensor]:
        with torch.enable_grad() if graph else torch.no_grad():
            out = self.generate(tparams, names)
        # a kept teacher tensor (a q/k norm, an input-side bias) is the gathered storage itself, freed at reshard
        return {n: w if n in self.differentiable else w.detach().clone() for n, w in out.items()}

    @contextmanager
    def collecting(self, names: list[str], graph: bool) -> Iterator[dict[str, Tensor]]:
        """Generate the unit-read ``names`` during the teacher forward run inside the block, recording their autograd
        graph when ``graph`` (joined to the loss by ``weights``); yields the dict they are written to. Units the
        forward does not reach (an untied head) are gathered at the end, one at a time."""
        wanted: dict[str, list[str]] = {}
        for n in names:
            u = self.unit_of[n]
            if u is not None:
                wanted.setdefault(u, []).append(n)
        out: dict[str, Tensor] = {}
        handles = []
        for unit, its in wanted.items():
            def hook(module, args, unit=unit, its=its):
                out.update(self._generate_unit(self.units.params(unit), its, graph))

            handles.append(self.units.module(unit).register_forward_pre_hook(hook))
        try:
            yield out
        finally:
            for h in handles:
                h.remove()
        for unit in self.units.order:  # a unit the forward did not reach, in the same order on every rank
            its = wanted.get(unit)
            if its and its[0] not in out:
                with self.units.gathered(unit) as tparams:
                    out.update(self._generate_unit(tparams, its, graph))

    def weights(self, collected: Mapping[str, Tensor], names: list[str]) -> dict[str, Tensor]:
        """``names``' tensors with autograd: those ``collecting`` generated, joined to the projections through
        ``_GatheredGeneration``, and the gains generated here."""
        diff = [n for n in names if n in collected and n in self.differentiable]
        local = [n for n in names if self.unit_of[n] is None]
        out = dict(self.generate({}, local)) if local else {}
        graphs = [collected[n] for n in diff]
        if diff and any(g.requires_grad for g in graphs):
            out.update(zip(diff, _GatheredGeneration.apply(self, tuple(diff), graphs, *self.params)))
        else:
            out.update(zip(diff, graphs))
        out.update((n, collected[n]) for n in names if n in collected and n not in self.differentiable)
        missing = [n for n in names if n not in out]
        if missing:
            raise RuntimeError(f"the sharded teacher's forward did not generate {missing[:3]}")
        return out

    @torch.no_grad()
    def all_weights(self, names: list[str]) -> dict[str, Tensor]:
        """``names``' tensors without autograd, gathering unit by unit (a collective: every rank calls it)."""
        by_unit: dict[str | None, list[str]] = {}
        for n in names:
            by_unit.setdefault(self.unit_of[n], []).append(n)
        out = dict(self.generate({}, by_unit[None])) if None in by_unit else {}
        for unit in self.units.order:
            if unit in by_unit:
                with self.units.gathered(unit) as tparams:
                    out.update(self._generate_unit(tparams, by_unit[unit]))
        return out


class _GatheredGeneration(torch.autograd.Function):
    """Identity on the generated tensors in forward; in backward, the generation's backward unit by unit."""

    @staticmethod
    def forward(ctx, gen: UnitGeneration, names: tuple[str, ...], graphs: list[Tensor], *params: Tensor):
        """``graphs``: the tensors of ``names`` as the hooks generated them, with their recorded graph."""
        ctx.gen, ctx.names, ctx.graphs = gen, names, graphs
        return tuple(g.detach() for g in graphs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        gen, params, graphs = ctx.gen, ctx.gen.params, ctx.graphs
        ctx.graphs = None
        todo: dict[str, list[tuple[Tensor, Tensor]]] = {}
        for n, w, g in zip(ctx.names, graphs, grads):
            if g is not None and w.requires_grad:
                todo.setdefault(gen.unit_of[n], []).append((w, g))
        acc: list[Tensor | None] = [None] * len(params)
        order = gen.backward_order
        for i, unit in enumerate(order):
            with gen.units.gathered(unit, prefetch=order[i + 1] if i + 1 < len(order) else None):
                its = todo.pop(unit, None)
                if not its:
                    continue
                got = torch.autograd.grad([w for w, _ in its], params, [g for _, g in its], allow_unused=True)
            acc = [a if b is None else b if a is None else a + b for a, b in zip(acc, got)]
        # every parameter gets a gradient (zero where unused), so DDP's and DeepSpeed's hooks fire on every rank
        return (None, None, None, *[torch.zeros_like(p) if a is None else a for a, p in zip(acc, params)])


class _GatheredLinear(torch.autograd.Function):
    """``x W^T + b`` with the teacher linear of ``unit`` gathered in forward and again in backward."""

    @staticmethod
    def forward(ctx, units: TeacherUnits, unit: str, x: Tensor) -> Tensor:
        ctx.units, ctx.unit = units, unit
        with units.gathered(unit) as p:
            return torch.nn.functional.linear(x, p[f"{unit}.weight"], p.get(f"{unit}.bias"))

    @staticmethod
    def backward(ctx, g: Tensor):
        with ctx.units.gathered(ctx.unit) as p:
            return None, None, g @ p[f"{ctx.unit}.weight"].to(g.dtype)


def teacher_linear(units: TeacherUnits, unit: str, x: Tensor) -> Tensor:
    """(..., in) -> (..., out): the teacher's linear ``unit`` (a module path) applied to ``x``, differentiable in
    ``x``; the weight is gathered for the product and again for its backward (a collective)."""
    return _GatheredLinear.apply(units, unit, x)


def plan_unit_generation(model, units: TeacherUnits) -> UnitGeneration:
    """The ``UnitGeneration`` of ``model`` (an ``lrc.model.LRCModel``) on ``units``: which teacher unit each student
    tensor's generation reads, found by generating each on meta tensors with a dict that records what is read."""
    meta = {n: torch.empty(p.shape, dtype=p.dtype, device="meta") for n, p in model.teacher.named_parameters()}
    unit_of: dict[str, str | None] = {}
    for name in model._student_param_names:
        read: set[str] = set()
        model.meta_generation([name], _Recording(meta, read))
        holders = {units.unit_of(n) for n in read}
        if len(holders) > 1:
            raise AssertionError(f"{name} is generated from several teacher units: {sorted(holders)}")
        unit_of[name] = holders.pop() if holders else None
    weights = model.meta_generation(model._student_param_names, meta)
    differentiable = {n for n, w in weights.items() if w.requires_grad}
    dtype = model.teacher.get_input_embeddings().weight.dtype

    def generate(tparams, names):
        return generate_student_weights(tparams, model.projections, model.lrc_config, model.kept_layers, names,
                                        model.teacher_tied, dtype, core_bases=model.core_bases(),
                                        family=model.family)

    return UnitGeneration(units, generate, unit_of, differentiable, model.trainable_parameters())


class _Recording(dict):
    """A dict that adds every key read through ``[]`` to ``read`` (which teacher tensors a generation reads)."""

    def __init__(self, data: dict, read: set[str]):
        super().__init__(data)
        self.read = read

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)
