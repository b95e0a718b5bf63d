"""``lrc train --demo``: train (``lrc.training.run.train``), convert to ``OUT/student``, compare held-out perplexities of the
teacher and the student in and out of domain (and, with ``--demo_baseline``, of a same-size student trained without
LRC on the same tokens; with ``--onpolicy_steps N``, a third act: N steps of on-policy distillation of the converted
student, ``lrc.onpolicy.demo_act``), then print the next commands. The demo's flags are
``configs/recipes/demo.yaml``."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from lrc.console import is_main_process, say
from lrc.training.config import TrainConfig


def lrc_command() -> str:
    """How to call ``lrc`` from here, for the commands the demo suggests: the ``lrc`` script beside this
    interpreter (``.venv/bin/lrc`` when the virtual environment is below the working directory), else
    ``PYTHON -m lrc``."""
    exe = Path(sys.executable)
    script = exe.parent / "lrc"
    try:
        shown = exe.parent.resolve().relative_to(Path.cwd().resolve())
        prefix = str(shown / "lrc") if script.is_file() else f"{shown / exe.name} -m lrc"
    except ValueError:
        prefix = str(script) if script.is_file() else f"{exe} -m lrc"
    return prefix


def _loss_terms(m) -> str:
    """The terms the LRC loss adds under LRCConfig ``m``, e.g. "CE + KL" (the clone terms are logged either way)."""
    terms = [name for name, on in (("CE", m.use_ntp_loss), ("KL", m.use_logits_loss),
                                   ("alpha x clone", m.use_aux_loss)) if on]
    return " + ".join(terms) + ("" if m.use_aux_loss else "; the clone terms are logged, not added")


def _loss_curve(trainer) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]


def baseline_config(cfg: TrainConfig, name: str, out: Path) -> TrainConfig:
    """The demo's same-size run without LRC: ``cfg`` with another method and output directory; the flags that only
    the LRC run reads no longer count as given (no warnings about them)."""
    from lrc.training.methods import method_named

    ignored = set(method_named(name).ignored_flags)
    base = cfg.with_flags(model_cls=name, output_dir=str(out), demo_baseline=None)
    return dataclasses.replace(base, given=tuple(k for k in cfg.given if k not in ignored))


def run_demo(cfg: TrainConfig, trainer_cls=None) -> None:
    """Train, convert to {output_dir}/student, compare held-out perplexities, print the next commands."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrc.after.convert import convert_checkpoint
    from lrc.after.evaluate import heldout_perplexity
    from lrc.data.datasets import build_dataset
    from lrc.teacher import load_tokenizer
    from lrc.training.methods import method_named
    from lrc.training.run import train

    t0 = time.time()
    trainer = train(cfg, trainer_cls)
    if trainer is None or not is_main_process():
        return
    r, o = cfg.run, cfg.optim
    method = method_named(r.model_cls)
    out = Path(r.output_dir).resolve()
    teacher = trainer.distill_model.teacher
    if method.needs_conversion:
        student_dir = out / "student"
        say(f"converting the final checkpoint to {student_dir} ...")
        convert_checkpoint(str(out), str(student_dir), overwrite=True)
    else:
        student_dir = out  # a baseline's output is already a standard HF checkpoint
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tok = load_tokenizer(r.tokenizer or r.raw_model_name, teacher.config.vocab_size)
    texts = [r.eval_dataset] + ([cfg.command.demo_ood_eval] if cfg.command.demo_ood_eval else [])
    helds = {path: build_dataset(path, r.data_max_len, teacher.config.vocab_size, tok) for path in texts}
    scores = {}  # held-out text -> (teacher, student) perplexities
    for path, held in helds.items():
        say(f"held-out perplexity on {path} ({len(held)} x {r.data_max_len} tokens) ...")
        scores[path] = (heldout_perplexity(teacher, held, o.batch_size), heldout_perplexity(student, held, o.batch_size))
    base_mc = cfg.command.demo_baseline if method.needs_conversion else None
    base_scores = {}  # held-out text -> the same-size student without LRC's perplexity
    if base_mc not in (None, "", "none"):
        base_dir = out / f"baseline-{base_mc}"
        say(f"\n--demo_baseline {base_mc}: the same student size WITHOUT LRC, on the same tokens, into {base_dir}")
        base_trainer = train(baseline_config(cfg, base_mc, base_dir))
        if base_trainer is not None:
            base_student = base_trainer.baseline_model.student
            base_scores = {path: heldout_perplexity(base_student, held, o.batch_size) for path, held in helds.items()}
    act_lines, act_next = [], None
    if cfg.command.onpolicy_steps and method.needs_conversion:  # act 3 follows an LRC run's conversion
        act_lines, act_next = _onpolicy_act(cfg, student_dir, out, teacher, student, tok, helds, scores)
    say("\n".join(_report(cfg, method, trainer, teacher, student, student_dir, scores, base_mc, base_scores,
                          time.time() - t0, act_lines, act_next)))


