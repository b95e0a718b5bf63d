"""Benchmark evaluation of a converted student with lm-evaluation-harness (the official code's ``scripts/eval.sh``;
docs/AFTER_TRAINING.md, section 2).

One implementation of the task lists, the reported metric per task, batch sizes and the paper's
numbers; ``scripts/eval.sh`` is a thin wrapper over this module's CLI::

    lrc harness --model runs/demo/student --tasks paper            # the paper's 9 tasks
    lrc harness --model DIR --tasks all --device cuda               # the official eval.sh's 12 tasks
    lrc harness --model DIR --tasks arc_easy,piqa --fewshot 5 --limit 100
    lrc harness --model DIR --tasks my_task --include_path my_tasks/  # custom local tasks

(``python -m lrc.after.harness`` is the same command.)

The model is loaded with lm-eval's ``hf`` backend (plain ``AutoModelForCausalLM``, no remote code).
Tasks are grouped by batch size and each group is one ``lm_eval.simple_evaluate`` call. Written to
``--output_dir``: ``results.json`` (the reported metric, its stderr and every metric of each task),
``results.md`` (the same as a table that names the metric each task reports, with the paper's numbers
beside it where known) and ``lm_eval_results.json`` (lm-eval's own results, without samples).

Held-out perplexity on a text file (``--heldout FILE``) uses ``lrc.after.evaluate.heldout_perplexity``,
the same evaluator as ``python -m lrc.after.evaluate`` and the benchmarks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrc.checkpoint import WEIGHTS_NAME, list_checkpoints
from lrc.cli.options import options, run_command
from lrc.errors import LRCError

log = logging.getLogger(__name__)


class HarnessError(LRCError, ValueError):
    """Bad evaluation input (model path, task name, flag); the message names it."""


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task as this project reports it."""

    name: str
    """lm-eval task (or group) name."""
    metric: str
    """The metric reported in tables: ``acc`` or ``acc_norm`` (lm-eval computes both where defined)."""
    batch_size: int = 32
    """Per-task batch size of the official ``scripts/eval.sh`` (32; 8 for the long-context tasks), also
    used for tasks outside ``TASKS`` (custom or other lm-eval tasks)."""


# The official code's scripts/eval.sh runs these 12 tasks 0-shot, batch 32 except boolq / mmlu /
# commonsense_qa at 8. The official code never says whether it reported acc or acc_norm; our choice:
# acc_norm (length-normalised) wherever lm-eval defines it, acc elsewhere. Both land in results.json.
# ``truthfulqa`` of the official list is lm-eval's group of mc1 + mc2 + gen (generation, with BLEU /
# ROUGE); we run its multiple-choice part ``truthfulqa_mc2`` (acc), the usual zero-shot number.
TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("sciq", "acc_norm"),
    TaskSpec("piqa", "acc_norm"),
    TaskSpec("winogrande", "acc"),
    TaskSpec("arc_easy", "acc_norm"),
    TaskSpec("logiqa", "acc_norm"),
    TaskSpec("arc_challenge", "acc_norm"),
    TaskSpec("hellaswag", "acc_norm"),
    TaskSpec("boolq", "acc", 8),
    TaskSpec("mmlu", "acc", 8),
    TaskSpec("commonsense_qa", "acc", 8),
    TaskSpec("openbookqa", "acc_norm"),
    TaskSpec("truthfulqa_mc2", "acc"),
]}

PAPER_TASKS: tuple[str, ...] = ("sciq", "piqa", "winogrande", "arc_easy", "logiqa", "arc_challenge", "boolq", "mmlu",
                                "commonsense_qa")
"""The paper's 9 zero-shot tasks (official README command)."""

ALL_TASKS: tuple[str, ...] = tuple(TASKS)
"""The 12-task list of the official ``scripts/eval.sh``."""

ALIASES = {"truthfulqa": "truthfulqa_mc2"}

