#!/usr/bin/env python
"""What to run after LRC, at small scale: every arm starts from the same LRC checkpoint and gets the same wall-clock.

    python scripts/study_after_lrc.py --out runs/after_lrc --seeds 1,2 --budget-s 150

The LRC checkpoint is the demo's (SmolLM2-135M-Instruct -> d_s 288, 80 steps of 4 x 128 tokens of the shipped
Austen sample), trained once into ``OUT/lrc`` and converted. Then, for each seed, each arm trains for ``--budget-s``
seconds of wall-clock (stopped by a callback; sampling and generation count), single process, CPU:

- ``lrc_more``: more LRC steps (``--init_from`` the LRC checkpoint, constant learning rate 1e-4);
- ``sft_teacher``: SFT on teacher-generated completions (sequence-level KD): the teacher samples completions of the
  training prompts for 40 % of the budget, TRL's ``SFTTrainer`` trains on them (completion tokens only) for the rest;
- ``onpolicy_rkl`` / ``onpolicy_jsd``: ``lrc onpolicy`` with reverse KL / generalised JSD (beta 0.5);
- ``dense_kd``: dense KD of the converted student, every weight, CE + KL on the LRC training text
  (``--model_cls only_kd --init_from``);
- ``prune_kd``: the baseline that wins at these budgets, trained from the pruned teacher on as many tokens as LRC +
  ``dense_kd`` saw (not time-limited: same total tokens from the start).

Prompts are the first 12 words of the paragraphs of the training text (``data/sample/train.txt``); 16 prompts cut
from the held-out text judge every student. Measured for each: held-out perplexity in domain (Austen) and out of
domain (Python docs), the teacher's reverse KL to the student on the student's own samples, and the teacher's
log-probability of them per token (teacher-judged agreement). Raw results: ``--json``; table and plot:
``--md`` / ``--png``. Resumable: a finished arm is read back from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
ARMS = ("lrc_more", "sft_teacher", "onpolicy_rkl", "onpolicy_jsd", "dense_kd", "prune_kd")
NEW_TOKENS = 32
JUDGE_PROMPTS = 16
EVAL_SEQUENCES = 48


def time_limit(seconds: float):
    """A ``TrainerCallback`` stopping training (with its final save) once ``seconds`` of training have passed."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            if time.time() - self.t0 >= seconds:
                control.should_training_stop = True

    return TimeLimit()


@dataclass
class Setup:
    """What the study runs on: the demo's recipe, with these overrides (a tiny teacher in the test)."""

    demo_flags: dict = field(default_factory=dict)
    """``lrc train`` flags over the demo's (teacher, data, width, LRC steps ...)."""
    train_text: str = str(SAMPLE / "train.txt")
    heldout: str = str(SAMPLE / "heldout.txt")
    ood: str = str(SAMPLE / "ood_heldout.txt")

    def flags(self, out: Path, **over):
        """The demo's configuration with ``demo_flags`` and ``over``, into ``out``."""
        from lrc.training.parse import parse_flags

        return parse_flags({"demo": True, "onpolicy_steps": 0, "eval_steps": 10**6, "diagnostics_steps": 0,
                            **self.demo_flags, "output_dir": str(out), **over})


def lrc_checkpoint(setup: Setup, out: Path) -> Path:
    """The shared start: the demo's LRC run, converted (done once)."""
    from lrc.after.convert import convert_checkpoint
    from lrc.training.run import train

    run = out / "lrc"
    if not (run / "student" / "model.safetensors").is_file():
        train(setup.flags(run, resume="auto", overwrite_output_dir=False))
        convert_checkpoint(str(run), str(run / "student"), overwrite=True)
    return run


def _train_with_limit(cfg, budget: float):
    from lrc.training.run import train
    from lrc.training.trainer import BaselineTrainer, LRCTrainer

    base = LRCTrainer if cfg.run.model_cls == "lrc" else BaselineTrainer

    class Limited(base):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(time_limit(budget))

    return train(cfg, Limited)


