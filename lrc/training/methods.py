"""The methods ``lrc train`` can run (``--model_cls``), one registered object each: what its model is, how it
starts, which trainer trains it, what it saves and which flags it reads.

    METHODS["lrc"].build_model(teacher, cfg)       # an LRCModel (lrc.model)
    METHODS["prune_kd"].build_model(teacher, cfg)  # a BaselineModel (lrc.baselines)

- ``lrc``: Low-Rank Clone (``lrc.model.LRCModel``; ``LRCTrainer``: checkpoints of projections, converted by
  ``lrc convert``). The official spelling ``--model_cls distill`` is the same method.
- ``origin``, ``only_kd``, ``prune_kd``, ``tiny_bert``: the baselines (``lrc.baselines``; ``BaselineTrainer``:
  checkpoints are standard HF models). They train the LRC student's architecture and read from ``LRCConfig`` only
  what ``BASELINE_METHOD_FIELDS`` names; the other method flags are ignored with a warning.

Adding a baseline: its loss in ``lrc.baselines`` and one ``BaselineMethod`` line in ``METHODS`` (docs/DESIGN.md,
"How to change things").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrc.cli.options import OptionError
from lrc.console import say, warn
from lrc.training.flags import METHOD_ALIASES, canonical_method_name

if TYPE_CHECKING:  # the registry is imported by the flag parser: keep torch out of its import
    from torch import nn

    from lrc.training.config import TrainConfig


class Method:
    """What a run needs from a method (``lrc.training.run.train`` calls these, never branches on the name)."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    """Other ``--model_cls`` spellings of this method (the official ``distill`` for ``lrc``)."""
    summary: str = ""
    needs_conversion: bool = False
    """Its output is an LRC checkpoint that ``lrc convert`` folds into a standard model (else it is one already)."""
    ignored_flags: tuple[str, ...] = ()
    """Flags that do not change this method: warned about when given."""

    def check(self, cfg: TrainConfig) -> None:
        """Refuse flags this method cannot honour; warn about the ones it ignores (given explicitly)."""
        ignored = [k for k in self.ignored_flags if k in cfg.given]
        if ignored:
            warn(f"--model_cls {self.name}: {', '.join('--' + k for k in ignored)} do not change this method and are "
                 f"ignored")

    def attn_implementation(self, cfg: TrainConfig) -> str | None:
        """The attention kernel the teacher and student run with."""
        return cfg.optim.attn_implementation

    def build_model(self, teacher, cfg: TrainConfig, units=None) -> nn.Module:
        """The trained model around the frozen ``teacher`` (its ``trainable_parameters()`` are what trains);
        ``units``: the teacher sharded (``lrc.sharded_teacher.TeacherUnits``, ``--shard_teacher``)."""
        raise NotImplementedError

    def starts_from_activations(self, cfg: TrainConfig) -> bool:
        """Whether a fresh start initialises from the teacher's activations on calibration data."""
        return False

    def initialise(self, model: nn.Module, calib_data, cfg: TrainConfig) -> dict[str, Any]:
        """Initialise a fresh ``model`` from the teacher's activations; returns the record of what was chosen."""
        raise NotImplementedError

    def warm_start(self, model: nn.Module, cfg: TrainConfig, record: dict[str, Any], resuming: bool) -> None:
        """Load starting weights a flag names (``--load_model_weight_path``, ``--init_from``), if this method has any."""

    def audit(self, model: nn.Module, cfg: TrainConfig) -> list | None:
        """A static report on the model printed at the start and kept in the run record (None: none)."""
        return None

    def trainer(self, model: nn.Module, args, cfg: TrainConfig, tokenizer, no_tokenizer: str, **common):
        """The ``lrc.training.trainer.DistillTrainer`` that trains ``model``; ``tokenizer``: the teacher's (None: it has none,
        ``no_tokenizer`` says why); ``common``: the arguments every trainer takes (``trainer_cls`` overrides the
        class: a test's subclass)."""
        raise NotImplementedError

    def final_message(self, out: Path) -> str:
        raise NotImplementedError