_PAPER_ORDER = ("arc_easy", "arc_challenge", "logiqa", "commonsense_qa", "piqa", "winogrande", "boolq", "sciq", "mmlu")
_PAPER_TABLE = {  # zero-shot accuracy (%), in _PAPER_ORDER; (teacher, training tokens)
    "LRC-4B": ("Qwen2.5-7B", "18B", (78.37, 52.47, 34.10, 79.28, 76.82, 67.72, 84.50, 95.00, 64.41)),
    "LRC-2.7B-B": ("Llama2-7B", "10B", (58.59, 29.61, 29.03, 36.36, 66.97, 62.43, 74.31, 85.50, 31.20)),
    "Gemma3-4B": ("-", "4T", (82.53, 57.08, 33.03, 69.37, 76.44, 69.38, 83.94, 95.50, 57.58)),
    "Minitron-4B": ("Nemotron4-15B", "94B", (79.59, 54.35, 30.26, 71.09, 77.64, 65.93, 82.60, 96.60, 56.77)),
    "Qwen3-4B": ("-", "36T", (80.47, 53.58, 33.64, 75.76, 75.08, 65.27, 84.95, 95.50, 68.38)),
    "Sheared-Llama-2.7B-B": ("Llama2-7B", "50B", (67.30, 33.58, 28.26, 18.92, 76.17, 65.04, 65.99, 91.10, 26.56)),
}
PAPER_RESULTS: dict[str, dict[str, float]] = {m: {t: v / 100 for t, v in zip(_PAPER_ORDER, row[2])}
                                              for m, row in _PAPER_TABLE.items()}
"""The paper's published zero-shot scores (arXiv 2505.12781, main table; the harness's metric per task), per model,
then per task, as fractions in [0, 1]. ``--paper_model`` picks the row shown beside your results (default LRC-4B:
Qwen2.5-7B teacher, 18B tokens); ``--reference FILE.json`` replaces it with any other numbers."""
PAPER_MODEL_INFO: dict[str, str] = {m: f"teacher {row[0]}, {row[1]} training tokens" for m, row in _PAPER_TABLE.items()}

@dataclass
class HarnessConfig:
    """Everything one evaluation run needs."""

    model: str
    """Converted student (or any HF causal-LM directory)."""
    tasks: list[str]
    """Resolved lm-eval task names."""
    output_dir: Path
    fewshot: int = 0
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N``."""
    dtype: str = "auto"
    """``auto``: float32 on CPU, the checkpoint's dtype on GPU; or float32 / bfloat16 / float16."""
    batch_size: int | None = None
    """Overrides every per-task batch size."""
    limit: float | None = None
    """lm-eval ``--limit``: documents per task (int) or fraction (<1). For smoke tests only."""
    include_path: str | None = None
    reference: dict[str, float] = field(default_factory=dict)
    """Numbers to show beside the results (``--reference``); when given they replace the paper's."""
    paper_model: str | None = "LRC-4B"
    """The paper's row (``PAPER_RESULTS``) shown beside the results; None: none."""
    heldout: str | None = None
    heldout_max_len: int = 1024
    seed: int = 1234
    backend: str = "hf"
    """lm-eval model backend: ``hf`` (transformers, tested) or ``vllm`` (needs vLLM; not verified here)."""


# ----------------------------------------------------------------------------- task lists


def _known_lines(extra: list[str]) -> str:
    known = ", ".join(ALL_TASKS)
    more = f"; from --include_path: {', '.join(sorted(extra))}" if extra else ""
    return f"known tasks: {known} (presets: paper, all){more}"


def include_path_tasks(include_path: str | None) -> list[str]:
    """Task and group names defined by the YAML files under ``include_path`` (read without lm-eval)."""
    if not include_path:
        return []
    root = Path(include_path)
    if not root.is_dir():
        raise HarnessError(f"--include_path {include_path!r} is not a directory")
    import yaml

    names = []
    for f in sorted(root.rglob("*.yaml")):
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError:
            continue  # lm-eval YAMLs may use !function tags; such files are checked by lm-eval itself
        for key in ("task", "group"):
            if isinstance(doc, dict) and isinstance(doc.get(key), str):
                names.append(doc[key])
    return names


def resolve_tasks(spec: str, include_path: str | None = None, lm_eval_names: set[str] | None = None) -> list[str]:
    """``paper`` | ``all`` | comma-separated task names -> lm-eval task names, in order, no duplicates.

    A name must be one of ``TASKS`` (``truthfulqa`` means ``truthfulqa_mc2``), a task under
    ``include_path``, or (when ``lm_eval_names`` is given) any task lm-eval knows; otherwise the
    error lists the known ones.
    """
    spec = spec.strip()
    if spec == "paper":
        return list(PAPER_TASKS)
    if spec == "all":
        return list(ALL_TASKS)
    custom = include_path_tasks(include_path)
    out: list[str] = []
    for raw in spec.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            raise HarnessError(f"--tasks {spec!r} has an empty task name; {_known_lines(custom)}")
        if name in ("paper", "all"):
            expand = PAPER_TASKS if name == "paper" else ALL_TASKS
            out += [t for t in expand if t not in out]
            continue
        if name not in TASKS and name not in custom and not (lm_eval_names and name in lm_eval_names):
            raise HarnessError(f"unknown task {name!r}; {_known_lines(custom)}; or any other task name lm-eval knows")
        if name not in out:
            out.append(name)
    return out