def run_arm(setup: Setup, arm: str, seed: int, lrc: Path, out: Path, budget: float, dense_steps: int | None) -> dict:
    """Train one arm into ``out``; returns {"dir": the student's directory, "steps", "train_s", ...}."""
    from lrc.onpolicy.demo_act import cut_prompts
    from lrc.onpolicy.options import OnPolicyOptions
    from lrc.onpolicy.run import onpolicy

    t0 = time.time()
    base = setup.flags(out)
    teacher, lrc_steps, batch, seq = (base.run.raw_model_name, base.optim.max_steps, base.optim.batch_size,
                                      base.run.data_max_len)
    prompts_file = out.parent / "train_prompts.jsonl"
    if not prompts_file.is_file():
        prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in cut_prompts(setup.train_text)))
    if arm == "lrc_more":
        cfg = setup.flags(out, init_from=str(lrc), proj_init="random", learning_rate=1e-4, lr_scheduler="constant",
                          warmup_ratio=0.0, max_steps=10**5, save_steps=10**5, seed=seed, overwrite_output_dir=True)
        tr = _train_with_limit(cfg, budget)
        from lrc.after.convert import convert_checkpoint

        convert_checkpoint(str(out), str(out / "student"), overwrite=True)
        return {"dir": str(out / "student"), "steps": tr.state.global_step, "train_s": time.time() - t0}
    if arm == "dense_kd":
        cfg = setup.flags(out, model_cls="only_kd", init_from=str(lrc / "student"), proj_init="random",
                          learning_rate=3e-5, lr_scheduler="constant", warmup_ratio=0.0, max_steps=10**5,
                          save_steps=10**5, seed=seed, overwrite_output_dir=True)
        tr = _train_with_limit(cfg, budget)
        return {"dir": str(out), "steps": tr.state.global_step, "train_s": time.time() - t0}
    if arm == "prune_kd":
        steps = lrc_steps + (dense_steps or 0)
        from lrc.training.run import train

        cfg = setup.flags(out, model_cls="prune_kd", max_steps=steps, save_steps=10**5, seed=seed,
                          overwrite_output_dir=True)
        tr = train(cfg)
        return {"dir": str(out), "steps": tr.state.global_step, "train_s": time.time() - t0,
                "tokens": steps * batch * seq}
    if arm in ("onpolicy_rkl", "onpolicy_jsd"):
        opts = OnPolicyOptions(student=str(lrc / "student"), teacher=teacher, prompts=str(prompts_file),
                               output_dir=str(out), chat_template="off", max_new_tokens=NEW_TOKENS, batch_size=4,
                               divergence="reverse_kl" if arm == "onpolicy_rkl" else "jsd", learning_rate=3e-5,
                               lr_scheduler="constant", max_steps=10**5, save_steps=10**5, log_steps=5, seed=seed,
                               overwrite_output_dir=True)
        tr = onpolicy(opts, callbacks=[time_limit(budget)])
        return {"dir": str(out), "steps": tr.state.global_step, "train_s": time.time() - t0}
    if arm == "sft_teacher":
        return sft_on_teacher_samples(lrc / "student", teacher, prompts_file, out, budget, seed) | {
            "train_s": time.time() - t0}
    raise ValueError(arm)


def sft_on_teacher_samples(student: Path, teacher_path: str, prompts_file: Path, out: Path, budget: float,
                           seed: int) -> dict:
    """Sequence-level KD: the teacher samples completions for 40 % of ``budget``, then TRL's SFTTrainer trains the
    student on them (completion tokens only) for the rest."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from lrc.onpolicy.measure import sample
    from lrc.teacher import load_teacher, load_tokenizer

    t0 = time.time()
    teacher = load_teacher(teacher_path, dtype=torch.float32)
    tok = load_tokenizer(str(student), teacher.config.vocab_size)
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    rows = []
    for i in range(0, len(prompts), 8):
        if time.time() - t0 >= 0.4 * budget:
            break
        for c in sample(teacher, tok, prompts[i:i + 8], chat=False, max_new_tokens=NEW_TOKENS, seed=seed * 1000 + i,
                        batch=8):
            rows.append({"prompt": tok.decode(c.prompt_ids, skip_special_tokens=True), "completion": " " + c.text})
    del teacher
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    args = SFTConfig(output_dir=str(out / "sft"), per_device_train_batch_size=4, learning_rate=3e-5,
                     lr_scheduler_type="constant", max_steps=10**5, save_strategy="no", logging_steps=10,
                     report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False, seed=seed,
                     completion_only_loss=True, max_length=128)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[time_limit(budget - (time.time() - t0))])
    trainer.train()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"dir": str(out), "steps": trainer.state.global_step, "teacher_completions": len(rows)}


def evaluate(model, teacher, tok, helds: dict, judge: list[str], seed: int) -> dict:
    """Held-out perplexities of ``model`` (a model directory, or the teacher itself) and, for a student, the
    teacher's judgement of its own samples of the ``judge`` prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrc.after.evaluate import heldout_perplexity
    from lrc.onpolicy.measure import sample, teacher_scores

    if not isinstance(model, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    out = {f"ppl_{k}": heldout_perplexity(model, h, 4).ppl for k, h in helds.items()}
    if model is not teacher:
        s = teacher_scores(model, teacher, sample(model, tok, judge, chat=False, max_new_tokens=NEW_TOKENS, seed=seed))
        out |= {"reverse_kl": s.reverse_kl, "teacher_logprob": s.teacher_logprob, "judged_tokens": s.tokens}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/after_lrc")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--budget-s", type=float, default=150.0, help="training wall-clock per arm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--json", default="docs/bench/after_lrc_study.json")
    p.add_argument("--md", default="docs/REPRODUCE_SMALL.md")
    p.add_argument("--png", default="docs/after_lrc_study.png")
    p.add_argument("--demo-flags", default="{}", help="JSON: lrc train flags over the demo's (a tiny teacher in tests)")
    p.add_argument("--train-text", default=str(SAMPLE / "train.txt"))
    p.add_argument("--heldout", default=str(SAMPLE / "heldout.txt"))
    p.add_argument("--ood", default=str(SAMPLE / "ood_heldout.txt"))
    a = p.parse_args(argv)
    setup = Setup(json.loads(a.demo_flags), a.train_text, a.heldout, a.ood)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lrc.data.datasets import build_dataset
    from lrc.onpolicy.demo_act import cut_prompts
    from lrc.teacher import load_teacher, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(a.json).read_text()) if Path(a.json).is_file() else {}
    results.setdefault("arms", {})
    results.update(command="python scripts/study_after_lrc.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   date=str(date.today()), machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
                   torch=torch.__version__, budget_s=a.budget_s, new_tokens=NEW_TOKENS)
    lrc = lrc_checkpoint(setup, out)
    base = setup.flags(out)
    teacher_path, seq = base.run.raw_model_name, base.run.data_max_len
    teacher = load_teacher(teacher_path, dtype=torch.float32)
    tok = load_tokenizer(teacher_path, teacher.config.vocab_size)
    helds = {k: torch.utils.data.Subset(ds, range(min(EVAL_SEQUENCES, len(ds)))) for k, ds in (
        ("in_domain", build_dataset(setup.heldout, seq, teacher.config.vocab_size, tok)),
        ("out_of_domain", build_dataset(setup.ood, seq, teacher.config.vocab_size, tok)))}
    judge = cut_prompts(setup.heldout)[-JUDGE_PROMPTS:]

    def save() -> None:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=1))

    for name, d in (("teacher", teacher), ("lrc_start", str(lrc / "student"))):
        if name not in results:
            results[name] = evaluate(d, teacher, tok, helds, judge, seed=0)
            save()
    for seed in [int(s) for s in a.seeds.split(",")]:
        for arm in a.arms.split(","):
            key = f"{arm}/seed{seed}"
            if key in results["arms"]:
                continue
            dense = results["arms"].get(f"dense_kd/seed{seed}", {}).get("steps")
            print(f"=== {key} ===", flush=True)
            r = run_arm(setup, arm, seed, lrc, out / f"{arm}-seed{seed}", a.budget_s, dense)
            r |= evaluate(r["dir"], teacher, tok, helds, judge, seed)
            results["arms"][key] = r
            save()
            shutil.rmtree(out / f"{arm}-seed{seed}" / "sft", ignore_errors=True)
    write_report(results, a.md, a.png)
    return 0


