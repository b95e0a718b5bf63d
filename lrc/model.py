"""LRCModel: the frozen teacher, the trainable projections, and the student run on the fly.

One forward (``LRCModel.forward``):

1. the teacher runs under ``no_grad``; forward hooks capture the clone targets of every kept,
   non-banned layer (q/k/v projection outputs before RoPE and q/k-norm, attention-block output, gate
   pre-activation, up, FFN output, or the block inputs for the shared variants);
2. the student's weights are generated (``lrc.generate.generate_student_weights``): once per forward,
   or, in training under gradient accumulation, once per optimizer step (``window_end``,
   ``lrc.generation_window``); with a ``ShardPlan`` each data-parallel rank of a node generates only its
   share and the shares are all-gathered (``lrc.sharded_generation``);
3. the student, a standard HF model of the same class the converter writes (a parameter-free
   "meta" skeleton, run with ``torch.func.functional_call``), runs with hooks that compute each
   clone term as soon as its activation exists and then drop the teacher's target;
4. ``lrc.losses.fused_logit_losses`` computes CE and KL from both final hidden states, chunked.

The skeleton is *not* a registered sub-module, so optimizers, accelerate and DeepSpeed only see the
teacher (frozen) and ``projections`` (trainable).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.func import functional_call
from transformers import AutoModelForCausalLM, PreTrainedModel

from lrc.clone_terms import capture_teacher, student_losses
from lrc.config import LRCConfig
from lrc.families import family_of, is_tied, student_config
from lrc.gathered_generation import plan_unit_generation
from lrc.generate import generate_student_weights
from lrc.generation_window import GenerationWindow
from lrc.losses import fused_logit_losses
from lrc.mlp_train import AuditRow, bases_fingerprint, core_bases, reachability_audit
from lrc.positions import loss_positions
from lrc.projections import LRCProjections
from lrc.sharded_generation import ShardPlan, generate_sharded, generation_flops, plan_shards
from lrc.sharded_teacher import TeacherUnits


@dataclass
class LRCOutput:
    """Result of one LRC forward. All but ``loss`` are detached fp32 scalars (no host sync)."""

    loss: Tensor
    """Total: [use_ntp] ce + [use_logits] kl + [use_aux] clone."""
    ce: Tensor
    """Student next-token cross-entropy, mean over counted positions."""
    kl: Tensor
    """KL(teacher || student) at temperature tau, reduced per ``kl_reduction`` (0 if disabled)."""
    clone: Tensor
    """alpha x sum of all clone terms (what the loss adds when use_aux_loss)."""
    terms: dict[str, Tensor] = field(default_factory=dict)
    """Unweighted clone term by name, summed over layers."""
    layer_terms: dict[tuple[int, str], Tensor] = field(default_factory=dict)
    """Unweighted clone term by (teacher layer index, name)."""

    @classmethod
    def from_results(cls, loss: Tensor, ce: Tensor, kl: Tensor, clone: Tensor,
                     results: dict[tuple[int, str], Tensor]) -> "LRCOutput":
        """Detach the logged values and sum the per-layer terms ``results[(layer, name)]`` by name."""
        terms: dict[str, Tensor] = {}
        for (_, name), v in results.items():
            terms[name] = terms.get(name, 0.0) + v.detach()
        return cls(loss=loss, ce=ce.detach(), kl=kl.detach(), clone=clone.detach(), terms=terms,
                   layer_terms={k: v.detach() for k, v in results.items()})


class LRCModel(nn.Module):
    """Teacher + LRC projections; ``forward(input_ids, attention_mask, labels) -> LRCOutput``.

    ``units``: the teacher sharded over the ranks (``lrc.sharded_teacher``, ``--shard_teacher``); the teacher is then
    not a registered sub-module (DDP and DeepSpeed see the projections alone), and every read of its weights gathers
    one unit at a time (``lrc.gathered_generation``).
    """

    def __init__(self, teacher: PreTrainedModel, lrc: LRCConfig, units: TeacherUnits | None = None):
        super().__init__()
        tcfg = teacher.config
        self.family = family_of(tcfg)
        lrc.validate(tcfg)
        self.lrc_config = lrc
        self.units = units
        if units is None:
            self.teacher = teacher
        else:
            if set(lrc.teacher_space_linears()) - set(units.linears):
                raise ValueError("the sharded teacher lacks units for the linears its clone terms read: "
                                 f"{lrc.teacher_space_linears()}")
            self.__dict__["teacher"] = teacher  # unregistered: FSDP manages it
        teacher.requires_grad_(False)
        teacher.eval()
        self.kept_layers = lrc.kept_layers(tcfg.num_hidden_layers)
        self.teacher_tied = is_tied(tcfg)
        device = teacher.get_input_embeddings().weight.device
        self.projections = LRCProjections(tcfg.hidden_size, lrc.target_hidden_size, self.kept_layers, lrc,
                                          intermediate=tcfg.intermediate_size,
                                          gains=self.family.gain_names).to(device)
        # CORE-LRC: frozen bases of the teacher's reachable MLP spaces (fp64 SVD, once). Not registered:
        # outside the optimizer, the checkpoints and DDP's buffer broadcast; moved to the teacher's device
        # when used.
        self._core_bases: dict[tuple[int, str], Tensor] | None = None
        self._core_fingerprint: str | None = None
        if lrc.mlp_train == "core":
            with self.teacher_tensors() as tparams:
                self._core_bases = core_bases(tparams, self.kept_layers, self.family)
        self.student_config = student_config(tcfg, lrc)
        self.student_config._attn_implementation = tcfg._attn_implementation
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(self.student_config)
        # Student keeps the teacher's head_dim and RoPE parameters: share the teacher's rotary module
        # (its buffers are real and follow .to()); the family gives the buffers no weight gives (Gemma's
        # embedding scale); every other skeleton tensor is supplied per call.
        parent, _, attr = self.family.rotary.rpartition(".")
        setattr(skeleton.get_submodule(parent), attr, teacher.get_submodule(self.family.rotary))
        for name, value in self.family.student_buffers(skeleton).items():
            owner, _, buf = name.rpartition(".")
            setattr(skeleton.get_submodule(owner), buf, value.to(device))
        self.logit_softcap = self.family.logit_softcap(tcfg)
        meta_buffers = [n for n, b in skeleton.named_buffers() if b.is_meta]
        if meta_buffers:
            raise RuntimeError(f"student skeleton has buffers LRC cannot supply: {meta_buffers}")
        self.__dict__["_student"] = skeleton  # deliberately unregistered (see module docstring)
        self._student_param_names = [n for n, _ in skeleton.named_parameters()]
        self.gradient_checkpointing = False
        self._gc_replaying = False
        self._gc_hooks: list = []  # under gradient checkpointing: the last step's student hooks
        self._window: GenerationWindow | None = None  # the open accumulation window's weights
        self.shard_plan: ShardPlan | None = None  # set by ``plan_sharded_generation``
        self._unit_generation = None if units is None else plan_unit_generation(self, units)
        self._collected: dict[str, Tensor] | None = None  # a sharded teacher's forward's generated tensors

    @contextmanager
    def teacher_tensors(self):
        """The teacher's tensors by name, for code that reads each once: gathered one unit at a time when sharded
        (a collective: every rank reads the same names in the same order)."""
        if self.units is None:
            yield dict(self.teacher.named_parameters())
        else:
            with self.units.one_at_a_time() as view:
                yield view

    def meta_generation(self, names: list[str], teacher: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``names`` generated from meta tensors of the teacher's shapes (``teacher``: those tensors) and meta
        projections: the shapes, and which outputs depend on the projections (``requires_grad``)."""
        if teacher is None:
            teacher = {n: torch.empty(p.shape, dtype=p.dtype, device="meta")
                       for n, p in self.teacher.named_parameters()}
        meta_proj, bases = self._meta_inputs
        dtype = self.teacher.get_input_embeddings().weight.dtype  # explicit: a generation then reads only what it uses
        with torch.enable_grad():
            return generate_student_weights(teacher, meta_proj, self.lrc_config, self.kept_layers, names,
                                            self.teacher_tied, dtype=dtype, core_bases=bases, family=self.family)

    @functools.cached_property
    def _meta_inputs(self) -> tuple[LRCProjections, dict | None]:
        """Meta projections and CORE bases of this model's shapes (no storage), built once for ``meta_generation``
        (which a sharded teacher's plan calls once per student tensor). Not registered: outside the optimizer."""
        tcfg = self.teacher.config
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            meta_proj = LRCProjections(tcfg.hidden_size, self.lrc_config.target_hidden_size, self.kept_layers,
                                       self.lrc_config, intermediate=tcfg.intermediate_size,
                                       gains=self.projections.gains)
        bases = None if self._core_bases is None else {k: torch.empty_like(v, device="meta")
                                                       for k, v in self._core_bases.items()}
        return meta_proj, bases

    # ------------------------------------------------------------------ student weights
    @property
    def student(self) -> PreTrainedModel:
        """The parameter-free student skeleton (standard HF class of the teacher family)."""
        return self.__dict__["_student"]

    def train(self, mode: bool = True) -> "LRCModel":
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no dropout either)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Explicit trainable set: the projections and the student gains (never the teacher)."""
        return list(self.projections.parameters())

    def student_weights(self, dtype: torch.dtype | None = None, names: list[str] | None = None) -> dict[str, Tensor]:
        """Generate the student's parameters (standard HF names; ``names``: only these) from the teacher and
        projections, on this process alone (no sharded generation). A sharded teacher: gathered unit by unit (a
        collective), without autograd, in the teacher's dtype."""
        names = self._student_param_names if names is None else names
        if self._unit_generation is not None:
            if dtype not in (None, self.teacher.get_input_embeddings().weight.dtype):
                raise ValueError("a sharded teacher generates the student's weights in its own dtype")
            return self._unit_generation.all_weights(names)
        # Read the teacher's tensors at call time: accelerate / DeepSpeed may move or cast them.
        return generate_student_weights(dict(self.teacher.named_parameters()), self.projections, self.lrc_config,
                                        self.kept_layers, names, self.teacher_tied, dtype, core_bases=self.core_bases(),
                                        family=self.family)

    def _generate_for_training(self) -> dict[str, Tensor]:
        """All student weights, with autograd: sharded over the node's ranks when a plan is set; from the tensors
        the sharded teacher's forward generated (``self._collected``) when the teacher is sharded."""
        if self._unit_generation is None:
            def make(names):
                return self.student_weights(names=names)
        else:
            def make(names):
                return self._unit_generation.weights(self._collected, names)
        if self.shard_plan is None:
            return make(self._student_param_names)
        return generate_sharded(make, self._student_param_names, self.shard_plan, self.trainable_parameters())

    def _generated_this_forward(self, window_end: bool | None) -> list[str] | None:
        """The names ``training_weights`` will generate in this forward (None: none, the open window's are reused)."""
        if window_end is not None and torch.is_grad_enabled() and self._window is not None:
            return None
        names = self._student_param_names
        return names if self.shard_plan is None else self.shard_plan.generated_here(names)

    def training_weights(self, window_end: bool | None) -> dict[str, Tensor]:
        """The weights a training forward runs on.

        ``window_end`` None: generated for this forward alone. False / True: the micro-batch is inside /
        the last of a gradient-accumulation window; the weights are generated at the window's first
        micro-batch and their gradient goes through the generation once, in the last one's backward
        (``lrc.generation_window``).
        """
        if window_end is None or not torch.is_grad_enabled():
            self._window = None
            return self._generate_for_training()
        if self._window is None:
            self._window = GenerationWindow(self._generate_for_training(), self.trainable_parameters())
        weights = self._window.weights(last=window_end)
        if window_end:
            self._window = None
        return weights

    def plan_sharded_generation(self, group, rank: int, size: int) -> ShardPlan | None:
        """Split the matmul-generated student tensors over ``size`` ranks of ``group`` by FLOPs (None when there
        are fewer such tensors than ranks). Sets ``self.shard_plan``; every rank must compute the same plan."""
        weights = self.meta_generation(self._student_param_names)
        shapes = {n: tuple(w.shape) for n, w in weights.items() if w.dim() == 2 and w.requires_grad}
        if len(shapes) < size or size < 2:
            self.shard_plan = None
            return None
        flops = generation_flops(shapes, self.teacher.config.hidden_size)
        self.shard_plan = ShardPlan(group=group, rank=rank, size=size, owner=plan_shards(flops, size), shapes=shapes,
                                    flops=flops)
        return self.shard_plan

    def core_bases(self) -> dict[tuple[int, str], Tensor] | None:
        """CORE's bases (``lrc.mlp_train.core_bases``) on the projections' device; None unless mlp_train is core."""
        if self._core_bases is None:
            return None
        device = self.projections.embed.device
        if next(iter(self._core_bases.values())).device != device:
            self._core_bases = {k: v.to(device) for k, v in self._core_bases.items()}
        return self._core_bases

    def core_bases_fingerprint(self) -> str:
        """sha256 prefix of CORE's bases ("" unless mlp_train is core): recorded in checkpoints.

        Hashed once (the bases never change; 8 GiB for Llama-3.2-3B), not at every save.
        """
        if self._core_bases is None:
            return ""
        if self._core_fingerprint is None:
            self._core_fingerprint = bases_fingerprint(self._core_bases)
        return self._core_fingerprint

    def reachability_audit(self) -> list[AuditRow]:
        """Deployed vs reachable degrees of freedom per matrix kind (``lrc.mlp_train.reachability_audit``)."""
        lrc = self.lrc_config
        ranks = None
        if self._core_bases is not None:  # the MLP ranks are known already
            ranks = {k: int(q.shape[1]) for k, q in self._core_bases.items()}
        with self.teacher_tensors() as tparams:
            return reachability_audit(tparams, self.kept_layers, lrc.target_hidden_size, lrc.mlp_train,
                                      self.teacher_tied, lrc.tie_word_emb_proj, ranks, self.family)

    def student_logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Full (B, S, V) logits of the training-time student (for checks and evaluation)."""
        w = self.student_weights()
        out = functional_call(self.student, w, args=(),
                              kwargs=dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
        return out.logits

    # ------------------------------------------------------------------ gradient checkpointing
    def student_backbone(self, weights: dict[str, Tensor], **kwargs):
        """The student's decoder stack without the head (``Family.backbone``), run with the generated ``weights``
        (standard HF names, ``student_weights``); returns its output (``last_hidden_state``: (B, S, d_s))."""
        prefix = f"{self.family.backbone}."
        base = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        return functional_call(self.student.get_submodule(self.family.backbone), base, args=(), kwargs=kwargs)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each student decoder layer (and its clone terms) in backward instead of storing it.

        The layer is replayed through ``functional_call`` with the generated weights it ran with
        (captured at forward time), so the recomputation matches. The clone-term hooks stay
        registered, and the teacher's targets are kept until the next forward, so the replay
        recomputes the same terms (recorded once). Saves the student's intermediate activations;
        the teacher's targets are still held.
        """
        for layer in self.student.get_submodule(self.family.layers):
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = functools.partial(self._checkpoint_layer, layer)
        self.gradient_checkpointing = True

    def _checkpoint_layer(self, layer: nn.Module, fn, *args):
        if self._gc_replaying:  # inside our own replay: run the layer's plain forward
            return fn(*args)
        params = dict(layer.named_parameters())  # the generated weights it runs with right now
        kwargs = fn.keywords

        def run(*a):
            self._gc_replaying = True
            try:
                return functional_call(layer, params, a, kwargs)
            finally:
                self._gc_replaying = False

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, window_end: bool | None = None, **unused) -> LRCOutput:
        """One LRC step's loss.

        Args:
            input_ids: (B, S) token ids.
            attention_mask: (B, S) 1 for real tokens, 0 for padding (None: packed data, all real).
            labels: (B, S) next-token targets before shifting (None: ``input_ids``); -100 excludes
                a position from every term.
            window_end: under gradient accumulation, whether this is the last micro-batch of the optimizer
                step (the weights are then generated once per step, ``training_weights``); None: generate
                them for this call.
        """
        lrc = self.lrc_config
        B, S = input_ids.shape
        # Packed data (no mask, no labels) takes the mask-free path (pos.mask None). No host sync.
        pos = loss_positions(input_ids, attention_mask, labels, lrc.kl_reduction)
        mask, valid, targets = pos.mask, pos.valid, pos.targets
        fwd_kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

        for h in self._gc_hooks:  # previous step's hooks (gradient checkpointing)
            h.remove()
        self._gc_hooks = []
        store: dict = {}
        # a sharded teacher: the weights are generated inside its forward, each unit while it is gathered
        names = None if self.units is None else self._generated_this_forward(window_end)
        collecting = nullcontext({}) if names is None else \
            self._unit_generation.collecting(names, graph=torch.is_grad_enabled())
        with torch.no_grad(), capture_teacher(self, store), collecting as collected:
            h_t = self.teacher.get_submodule(self.family.backbone)(**fwd_kwargs).last_hidden_state  # (B, S, d)

        self._collected = collected
        try:
            weights = self.training_weights(window_end)
        finally:
            self._collected = None
        results: dict = {}
        with student_losses(self, store, results, mask):
            h_s = self.student_backbone(weights, **fwd_kwargs).last_hidden_state
        if not self.gradient_checkpointing:
            store.clear()

        u_s = weights.get(f"{self.family.head}.weight", weights[f"{self.family.embed}.weight"])  # (V, d_s)
        u_t = (self.teacher.get_output_embeddings().weight if self.units is None  # (V, d)
               else self.units.head_logits() if lrc.use_logits_loss else None)
        n_ce, kl_div = pos.n_ce, pos.kl_divisor
        loss, ce_sum, kl_sum = fused_logit_losses(
            h_s.reshape(B * S, -1), u_s, targets.reshape(-1),
            h_t=h_t.reshape(B * S, -1) if lrc.use_logits_loss else None, u_t=u_t,
            kl_mask=valid.reshape(-1),
            w_ce=(1.0 if lrc.use_ntp_loss else 0.0) / n_ce,
            w_kl=(1.0 if lrc.use_logits_loss else 0.0) / kl_div,
            tau=lrc.kl_temperature, chunk_tokens=lrc.logits_chunk_tokens, softcap=self.logit_softcap,
        )
        if self.units is not None:  # FSDP keeps its root (the final norm) gathered after the teacher's forward
            self.units.release_root()
        ce = ce_sum / n_ce
        kl = kl_sum / kl_div

        clone_sum = sum(results.values()) if results else h_s.new_zeros((), dtype=torch.float32)
        clone = lrc.aux_loss_scale_factor * clone_sum
        if lrc.use_aux_loss and results:
            loss = loss + clone
        return LRCOutput.from_results(loss, ce, kl, clone, results)