def task_spec(name: str, batch_size: int | None = None) -> TaskSpec:
    """The spec of a task; tasks outside ``TASKS`` report ``acc`` at the default batch size."""
    t = TASKS.get(name, TaskSpec(name, "acc"))
    return TaskSpec(t.name, t.metric, batch_size or t.batch_size)


# ----------------------------------------------------------------------------- running lm-eval


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "mps" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HarnessError(f"--device {device!r}: no CUDA device is visible (use --device cpu)")
        return device
    raise HarnessError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> ``float32`` on CPU (bf16 matmuls are slow there), else the checkpoint's own dtype."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "auto"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise HarnessError(f"--dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    return dtype


def check_model_dir(model: str) -> None:
    """The model must be a standard HF directory (a converted student), not an LRC checkpoint."""
    p = Path(model)
    if not p.exists():
        raise HarnessError(f"--model {model!r} does not exist")
    if p.is_file():
        raise HarnessError(f"--model {model!r} is a file: expected a converted student directory (config.json + weights)")
    if not (p / "config.json").is_file():
        ckpts = list_checkpoints(p)
        if (p / WEIGHTS_NAME).is_file() or (ckpts and (ckpts[-1][1] / WEIGHTS_NAME).is_file()):
            raise HarnessError(
                f"--model {model!r} is an LRC training checkpoint, not a model: convert it first with "
                f"python convert_ckpt.py --ckpt-path {model} --save-path STUDENT_DIR")
        if ckpts and (ckpts[-1][1] / "config.json").is_file():  # a baseline run stopped before its final save
            raise HarnessError(f"--model {model!r} has no config.json; its latest checkpoint is a standard HF "
                               f"model: pass --model {ckpts[-1][1]}")
        raise HarnessError(f"--model {model!r} has no config.json: expected a converted student directory")


def run_lm_eval(cfg: HarnessConfig) -> dict[str, Any]:
    """Run every task (grouped by batch size); return lm-eval's merged ``results``/``configs``/... dicts."""
    import lm_eval

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    manager = _task_manager(cfg.include_path)
    groups: dict[int, list[str]] = {}
    for t in cfg.tasks:
        groups.setdefault(task_spec(t, cfg.batch_size).batch_size, []).append(t)
    merged: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                              "higher_is_better": {}, "n-samples": {}}
    if cfg.backend == "vllm":  # vLLM schedules its own batches: one call, batch size "auto"
        groups = {0: list(cfg.tasks)}
    model_args = {"pretrained": cfg.model, "dtype": dtype, "trust_remote_code": False}
    for bs, tasks in groups.items():
        log.info("lm-eval %s: %s (batch size %s, %d-shot, %s, %s)", cfg.backend, ",".join(tasks), bs or "auto",
                 cfg.fewshot, device, dtype)
        out = lm_eval.simple_evaluate(
            model=cfg.backend, model_args=model_args,
            tasks=tasks, num_fewshot=cfg.fewshot, batch_size=bs or "auto", device=device, limit=cfg.limit,
            task_manager=manager, log_samples=False, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        )
        if out is None:  # non-zero ranks under a distributed launch
            continue
        for k in merged:
            merged[k].update(out.get(k) or {})
        merged.setdefault("config", out.get("config"))
    return merged