METRICS = (("ppl_in_domain", "held-out ppl, Austen", "{:.1f}"), ("ppl_out_of_domain", "held-out ppl, Python docs",
                                                                  "{:.0f}"),
           ("reverse_kl", "reverse KL on own samples", "{:.3f}"), ("teacher_logprob", "teacher log-prob / token",
                                                                  "{:.3f}"))


def write_report(results: dict, md: str, png: str) -> None:
    """The table (mean ± half the seed-to-seed spread) into ``md`` between markers, and the plot."""
    import statistics

    arms = {}
    for key, r in results["arms"].items():
        arms.setdefault(key.split("/")[0], []).append(r)
    rows = ["| after the LRC checkpoint | steps | " + " | ".join(m[1] for m in METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS)]
    for name, ref in (("teacher", results["teacher"]), ("LRC checkpoint (start)", results["lrc_start"])):
        rows.append(f"| {name} | - | " + " | ".join(m[2].format(ref[m[0]]) if m[0] in ref else "-" for m in METRICS)
                    + " |")
    for arm in ARMS:
        rs = arms.get(arm)
        if not rs:
            continue

        def cell(k, f):
            v = [r[k] for r in rs]
            return f.format(statistics.mean(v)) + (f" ± {f.format((max(v) - min(v)) / 2)}" if len(v) > 1 else "")

        rows.append(f"| `{arm}` | {'/'.join(str(r['steps']) for r in rs)} | "
                    + " | ".join(cell(m[0], m[2]) for m in METRICS) + " |")
    table = "\n".join(rows)
    begin, end = "<!-- after-lrc:begin (scripts/study_after_lrc.py) -->", "<!-- after-lrc:end -->"
    text = Path(md).read_text()
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n\n" + table + "\n\n" + end + rest.split(end, 1)[1]
        Path(md).write_text(text)
    else:
        print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    names = [a for a in ARMS if a in arms]
    for ax, (k, label, _) in zip(axes, METRICS):
        every = [r[k] for arm in names for r in arms[arm]] + ([results["lrc_start"][k]] if k in results["lrc_start"]
                                                             else [])
        floor = min(every) - 0.1 * (max(every) - min(every)) if k == "teacher_logprob" else 0.0  # bars from below
        for i, arm in enumerate(names):
            v = [r[k] for r in arms[arm]]
            ax.bar(i, sum(v) / len(v) - floor, bottom=floor, color="C0" if "onpolicy" in arm else "C7")
            ax.plot([i] * len(v), v, "k.", ms=4)
        if k in results["lrc_start"]:
            ax.axhline(results["lrc_start"][k], color="C3", ls="--", lw=1, label="LRC start")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        if k.startswith("ppl"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