def _onpolicy_act(cfg: TrainConfig, student_dir: Path, out: Path, teacher, student, tok, helds,
                  scores) -> tuple[list[str], str]:
    """Act 3 (``--onpolicy_steps``): ``lrc.onpolicy.demo_act``; its report lines and the command that continues it."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrc.after.evaluate import heldout_perplexity
    from lrc.onpolicy import demo_act

    r, o, steps = cfg.run, cfg.optim, cfg.command.onpolicy_steps
    act = demo_act.run_act(steps, student_dir, r.raw_model_name, r.eval_dataset, out / "onpolicy", o.seed)
    tuned = AutoModelForCausalLM.from_pretrained(act["dir"], dtype=torch.float32).eval()
    rows = []
    for path, held in helds.items():
        t, s = scores[path]
        after = heldout_perplexity(tuned, held, o.batch_size)
        rows.append(f"held-out perplexity on {Path(path).name}: teacher {t.ppl:.1f}, LRC student {s.ppl:.1f}, after "
                    f"{steps} on-policy steps {after.ppl:.1f}")
    return (demo_act.report(act, teacher, student, tuned, tok, rows),
            demo_act.continue_command(act["options"], lrc_command(), 5 * steps) + "   # on-policy distillation, on")


def _report(cfg: TrainConfig, method, trainer, teacher, student, student_dir: Path, scores, base_mc, base_scores,
            seconds: float, act_lines: list[str] = (), act_next: str | None = None) -> list[str]:
    """The demo's closing table and next commands."""
    r, o, m = cfg.run, cfg.optim, cfg.method
    out = Path(r.output_dir).resolve()
    t_ppl, s_ppl = scores[r.eval_dataset]
    curve = _loss_curve(trainer)
    n_t = sum(p.numel() for p in teacher.parameters()) / 1e6
    n_s = sum(p.numel() for p in student.parameters()) / 1e6
    lrc_run = method.needs_conversion
    lrc = lrc_command()
    return [
        "",
        "=" * 78,
        f"{'LRC' if lrc_run else method.name} demo finished in {seconds:.0f}s",
        *([f"recipe: --proj_init {m.proj_init} --use_aux_loss {m.use_aux_loss} --aux_loss_scale_factor "
           f"{m.aux_loss_scale_factor} --learning_rate {o.learning_rate} (flags after --demo override it)"]
          if lrc_run else []),
        f"training loss ({_loss_terms(m) if lrc_run else method.name}): step {curve[0][0]}: "
        f"{curve[0][1]:.2f} -> step {curve[-1][0]}: {curve[-1][1]:.2f}",
        f"held-out perplexity on {Path(r.eval_dataset).name} ({t_ppl.tokens} predicted tokens):",
        f"  teacher SmolLM2-135M-Instruct  {n_t:6.1f}M params  ppl {t_ppl.ppl:10.1f}",
        f"  student d_s={m.target_hidden_size:<4}              {n_s:6.1f}M params  ppl {s_ppl.ppl:10.1f}"
        f"  ({s_ppl.ppl / t_ppl.ppl:.1f}x the teacher's)",
        *([f"  same size without LRC (--demo_baseline {base_mc}, same tokens)  ppl "
           f"{base_scores[r.eval_dataset].ppl:10.1f}  ({base_scores[r.eval_dataset].ppl / t_ppl.ppl:.1f}x)"]
          if base_scores else [] if not lrc_run else [
            "  same size without LRC: --demo_baseline prune_kd trains it on the same tokens (about 5 more minutes "
            "here); on 32K tokens of prose (docs/REPRODUCE_SMALL.md) prune_kd reached 6-7x the teacher's perplexity, "
            "this recipe 8-10x"]),
        *[f"another domain, {Path(p).name} ({t.tokens} predicted tokens): teacher ppl {t.ppl:.1f}, student ppl "
          f"{s.ppl:.1f} ({s.ppl / t.ppl:.1f}x: what the student inherited beyond its training text)"
          + (f"; without LRC ({base_mc}) {base_scores[p].ppl:.1f} ({base_scores[p].ppl / t.ppl:.1f}x)"
             if base_scores else "")
          for p, (t, s) in scores.items() if p != r.eval_dataset],
        f"  ({o.max_steps} steps x {o.batch_size} x {r.data_max_len} tokens: a smoke run; "
        f"the paper trains on ~10B tokens)",
        *act_lines,
        f"outputs in {out}: checkpoint-N/, " + ("lrc_weights.safetensors, student/ (a standard HF model)" if lrc_run
                                                else "the student as a standard HF model (no conversion needed)"),
        "next:",
        f"  {lrc} train --demo{'' if lrc_run else ' --model_cls ' + method.name} --output_dir {out} "
        f"--max_steps {2 * o.max_steps} --resume auto   # train on",
        *([f"  {lrc} convert --ckpt-path {out} --save-path {out / 'student-again'}"] if lrc_run else []),
        *([f"  {act_next}"] if act_next else
          [f"  {lrc} train --demo --onpolicy_steps 20   # the demo with act 3: on-policy distillation after LRC"]
          if lrc_run else []),
        f"  {lrc} eval --model {student_dir} --data {r.eval_dataset} --data_max_len {r.data_max_len}",
        f"  {lrc} eval --model {r.raw_model_name} --data {r.eval_dataset} --data_max_len {r.data_max_len}   # the "
        f"teacher",
        "=" * 78,
    ]