def _metric(entry: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    """(value, stderr) of ``metric`` under lm-eval's ``"metric,filter"`` keys (filter ``none`` first)."""
    keys = [k for k in entry if k.split(",")[0] == metric and "_stderr" not in k]
    keys.sort(key=lambda k: k != f"{metric},none")
    if not keys:
        return None, None
    value = entry[keys[0]]
    stderr = entry.get(keys[0].replace(metric, f"{metric}_stderr", 1))
    as_float = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
    return as_float(value), as_float(stderr)


def summarize(cfg: HarnessConfig, raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Our summary: per task the reported metric, its stderr, every numeric metric, shots, batch size."""
    tasks = {}
    for name in cfg.tasks:
        spec = task_spec(name, cfg.batch_size)
        entry = raw["results"].get(name)
        if entry is None:
            raise HarnessError(f"lm-eval returned no result for task {name!r} (got {sorted(raw['results'])})")
        metric = spec.metric
        value, stderr = _metric(entry, metric)
        if value is None and metric == "acc_norm":  # a custom task without acc_norm
            metric = "acc"
            value, stderr = _metric(entry, metric)
        all_metrics = {k.split(",")[0]: v for k, v in entry.items()
                       if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        tasks[name] = {"metric": metric, "value": value, "stderr": stderr, "num_fewshot": cfg.fewshot,
                       "batch_size": spec.batch_size, "metrics": all_metrics,
                       "paper": cfg.reference.get(name) if cfg.reference else
                       PAPER_RESULTS.get(cfg.paper_model, {}).get(name)}
    scored = [t["value"] for t in tasks.values() if t["value"] is not None]
    return {"model": cfg.model, "num_fewshot": cfg.fewshot, "limit": cfg.limit, "seconds": round(seconds, 1),
            "tasks": tasks, "average": sum(scored) / len(scored) if scored else None,
            "lm_eval_version": _lm_eval_version(), "paper_model": None if cfg.reference else cfg.paper_model}


def _lm_eval_version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "unknown")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def markdown_table(summary: dict[str, Any], reference_label: str = "paper") -> str:
    """The results as a markdown table: task, reported metric, score (%), stderr, paper (%) where known."""
    lines = [f"Model: `{summary['model']}`, {summary['num_fewshot']}-shot, lm-eval {summary['lm_eval_version']}"
             + (f", limit {summary['limit']} (not a full evaluation)" if summary["limit"] else ""), "",
             f"| task | metric | score (%) | ± stderr | {reference_label} (%) |", "|---|---|---|---|---|"]
    for name, t in summary["tasks"].items():
        lines.append(f"| {name} | {t['metric']} | {_pct(t['value'])} | {_pct(t['stderr'])} | {_pct(t['paper'])} |")
    lines.append(f"| **average** | | {_pct(summary['average'])} | | |")
    if "heldout" in summary:
        h = summary["heldout"]
        lines += ["", f"Held-out perplexity on `{h['data']}` ({h['tokens']} tokens, sequences of {h['max_len']}): "
                      f"{h['ppl']:.2f} (CE {h['ce']:.4f})"]
    paper_model = summary.get("paper_model")
    if paper_model:
        lines += ["", f"{reference_label} column: {paper_model} ({PAPER_MODEL_INFO[paper_model]}) as published in arXiv "
                      f"2505.12781 (zero-shot); --paper_model picks another row, --reference FILE.json any numbers."]
    if not any(t["paper"] is not None for t in summary["tasks"].values()):
        lines += ["", f"{reference_label} column: no published number for these tasks; pass --reference FILE.json."]
    return "\n".join(lines) + "\n"


def heldout(cfg: HarnessConfig) -> dict[str, Any]:
    """Held-out CE / perplexity of the model on ``cfg.heldout`` (``lrc.after.evaluate``)."""
    from lrc.after.evaluate import model_heldout_perplexity

    r = model_heldout_perplexity(cfg.model, cfg.heldout, cfg.heldout_max_len, device=resolve_device(cfg.device))
    return {"data": cfg.heldout, "max_len": cfg.heldout_max_len, **asdict(r)}


def evaluate(cfg: HarnessConfig) -> dict[str, Any]:
    """Run the configured evaluation and write results.json, results.md and lm_eval_results.json."""
    check_model_dir(cfg.model)
    # held-out first: it is cheap, and a bad --heldout then fails before the benchmarks run, not after
    held = heldout(cfg) if cfg.heldout else None
    t0 = time.time()
    raw = run_lm_eval(cfg)
    summary = summarize(cfg, raw, time.time() - t0)
    if held is not None:
        summary["heldout"] = held
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_eval_results.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(summary, "reference" if cfg.reference else "paper"))
    return summary


# ----------------------------------------------------------------------------- CLI


@options(group="what to evaluate, how")
class HarnessOptions:
    """``lrc harness`` / ``python -m lrc.after.harness`` flags (validated into a ``HarnessConfig``)."""

    model: str | None = None
    """required: the converted student directory (a standard HF checkpoint)"""
    tasks: str = "paper"
    """paper (the paper's 9 zero-shot tasks) | all (the official eval.sh's 12) | comma-separated task names"""
    fewshot: int = 0
    """number of few-shot examples for every task"""
    output_dir: str | None = None
    """where results go (default: MODEL/eval/<tasks>-<N>shot)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    dtype: str = "auto"
    """auto | float32 | bfloat16 | float16 (auto: fp32 on CPU)"""
    batch_size: int | None = None
    """override every per-task batch size"""
    limit: float | None = None
    """documents per task (smoke tests; not a full score)"""
    include_path: str | None = None
    """directory of custom lm-eval task YAMLs"""
    reference: str | None = None
    """a JSON file {"task": score in [0,1]} shown beside the results (instead of the paper's)"""
    paper_model: str = "LRC-4B"
    """the paper's published row shown beside the results: LRC-4B | LRC-2.7B-B | Gemma3-4B | Minitron-4B | Qwen3-4B |
    Sheared-Llama-2.7B-B | none"""
    heldout: str | None = None
    """also report held-out perplexity on this text / jsonl file"""
    heldout_max_len: int = 1024
    """sequence length for --heldout"""
    seed: int = 1234
    """lm-eval's seed"""
    backend: str = "hf"
    """lm-eval backend: hf | vllm (needs vLLM and a GPU; not verified in this repo's CI)"""


def _load_reference(path: str | None) -> dict[str, float]:
    if not path:
        return {}
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"--reference {path!r}: cannot read a JSON object: {e}") from None
    if not isinstance(d, dict) or not all(isinstance(v, (int, float)) for v in d.values()):
        raise HarnessError(f'--reference {path!r}: expected {{"task": score, ...}} with numbers in [0, 1]')
    return {ALIASES.get(k, k): float(v) for k, v in d.items()}


def config_from_args(args: HarnessOptions) -> HarnessConfig:
    """Validate the parsed flags into a ``HarnessConfig`` (raises ``HarnessError``)."""
    if args.backend not in ("hf", "vllm"):
        raise HarnessError(f"--backend {args.backend!r}: expected hf or vllm")
    if args.fewshot < 0:
        raise HarnessError(f"--fewshot {args.fewshot}: expected a number >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise HarnessError(f"--batch_size {args.batch_size}: expected a number >= 1")
    tasks = args.tasks.strip()
    try:
        names = resolve_tasks(tasks, args.include_path)
    except HarnessError:  # not in the LRC table: ask lm-eval which names it knows
        names = resolve_tasks(tasks, args.include_path, lm_eval_names=_lm_eval_task_names(args.include_path))
        log.warning("tasks outside the LRC table report 'acc' at batch size %d: %s",
                    args.batch_size or TaskSpec.batch_size,
                    ", ".join(n for n in names if n not in TASKS))
    if args.paper_model not in (*PAPER_RESULTS, "none"):
        raise HarnessError(f"--paper_model {args.paper_model!r}: expected one of {', '.join(PAPER_RESULTS)} or none")
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    label = tasks if tasks in ("paper", "all") else ("-".join(names) if len(names) <= 3 else f"{len(names)}tasks")
    out = Path(args.output_dir) if args.output_dir else Path(args.model) / "eval" / f"{label}-{args.fewshot}shot"
    return HarnessConfig(model=args.model, tasks=names, output_dir=out, fewshot=args.fewshot, device=args.device,
                         dtype=args.dtype, batch_size=args.batch_size, limit=limit, include_path=args.include_path,
                         reference=_load_reference(args.reference), heldout=args.heldout,
                         paper_model=None if args.paper_model == "none" else args.paper_model,
                         heldout_max_len=args.heldout_max_len, seed=args.seed, backend=args.backend)


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    """lm-eval's task index (building it reads every task YAML: about 5 s), built once per include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def _lm_eval_task_names(include_path: str | None) -> set[str]:
    """Every task / group / tag lm-eval knows."""
    return set(_task_manager(include_path).all_tasks)


def run(opts: HarnessOptions) -> None:
    """Evaluate, print the results table and say where the files went."""
    cfg = config_from_args(opts)
    summary = evaluate(cfg)
    print((Path(cfg.output_dir) / "results.md").read_text(), end="")
    print(f"results written to {cfg.output_dir}/results.json and results.md ({summary['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    """CLI entry: one ``error:`` line and its exit code on bad input (``lrc.errors.run_cli``)."""
    epilog = (f"Tasks: 'paper' = {','.join(PAPER_TASKS)}; 'all' = {','.join(ALL_TASKS)}. Offline: set "
              "HF_DATASETS_OFFLINE=1 with the datasets in the HF cache, or use --include_path.")
    return run_command(HarnessOptions, argv, run, prog="lrc harness", description=f"{__doc__}\n{epilog}",
                       required=("model",))


def cli(argv: list[str] | None = None) -> int:
    """``lrc harness``: ``main`` with lm-eval's progress logged (LOGLEVEL, default INFO)."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