class LRCMethod(Method):
    name = "lrc"
    aliases = tuple(k for k, v in METHOD_ALIASES.items() if v == "lrc")
    summary = "Low-Rank Clone: the student's weights are the teacher's times trainable projections"
    needs_conversion = True

    def check(self, cfg: TrainConfig) -> None:
        if "tiny_bert_attn_loss" in cfg.given:
            warn("--tiny_bert_attn_loss has no effect with --model_cls lrc")
        if cfg.run.calib_data and not self.starts_from_activations(cfg):
            warn("--calib_data is used by --proj_init activation only; it is ignored")

    def build_model(self, teacher, cfg: TrainConfig, units=None) -> nn.Module:
        from lrc.model import LRCModel

        model = LRCModel(teacher, cfg.method, units)
        model.projections.float()  # fp32 master weights whatever the teacher's dtype
        if cfg.optim.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    def starts_from_activations(self, cfg: TrainConfig) -> bool:
        return cfg.method.proj_init == "activation"

    def initialise(self, model, calib_data, cfg: TrainConfig) -> dict[str, Any]:
        from lrc.activation_init import initialise_from_activations

        return initialise_from_activations(model, calib_data, cfg.run.calib_tokens)

    def warm_start(self, model, cfg: TrainConfig, record: dict[str, Any], resuming: bool) -> None:
        from lrc.checkpoint import (
            TeacherRef,
            init_from_checkpoint,
            load_into_projections,
            load_lrc_checkpoint,
            official_to_ours,
        )

        c = cfg.ckpt
        if c.load_model_weight_path:
            ck = load_lrc_checkpoint(c.load_model_weight_path)
            weights = official_to_ours(ck.weights, cfg.method, model.kept_layers) if ck.official else ck.weights
            load_into_projections(model.projections, weights, what=f"--load_model_weight_path {c.load_model_weight_path}")
            say(f"warm start: projections loaded from {c.load_model_weight_path}")
        if c.init_from:
            record["init_from"] = str(Path(c.init_from).resolve())
            if resuming:
                say(f"--init_from {c.init_from} is not used: the run resumes from its own checkpoint")
            else:
                say("init from: " + init_from_checkpoint(c.init_from, model.projections, cfg.method, model.kept_layers,
                                                         TeacherRef(**record["teacher"])))

    def audit(self, model, cfg: TrainConfig) -> list:
        from lrc.mlp_train import format_audit

        rows = model.reachability_audit()  # SVDs of every teacher matrix: the main process only
        say(format_audit(rows, cfg.method.mlp_train))
        return [r.to_dict() for r in rows]

    def trainer(self, model, args, cfg: TrainConfig, tokenizer, no_tokenizer: str, **common):
        from lrc.training.trainer import LRCTrainer

        trainer_cls = common.pop("trainer_cls", None) or LRCTrainer
        trainer = trainer_cls(model=model, args=args, generation_once_per_step=cfg.optim.generation_once_per_step,
                              shard_generation=cfg.optim.shard_generation,
                              diagnostics_steps=cfg.ckpt.diagnostics_steps, **common)
        say(trainer.generation_summary())
        return trainer

    def final_message(self, out: Path) -> str:
        return (f"final weights: {out / 'lrc_weights.safetensors'} (+ lrc_config.json, trainer_state.json)\n"
                f"convert: python convert_ckpt.py --ckpt-path {out} --save-path {out / 'student'}")


BASELINE_METHOD_FIELDS = ("target_hidden_size", "del_layers", "tie_word_emb_proj", "target_rms_norm_eps",
                          "kl_temperature", "kl_reduction", "use_ntp_loss", "use_logits_loss", "logits_chunk_tokens")
"""The ``LRCConfig`` fields a baseline reads: the student's architecture and the KL (``lrc.baselines``)."""


