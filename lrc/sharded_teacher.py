"""The sharded teacher (``--shard_teacher``): each of N ranks holds 1/N of the frozen teacher, torch FSDP2 gathers it
one unit at a time (docs/METHOD.md section 9, docs/DESIGN.md "Sharded teacher").

Units (``fully_shard`` groups), in the order the teacher's forward reaches them:

- the backbone (FSDP's root: the final norm), then the embedding, a unit of its own (gathered for the lookup, and
  again for the KL when the head is tied to it);
- per decoder layer: the layer, and, inside it, the linears whose teacher weight a clone term reads again in the
  student's pass (``LRCConfig.teacher_space_linears``: the attention output projection for the default
  ``attn_out_space="teacher"``), as units of their own, so that those re-reads gather one matrix, not the layer;
- the head (untied teachers only; it is never forwarded, it is gathered explicitly).

FSDP's own hooks gather a unit for the teacher's forward (the next layer prefetched) and free it after; the
backbone (FSDP's root, which FSDP keeps gathered after its forward) is freed after the loss's forward
(``TeacherUnits.release_root``). The head is never gathered for the KL: each rank's rows give its slice of every
rank's logits (``TeacherUnits.head_logits``, ``lrc.sharded_head``).
Everything else (the weight generation and its backward, the clone terms, CORE's bases) gathers explicitly with
``TeacherUnits.gathered``: FSDP's public ``unshard`` / ``reshard``, never a hand-written all-gather.

Loading (``load_sharded_teacher``): the model is built with its parameters on the meta device (accelerate's
``init_empty_weights``; buffers are real), sharded, and each rank reads from the safetensors files only the rows of
each tensor it holds (FSDP shards dim 0 as ``torch.chunk`` does; ``lrc.tensor_files.read_rows``). No rank, rank 0
included, ever holds the whole teacher in host or device memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lrc.families import Family, family_of, is_tied
from lrc.sharded_head import ShardedHeadLogits, shard_rows
from lrc.teacher import TeacherError, allocate, empty_causal_lm, weight_files


class TeacherUnits:
    """A teacher sharded with FSDP2: its units (module docstring), and gathering one at a time."""

    def __init__(self, teacher: nn.Module, mesh, linears: tuple[str, ...] = ()):
        """Shard ``teacher`` (parameters on any device, meta included) over ``mesh`` (a 1-D ``DeviceMesh``);
        ``linears``: the linear kinds (``Family.linear``) that get units of their own in every layer."""
        from torch.distributed.fsdp import fully_shard

        self.teacher = teacher
        self.linears = tuple(linears)
        self.family: Family = family_of(teacher.config)
        self.tied = is_tied(teacher.config)
        fam = self.family
        teacher.requires_grad_(False)
        layers = teacher.get_submodule(fam.layers)
        fully_shard(teacher.get_submodule(fam.embed), mesh=mesh, reshard_after_forward=True)
        order: list[str] = [fam.backbone, fam.embed]
        for i, layer in enumerate(layers):
            own = [f"{fam.layers}.{i}.{fam.linear(k)}" for k in linears]
            for path in own:
                fully_shard(teacher.get_submodule(path), mesh=mesh, reshard_after_forward=True)
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
            order.append(f"{fam.layers}.{i}")
            order.extend(own)  # reached inside the layer's forward, after the layer's own gather
        for a, b in zip(layers, list(layers)[1:]):
            a.set_modules_to_forward_prefetch([b])
        if self.tied:  # the head is the embedding: drop the head's reference to the unsharded parameter
            teacher.get_submodule(fam.head).register_parameter("weight", None)
        else:
            fully_shard(teacher.get_submodule(fam.head), mesh=mesh, reshard_after_forward=True)
            order.append(fam.head)
        fully_shard(teacher.get_submodule(fam.backbone), mesh=mesh)
        self.order = order
        """Unit module paths, in the order the teacher's forward reaches them (the head last)."""
        self.rank, self.size, self.group = mesh.get_local_rank(), mesh.size(), mesh.get_group()
        by_len = sorted(order, key=len, reverse=True)
        self._unit_of = {n: next(u for u in by_len if n.startswith(u + ".")) for n, _ in teacher.named_parameters()}
        self.names: dict[str, list[str]] = {u: [n for n, o in self._unit_of.items() if o == u] for u in order}
        """Unit -> the teacher parameter names it holds (its own, not those of units nested in it)."""

    def unit_of(self, name: str) -> str:
        """The unit holding teacher parameter ``name``."""
        return self._unit_of[name]

    def module(self, unit: str) -> nn.Module:
        return self.teacher.get_submodule(unit)

    def params(self, unit: str) -> dict[str, Tensor]:
        """The unit's own parameters by teacher name (full tensors while it is gathered)."""
        return {n: self.teacher.get_parameter(n) for n in self.names[unit]}

    @contextmanager
    def gathered(self, unit: str, prefetch: str | None = None) -> Iterator[dict[str, Tensor]]:
        """Gather ``unit`` (a collective: every rank gathers the same units in the same order), start gathering
        ``prefetch`` in the background, yield the unit's full tensors, and free them after."""
        mod = self.module(unit)
        mod.unshard()  # waits for a pending prefetch of it
        if prefetch is not None:
            self.module(prefetch).unshard(async_op=True)
        try:
            yield self.params(unit)
        finally:
            mod.reshard()

    def release_root(self) -> None:
        """Free the backbone (the final norm: FSDP's root, which FSDP keeps gathered after its forward)."""
        self.module(self.family.backbone).reshard()

    def head_logits(self):
        """The teacher's (V, d) head (the embedding when tied) as this rank's rows, for the KL's logits without
        gathering it (``lrc.sharded_head.ShardedHeadLogits``)."""
        from torch.distributed.tensor import DTensor

        fam = self.family
        unit = fam.embed if self.tied else fam.head
        self.module(unit).reshard()  # a no-op unless something left it gathered
        head = self.teacher.get_parameter(f"{fam.embed}.weight" if self.tied else f"{fam.head}.weight")
        if not isinstance(head, DTensor):
            raise TypeError(f"the teacher's {unit} is not sharded (a DTensor): {type(head).__name__}")
        return ShardedHeadLogits(head.to_local(), head.shape[0], self.group, self.rank, self.size)

    @contextmanager
    def one_at_a_time(self) -> Iterator[Mapping[str, Tensor]]:
        """A read-only view of the teacher's tensors by name that gathers the unit of the tensor read and frees the
        unit read before (one unit gathered at a time): for code written against a whole teacher's
        ``named_parameters`` that reads each tensor once (CORE's bases, the reachability audit). Every rank must
        read the same names in the same order (each switch of unit is a collective)."""
        view = _OneUnitAtATime(self)
        try:
            yield view
        finally:
            view.release()

    def gathered_numel(self) -> int:
        """Elements of the teacher's tensors held whole on this rank right now (gathered units)."""
        from torch.distributed.tensor import DTensor

        return sum(p.numel() for p in self.teacher.parameters() if not isinstance(p, DTensor))

    def local_numel(self) -> int:
        """Elements of the teacher's shards held by this rank (gathered units counted by their shard)."""
        from torch.distributed.tensor import DTensor

        def shard(p: Tensor) -> int:  # a gathered unit's tensor counts by the rows of its shard
            return shard_rows(p.shape[0], self.rank, self.size) * (p.numel() // max(p.shape[0], 1))

        return sum(p.to_local().numel() if isinstance(p, DTensor) else shard(p) for p in self.teacher.parameters())

    def total_numel(self) -> int:
        return sum(p.numel() for p in self.teacher.parameters())


class _OneUnitAtATime(Mapping):
    def __init__(self, units: TeacherUnits):
        self.units, self.current = units, None

    def __getitem__(self, name: str) -> Tensor:
        unit = self.units.unit_of(name)
        if unit != self.current:
            self.release()
            self.units.module(unit).unshard()
            self.current = unit
        return self.units.teacher.get_parameter(name)

    def __iter__(self):
        return iter(self.units._unit_of)

    def __len__(self) -> int:
        return len(self.units._unit_of)

    def release(self) -> None:
        if self.current is not None:
            self.units.module(self.current).reshard()
            self.current = None


def teacher_mesh(device: torch.device):
    """A 1-D mesh over every process, on a process group of its own (the teacher's gathers never queue behind, or
    in front of, DDP's or DeepSpeed's gradient reductions)."""
    from torch.distributed.device_mesh import DeviceMesh

    group = dist.new_group(ranks=list(range(dist.get_world_size())))
    return DeviceMesh.from_group(group, device.type)


def load_sharded_teacher(path: str, config, mesh, dtype: torch.dtype, device: torch.device,
                         attn_implementation: str | None = None, linears: tuple[str, ...] = ()) -> TeacherUnits:
    """Build the teacher of ``path`` (a directory of safetensors files) sharded over ``mesh``, each rank reading
    only its rows of each tensor; frozen, in eval mode. ``config``: its config (``lrc.teacher.load_teacher_config``).
    TeacherError names the file and tensor when something is missing, mis-shaped or not finite."""


    if Path(path).suffix == ".gguf" or not Path(path).is_dir():
        raise TeacherError(f"--shard_teacher reads the teacher's rows from safetensors files: {path!r} is not a model "
                           f"directory (a .gguf teacher: save it with save_pretrained first, or drop --shard_teacher)")
    files = weight_files(path)
    unsafe = [f.name for f in files if f.suffix != ".safetensors"]
    if unsafe:
        raise TeacherError(f"--shard_teacher reads safetensors files only; {path!r} holds {', '.join(unsafe)}")
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    teacher = empty_causal_lm(config, dtype, **kw).eval()
    units = TeacherUnits(teacher, mesh, linears)
    allocate(teacher, device)
    _read_rows(units, files, dtype)
    teacher.requires_grad_(False)
    return units


@torch.no_grad()
def _read_rows(units: TeacherUnits, files: list[Path], dtype: torch.dtype) -> None:
    """Fill each local shard with its rows (``lrc.tensor_files``: plain reads, not a mapping of the whole file)."""
    from torch.distributed.tensor import DTensor

    from lrc.tensor_files import read_rows, safetensors_index, stored_dtype

    want = {n: p for n, p in units.teacher.named_parameters()}
    seen: set[str] = set()
    bad = ""
    for f in files:
        with open(f, "rb") as fh:
            index, data_start = safetensors_index(f, fh)
            for key, info in index.items():
                p = want.get(key)
                if p is None:
                    continue
                seen.add(key)
                shape = tuple(info["shape"])
                if shape != tuple(p.shape):
                    raise TeacherError(f"{f}: tensor {key} has shape {shape}, the config gives {tuple(p.shape)}")
                stored_dtype(f, key, info)
                local = p.to_local() if isinstance(p, DTensor) else p
                rows = shard_rows(shape[0], units.rank, units.size)
                if local.shape[0] != rows:
                    raise RuntimeError(f"FSDP's shard of {key} has {local.shape[0]} rows, expected {rows}")
                if not rows:
                    continue
                if not read_rows(fh, info, data_start, units.rank * math.ceil(shape[0] / units.size), local):
                    bad = bad or f"{f}: tensor {key} is truncated (the file ends inside it)"
                elif not bad and not bool(torch.isfinite(local.sum(dtype=torch.float32))):
                    bad = f"{f}: tensor {key} holds NaN or infinite values"
    missing = sorted(set(want) - seen)
    if missing:
        raise TeacherError(f"{files[0].parent}: the teacher's files lack {len(missing)} tensor(s) the config needs, "
                           f"e.g. {missing[0]}")
    flags = [None] * units.size  # a problem in one rank's rows stops every rank (they would wait for it otherwise)
    dist.all_gather_object(flags, bad, group=units.group)
    first = next((b for b in flags if b), "")
    if first:
        raise TeacherError(f"{first}; its files are corrupt or it was saved after training diverged")
