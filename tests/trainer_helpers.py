"""Shared by the training tests: tiny assets (teacher + data), flags, and in-process entry points."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import VOCAB, save_teacher, tiny_teacher
from transformers import TrainerCallback

import hf_trainer
from lrc.training.run_dir import WEIGHTS_NAME
from lrc.training.trainer import LRCTrainer


def make_assets(d: Path) -> dict[str, str]:
    """A tiny tied Llama teacher (2 layers, d=64) with a tokenizer, packed jsonl and a text file."""
    teacher = save_teacher(tiny_teacher("llama", tied=True, layers=2), d / "teacher")
    rng = random.Random(0)
    # Repetitive token patterns so the student has something learnable beyond the clone terms.
    rows = []
    for _ in range(96):
        start = rng.randrange(3, VOCAB - 20)
        rows.append({"input_ids": [start + (i % 7) for i in range(32)], "data_cls": "general"})
    packed = d / "train.jsonl"
    packed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    words = [f"w{i}" for i in range(VOCAB - 3)]
    paras = [" ".join(words[(s + k) % len(words)] for k in range(rng.randrange(20, 60)))
             for s in (rng.randrange(len(words)) for _ in range(120))]
    text = d / "train.txt"
    text.write_text("\n\n".join(paras) + "\n")
    held = d / "heldout.txt"
    held.write_text("\n\n".join(paras[:20]) + "\n")
    return {"teacher": teacher, "packed": str(packed), "text": str(text), "heldout": str(held)}


class StopAt(TrainerCallback):
    """Stop training at the end of optimizer step ``step`` (without a checkpoint unless one is due)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def stop_at(step: int):
    class StopTrainer(LRCTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(StopAt(step))

    return StopTrainer


def free_port() -> str:
    """A TCP port nobody listens on now (for a launcher's rendezvous; tests may run in parallel)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def base_flags(assets, out, **over) -> dict:
    flags = dict(raw_model_name=assets["teacher"], dataset_name=assets["packed"], output_dir=str(out),
                 target_hidden_size=32, data_max_len=32, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                 max_steps=6, log_steps=1, save_steps=3, report_to="none", seed=7)
    flags.update(over)
    return flags


def train(assets, out, trainer_cls=None, **over):
    return hf_trainer.train(hf_trainer.parse_flags(base_flags(assets, out, **over)), trainer_cls)


def cli(*argv: str) -> int:
    """Run hf_trainer's command line in-process on an argv list; return its exit code."""
    return hf_trainer.cli(list(argv))


def argv(flags: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in flags.items()]


def train_logs(out: Path) -> list[dict]:
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h and "learning_rate" in h]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / WEIGHTS_NAME))
