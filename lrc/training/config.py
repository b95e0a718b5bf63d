"""What a training run is made of: ``TrainConfig``, typed from the command line to the trainer.

    cfg = parse_argv(["--raw-model-name", TEACHER, "--dataset_name", DATA, "--output_dir", OUT,
                      "--target_hidden_size", "288"])          # lrc.training.parse
    cfg.optim.learning_rate, cfg.method.kl_temperature, cfg.ckpt.save_steps, cfg.run.output_dir

``TrainConfig`` nests the option groups of ``lrc.training.flags`` (``run``, ``optim``, ``ckpt``, ``command``,
``official``) and the method, ``LRCConfig`` itself (``method``). A run's record stores ``to_flags()``;
``from_record`` rebuilds the same config from it; ``with_flags`` makes a changed copy (``dataclasses.replace`` on
the groups concerned), e.g. the demo's baseline run. Parsing and the layers of flags (defaults < ``--demo`` <
``--config`` recipe < command line) are ``lrc.training.parse``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lrc.cli.options import unknown_flags_text
from lrc.config import LRCConfig
from lrc.training.command_flags import CommandOptions
from lrc.training.flags import (
    CHECKED_FLAGS,
    Checkpointing,
    FlagError,
    MethodFlags,
    OfficialOnly,
    Optimisation,
    RunTarget,
    method_from_flags,
    method_to_flags,
)

__all__ = ["TrainConfig", "CHECKED_FLAGS", "FLAGS", "FLAG_GROUP", "GROUPS", "METHOD_FLAGS", "OPTION_GROUPS",
           "REQUIRED_FLAGS"]

GROUPS: dict[str, type] = {"run": RunTarget, "optim": Optimisation, "ckpt": Checkpointing, "command": CommandOptions,
                           "official": OfficialOnly}
"""The option groups of ``TrainConfig`` by attribute (the method, ``LRCConfig``, is ``TrainConfig.method``)."""
OPTION_GROUPS: tuple[type, ...] = (RunTarget, MethodFlags, Optimisation, Checkpointing, CommandOptions, OfficialOnly)
"""The training command's flags, group by group (``lrc train --help`` prints them in this order)."""
FLAG_GROUP: dict[str, str] = {f.name: attr for attr, g in GROUPS.items() for f in dataclasses.fields(g)} | {
    f.name: "method" for f in dataclasses.fields(MethodFlags)}
"""Every flag -> the attribute of ``TrainConfig`` that holds it."""
FLAGS: dict[str, dataclasses.Field] = {f.name: f for g in OPTION_GROUPS for f in dataclasses.fields(g)}
"""Every training flag by name (its default and its help in ``metadata["help"]``)."""
METHOD_FLAGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MethodFlags))
"""The flags that make up ``LRCConfig``."""
REQUIRED_FLAGS = ("raw_model_name", "dataset_name", "output_dir", "target_hidden_size")
"""Flags without a default: the command line, a recipe or --demo must give them."""


@dataclasses.dataclass
class TrainConfig:
    """A training run's whole configuration (module docstring)."""

    run: RunTarget
    """the teacher, the data, the outputs, the method's name"""
    method: LRCConfig
    """the Low-Rank Clone configuration (the baselines take the student's architecture and the KL from it)"""
    optim: Optimisation
    ckpt: Checkpointing
    command: CommandOptions = dataclasses.field(default_factory=CommandOptions)
    official: OfficialOnly = dataclasses.field(default_factory=OfficialOnly)
    given: tuple[str, ...] = ()
    """the flags given explicitly (a recipe, --demo or the command line): a baseline warns about the LRC-only ones"""

    # ------------------------------------------------------------------ flags <-> config
    @classmethod
    def from_flags(cls, flags: dict[str, Any], given: tuple[str, ...] = ()) -> TrainConfig:
        """Build from {flag: value} (missing flags take their defaults); the method's own checks run."""
        unknown = sorted(k for k in flags if k not in FLAG_GROUP)
        if unknown:
            raise FlagError("unknown flag(s): " + unknown_flags_text(unknown, FLAG_GROUP))
        missing = [k for k in REQUIRED_FLAGS if flags.get(k) is None]
        if missing:
            raise FlagError(f"missing required flag(s): {', '.join('--' + k for k in missing)} "
                            f"(or run `python hf_trainer.py --demo`)")
        values = {attr: {} for attr in (*GROUPS, "method")}
        for k, v in flags.items():
            values[FLAG_GROUP[k]][k] = v
        method = method_from_flags(values.pop("method"))
        return cls(**{attr: GROUPS[attr](**vals) for attr, vals in values.items()}, method=method,
                   given=tuple(sorted(given)))

    def to_flags(self) -> dict[str, Any]:
        """{flag: value} of every flag (what a run record stores; ``from_flags`` inverts it)."""
        out: dict[str, Any] = {}
        for attr in GROUPS:
            out.update(dataclasses.asdict(getattr(self, attr)))
        out.update(method_to_flags(self.method))
        out.pop("resume_checkpoint", None)  # folded into --resume
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """The configuration a run record (``lrc.training.resume.run_record``) was written from (records before the
        registry say ``model_cls: distill``: the same method)."""
        flags = {k: v for k, v in record["flags"].items() if k in FLAG_GROUP}
        return cls.from_flags(flags, tuple(record.get("given", ())))

    def with_flags(self, **flags: Any) -> TrainConfig:
        """A copy with these flags changed (``dataclasses.replace`` on the groups that hold them)."""
        changes: dict[str, dict[str, Any]] = {}
        for k, v in flags.items():
            if k not in FLAG_GROUP:
                raise FlagError(f"unknown flag --{k}")
            changes.setdefault(FLAG_GROUP[k], {})[k] = v
        method = self.method
        if "method" in changes:
            method = method_from_flags({**method_to_flags(self.method), **changes.pop("method")})
        return dataclasses.replace(self, method=method,
                                   **{a: dataclasses.replace(getattr(self, a), **c) for a, c in changes.items()})

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Every group's checks, then the ones across groups; returns self. One line per problem. (What the method
        itself refuses is its own check: ``lrc.training.methods``, run by the parser.)"""
        self.official.validate()
        self.run.validate()
        self.optim.validate()
        self.ckpt.validate()
        self.command.validate()
        c = self.ckpt
        if self.method.proj_init == "activation":
            for k in ("init_from", "load_model_weight_path"):
                if getattr(c, k):
                    raise FlagError(f"--proj_init activation and --{k} both choose the starting weights; give one")
        if c.load_model_weight_path and self.method.mlp_train != "lrc":
            raise FlagError(f"--load_model_weight_path loads every tensor strictly; with --mlp_train "
                            f"{self.method.mlp_train} use --init_from, which starts the new Delta tensors at 0")
        if c.resume and c.overwrite_output_dir and not self.command.demo:
            raise FlagError("--resume and --overwrite_output_dir contradict each other")
        return self