class BaselineMethod(Method):
    """A baseline of ``lrc.baselines`` (its ``BaselineConfig.method``)."""

    def __init__(self, name: str, summary: str, calibrated: bool = False, uses_kl: bool = True,
                 attention_maps: bool = False):
        """``calibrated``: starts from the teacher's activations (--calib_data); ``uses_kl``: its loss has the KL
        (else the KL flags are ignored); ``attention_maps``: its loss compares attention maps (when
        --tiny_bert_attn_loss), which needs eager attention."""
        from lrc.config import flag_name

        self.name, self.summary, self.calibrated, self.attention_maps = name, summary, calibrated, attention_maps
        lrc_only = [flag_name(f) for f in _lrc_config_fields() if f not in BASELINE_METHOD_FIELDS]
        self.ignored_flags = (*lrc_only, "generation_once_per_step", "shard_generation", "diagnostics_steps",
                              *(() if calibrated else ("calib_data", "calib_tokens")),
                              *(() if uses_kl else ("kl_temperature", "kl_reduction", "use_logits_loss")))

    def check(self, cfg: TrainConfig) -> None:
        if cfg.optim.shard_teacher:
            raise OptionError(f"--shard_teacher true applies to --model_cls lrc; {self.name} trains a standard student "
                              f"against a whole teacher")
        if cfg.ckpt.load_model_weight_path:
            raise OptionError(f"--load_model_weight_path loads LRC projections; it cannot start --model_cls "
                              f"{self.name} (use --resume to continue a baseline run)")
        from lrc.training.run_dir import MODEL_WEIGHTS_NAME

        init = cfg.ckpt.init_from
        if init and self.calibrated:
            raise OptionError(f"--init_from: --model_cls {self.name} starts from the width-pruned teacher; to train a "
                              f"converted student densely use --model_cls only_kd (CE + KL) or origin (CE)")
        if init and not (Path(init) / MODEL_WEIGHTS_NAME).is_file():
            raise OptionError(f"--init_from {init}: --model_cls {self.name} starts from a converted student (a "
                              f"standard HF model directory with model.safetensors, e.g. lrc convert's output), and "
                              f"this has none; an LRC checkpoint is converted first (lrc convert --ckpt-path {init} "
                              f"--save-path STUDENT)")
        super().check(cfg)
        if self.attention_maps and cfg.run.tiny_bert_attn_loss and cfg.optim.attn_implementation not in (None, "eager"):
            raise OptionError(f"--model_cls tiny_bert with its attention-map loss needs --attn_implementation eager "
                              f"(got {cfg.optim.attn_implementation!r}); or pass --tiny_bert_attn_loss false")

    def attn_implementation(self, cfg: TrainConfig) -> str | None:
        if self.attention_maps and cfg.run.tiny_bert_attn_loss:
            return "eager"  # the attention-map loss needs the maps
        return cfg.optim.attn_implementation

    def build_model(self, teacher, cfg: TrainConfig, units=None) -> nn.Module:
        from lrc.baselines import BaselineConfig, BaselineModel

        model = BaselineModel(teacher, BaselineConfig(self.name, cfg.method, attn_loss=cfg.run.tiny_bert_attn_loss))
        if cfg.optim.gradient_checkpointing:
            model.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def starts_from_activations(self, cfg: TrainConfig) -> bool:
        return self.calibrated

    def initialise(self, model, calib_data, cfg: TrainConfig) -> dict[str, Any]:
        from lrc.activation_init import prune_student_from_activations

        return prune_student_from_activations(model, calib_data, cfg.run.calib_tokens)

    def warm_start(self, model, cfg: TrainConfig, record: dict[str, Any], resuming: bool) -> None:
        """``--init_from DIR``: the student starts as the standard HF model in DIR (an ``lrc convert`` output of the
        same architecture): LRC, then dense training of every weight."""
        from lrc.baselines import load_student_weights

        init = cfg.ckpt.init_from
        if not init:
            return
        record["init_from"] = str(Path(init).resolve())
        if resuming:
            say(f"--init_from {init} is not used: the run resumes from its own checkpoint")
            return
        load_student_weights(init, model)
        say(f"init from: the student starts as {init} (every weight trains: --model_cls {self.name})")

    def trainer(self, model, args, cfg: TrainConfig, tokenizer, no_tokenizer: str, **common):
        from lrc.training.trainer import BaselineTrainer

        trainer_cls = common.pop("trainer_cls", None) or BaselineTrainer
        if tokenizer is None:
            warn(f"{no_tokenizer}: the trained student is saved without a tokenizer")
        return trainer_cls(model=model, args=args, student_tokenizer=tokenizer, **common)

    def final_message(self, out: Path) -> str:
        return (f"final model: {out} (--model_cls {self.name}: a standard HF checkpoint, no conversion needed; "
                f"AutoModelForCausalLM.from_pretrained({str(out)!r}))")


def _lrc_config_fields() -> list[str]:
    from lrc.config import LRCConfig

    return [f.name for f in dataclasses.fields(LRCConfig)]


METHODS: dict[str, Method] = {m.name: m for m in (
    LRCMethod(),
    BaselineMethod("origin", "random-init student, next-token CE only", uses_kl=False),
    BaselineMethod("only_kd", "random-init student, CE + KL to the teacher"),
    BaselineMethod("prune_kd", "the width-pruned teacher (Minitron-style), CE + KL", calibrated=True),
    BaselineMethod("tiny_bert", "random-init student, CE + KL + hidden-state and attention-map MSE",
                   attention_maps=True),
)}
"""Every method ``--model_cls`` names, by name."""


def method_named(name: str) -> Method:
    """The method ``--model_cls name`` runs; FlagError listing them for an unknown name."""
    m = METHODS.get(canonical_method_name(name))
    if m is None:
        names = ", ".join(f"{m.name}" + (f" (= {', '.join(m.aliases)})" if m.aliases else "") for m in METHODS.values())
        raise OptionError(f"--model_cls {name!r} is not one of {names}")
    return m

