"""Train an LRC student: the official command line, on the HF Trainer (``lrc.trainer.LRCTrainer``).

    # the out-of-the-box run (SmolLM2-135M teacher, shipped text sample, ~9 min on 2 CPU cores)
    lrc train --demo

    # the official README command works verbatim (plus the accelerate config of your cluster)
    accelerate launch --config_file configs/accel_ds_zero2_8gpu.yaml hf_trainer.py --log_steps 100 \\
        --max_grad_norm 1.0 --learning-rate 1e-4 --gradient_accumulation_steps 1 --max_steps 208000 \\
        --dataset_name ../datasets/mix_general_llama3_tokenized_v5.1/train.jsonl --batch-size 3 \\
        --data-max-len 2048 --save_steps 20000 --check_data_cls_loss False --target_hidden_size 1536 \\
        --kl_temperature 40 --warmup-ratio 0.005 --raw-model-name /path/to/Llama-3.2-3B-Instruct \\
        --extra_tags general_train,8h800,arch,try_sota,all_ffn,all_attn --use_accelerate True \\
        --output_dir ../ckpts --str_ban_losses no --tie_word_emb_proj 1 --use_all_attn 1 \\
        --aux_loss_scale_factor 0.2

``lrc train --help`` prints every flag with its doc, its default and the official default where
they differ (also in docs/TRAINING.md). ``--flag-name`` and ``--flag_name`` are the same flag; a
``--config recipe.yaml`` gives flags from a file, and the command line overrides it (``lrc.options``). Outputs go exactly to ``--output_dir``: ``checkpoint-N/`` every ``--save_steps`` and
the final weights (``lrc_weights.safetensors`` + ``lrc_config.json``) at its root.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .console import is_main_process, say, warn
from .train_flags import FlagError, help_text, lrc_config_from_flags, parse_argv, parse_flags


# ---------------------------------------------------------------------------------------------- training
def _report_env(cfg: dict[str, Any]) -> None:
    out = str(Path(cfg["output_dir"]).resolve())
    if "wandb" in cfg["report_to"]:
        os.environ.setdefault("WANDB_PROJECT", cfg["project_name"])
        os.environ.setdefault("WANDB_DIR", out)
        tags = [t for t in cfg["extra_tags"].split(",") if t]
        os.environ.setdefault("WANDB_TAGS", ",".join([Path(cfg["dataset_name"]).name] + tags))
        has_key = bool(os.environ.get("WANDB_API_KEY"))
        netrc = Path.home() / ".netrc"
        has_key = has_key or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        if not has_key and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            say(f"wandb: no credentials (WANDB_API_KEY / ~/.netrc): logging offline under "
                f"{os.environ['WANDB_DIR']}/wandb (upload later with `wandb sync`)")
    if "tensorboard" in cfg["report_to"]:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(out) / "tensorboard"))
        say(f"tensorboard: logging to {os.environ['TENSORBOARD_LOGGING_DIR']}")
    if not cfg["report_to"]:
        say("report_to none: metrics go to the console and trainer_state.json (log_history)")


def build_training_args(cfg: dict[str, Any], cuda: bool):
    from transformers import TrainingArguments

    env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch` from its config
    if cfg["bf16"] == "auto":
        cfg["bf16"] = env_mp == "bf16" if env_mp != "no" else cuda
    if env_mp not in ("no", "bf16" if cfg["bf16"] else "no"):
        raise FlagError(f"--bf16 {cfg['bf16']} contradicts the accelerate config's mixed_precision: {env_mp} "
                        f"(only bf16 or no are supported)")
    bf16 = cfg["bf16"]
    sched_kwargs = {}
    if cfg["lr_scheduler"] == "warmup_stable_decay":
        sched_kwargs = {"num_decay_steps": max(1, round(0.1 * cfg["max_steps"]))}
    tags = [t for t in cfg["extra_tags"].split(",") if t]
    has_eval = bool(cfg["eval_dataset"])
    return TrainingArguments(
        output_dir=cfg["output_dir"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=(cfg["warmup_steps"] if cfg["warmup_steps"] is not None
                      else cfg["warmup_ratio"] if cfg["warmup_ratio"] > 0 else 0),
        max_steps=cfg["max_steps"],
        num_train_epochs=cfg["num_epochs"],
        adam_beta1=0.9, adam_beta2=cfg["adam_beta2"], adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=cfg["max_grad_norm"],
        logging_steps=cfg["log_steps"], logging_first_step=True,
        logging_nan_inf_filter=False,  # it syncs every micro-step and hides NaN; LRCTrainer stops on NaN instead
        save_strategy="steps", save_steps=cfg["save_steps"], save_total_limit=cfg["save_total_limit"] or None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(cfg["eval_steps"] or cfg["save_steps"]) if has_eval else None,
        prediction_loss_only=True,
        bf16=bf16,
        seed=cfg["seed"],
        report_to=cfg["report_to"] or "none",
        run_name=f"{'-'.join(tags) or 'lrc'}-ths{cfg['target_hidden_size']}lr{cfg['learning_rate']}"
                 f"kl_t{cfg['kl_temperature']}",
        dataloader_num_workers=cfg["num_workers"],
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        use_cpu=not cuda,  # on CPU this is what makes DDP / DeepSpeed really use several processes
    )


def _check_parallelism(args) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise FlagError("DeepSpeed ZeRO-3 is not supported: the student's weights are generated from teacher "
                        "tensors read outside their modules' forward, which partitioned parameters do not allow; "
                        "use ZeRO-2 (configs/accel_ds_zero2_8gpu.yaml)")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or args.fsdp:
        raise FlagError("FSDP is not supported (same reason as ZeRO-3: teacher tensors are read outside their "
                        "modules' forward); use DDP or DeepSpeed ZeRO-2")


def _check_free_space(out: Path, model, deepspeed: bool) -> None:
    """Warn when --output_dir cannot hold two more checkpoints (fp32 weights + AdamW's two moments)."""
    n = sum(p.numel() for p in model.trainable_parameters())
    need = 12 * n + (sum(p.numel() * p.element_size() for p in model.teacher.parameters()) if deepspeed else 0)
    free = shutil.disk_usage(out).free
    if free < 2 * need:
        warn(f"--output_dir {out} has {free / 2**30:.1f} GiB free; a checkpoint takes about {need / 2**30:.1f} GiB")


def train(cfg: dict[str, Any], trainer_cls=None):
    """Build everything from parsed flags and train.

    Returns the trainer after the final outputs are written, or None when there was nothing to train (a
    finished run resumed). Raises ``lrc.preemption.Preempted`` (exit 75) after a SIGTERM/SIGINT stop.
    """
    import torch

    from lrc.checkpoint import CheckpointError
    from lrc.errors import InterruptedRun
    from lrc.preemption import GracefulStop, Preempted
    from lrc.run_dir import decided_on_main, unpickler_refusal, weights_only_loads, write_final_outputs
    from lrc.run_start import RunStart, open_run_dir

    baseline = cfg["model_cls"] != "distill"
    cuda = torch.cuda.is_available()
    _report_env(cfg)
    args = build_training_args(cfg, cuda)  # under `accelerate launch` this initialises torch.distributed
    _check_parallelism(args)
    main = args.process_index == 0
    out = Path(cfg["output_dir"]).resolve()
    raw = cfg["raw_model_name"]
    teacher_path = str(Path(raw).resolve()) if Path(raw).exists() else raw
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(GracefulStop())
        start = RunStart(out)
        plan = decided_on_main(lambda: open_run_dir(cfg, args.world_size, teacher_path, stack, start), main)
        for m in plan.messages():
            say(m)
        if plan.finished_at is not None:
            say(f"{out} holds a run finished at step {plan.finished_at} (--max_steps {cfg['max_steps']}): nothing to "
                f"train; its final outputs are at its root")
            return None
        if plan.finalize_from is not None:
            if main:
                write_final_outputs(out, plan.finalize_from)
            say(f"{plan.finalize_from} is at --max_steps {cfg['max_steps']}: training had finished; its final outputs "
                f"are now written to {out}")
            return None
        with start.undone_on_failure(main):  # until training begins, a failure leaves --output_dir as it was
            trainer, stopper = _build(cfg, args, plan, teacher_path, trainer_cls, main, start, stop)
            if stop.requested:
                raise InterruptedRun(f"stopped by {stop.received} before training began; nothing was saved")
            start.training = True
        try:
            with weights_only_loads():
                trainer.train(resume_from_checkpoint=plan.checkpoint)
        except pickle.UnpicklingError as e:
            trainer.close_progress_bars()
            raise CheckpointError(f"{plan.checkpoint}: a file in it holds more than tensors and plain data, so it was not "
                                  f"loaded (torch's weights-only unpickler: {unpickler_refusal(e)}); nothing in a "
                                  f"checkpoint is ever unpickled with code") from e
        except BaseException:
            trainer.close_progress_bars()
            raise
        if stopper.stopped_at is not None:
            trainer.close_progress_bars()
            e = Preempted(f"stopped by {stop.received} after step {stopper.stopped_at}; {out / f'checkpoint-{stopper.stopped_at}'} "
                          f"is written. Resume: the same command with --resume auto")
            e.quiet = not main
            raise e
        if main:
            write_final_outputs(out, out / f"checkpoint-{trainer.state.global_step}", trainer.state.save_to_json)
        trainer.accelerator.wait_for_everyone()
    if baseline:
        say(f"final model: {out} (--model_cls {cfg['model_cls']}: a standard HF checkpoint, no conversion needed; "
            f"AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    else:
        say(f"final weights: {out / 'lrc_weights.safetensors'} (+ lrc_config.json, trainer_state.json)\n"
            f"convert: python convert_ckpt.py --ckpt-path {out} --save-path {out / 'student'}")
    return trainer


def _build(cfg: dict[str, Any], args, plan, teacher_path: str, trainer_cls, main: bool, start, stop):
    """Data, teacher, model, trainer for a planned run; the record written. Returns (trainer, its StopOnSignal)."""
    import torch
    from transformers import set_seed

    from lrc.checkpoint import CheckpointError, TeacherRef, init_from_checkpoint, load_into_projections, \
        load_lrc_checkpoint, official_to_ours
    from lrc.data import build_dataset, cut_note
    from lrc.model import LRCModel
    from lrc.preemption import StopOnSignal
    from lrc.teacher import find_tokenizer, load_teacher, load_teacher_config
    from lrc.trainer import BaselineTrainer, LRCTrainer

    baseline = cfg["model_cls"] != "distill"
    trainer_cls = trainer_cls or (BaselineTrainer if baseline else LRCTrainer)
    out = Path(cfg["output_dir"]).resolve()
    raw = cfg["raw_model_name"]
    tcfg = load_teacher_config(teacher_path)
    lrc = lrc_config_from_flags(cfg)
    tokenizer, no_tokenizer = find_tokenizer(cfg["tokenizer"] or teacher_path, tcfg.vocab_size)
    with args.main_process_first(desc="data check"):  # the first process checks and caches, the others read
        train_ds = build_dataset(cfg["dataset_name"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                 cfg["text_field"], no_tokenizer)
        eval_ds = None
        if cfg["eval_dataset"]:
            eval_ds = build_dataset(cfg["eval_dataset"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                    cfg["text_field"], no_tokenizer)
            if cfg["eval_max_sequences"]:
                eval_ds = torch.utils.data.Subset(eval_ds, range(min(cfg["eval_max_sequences"], len(eval_ds))))
    if tokenizer is None and baseline:
        warn(f"{no_tokenizer}: the trained student is saved without a tokenizer")
    note = cut_note(train_ds, "--dataset_name")
    if note:
        warn(note)
    plan.record["train_sequences"] = len(train_ds)

    t0 = time.time()
    teacher = load_teacher(teacher_path, dtype=torch.bfloat16 if cfg["bf16"] else torch.float32,
                           attn_implementation=cfg["attn_implementation"])
    say(f"teacher {raw} loaded in {time.time() - t0:.0f}s: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M "
        f"params, {tcfg.num_hidden_layers} layers, hidden {tcfg.hidden_size} -> student {lrc.target_hidden_size}")
    set_seed(cfg["seed"])  # projection / student init
    if baseline:
        from lrc.baselines import BaselineConfig, BaselineModel

        model = BaselineModel(teacher, BaselineConfig(cfg["model_cls"], lrc, attn_loss=cfg["tiny_bert_attn_loss"]))
        if cfg["gradient_checkpointing"]:
            model.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = LRCModel(teacher, lrc)
        model.projections.float()  # fp32 master weights whatever the teacher's dtype
        if cfg["gradient_checkpointing"]:
            model.enable_gradient_checkpointing()
    prune_kd = cfg["model_cls"] == "prune_kd"
    if (prune_kd or not baseline and lrc.proj_init == "activation") and plan.checkpoint is None:
        from lrc.activation_init import initialise_from_activations, prune_student_from_activations

        calib_ds = train_ds
        if cfg["calib_data"]:
            calib_ds = build_dataset(cfg["calib_data"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                     cfg["text_field"], no_tokenizer)
        t0 = time.time()
        init = (prune_student_from_activations if prune_kd else initialise_from_activations)(
            model, calib_ds, cfg["calib_tokens"])
        plan.record["proj_init"] = {**init, "calib_data": cfg["calib_data"] or cfg["dataset_name"]}
        say(f"activation-aware init: the student starts as the teacher pruned to its {len(init['channels'])} "
            f"most active residual channels ({init['calib_tokens']:,} calibration tokens, "
            f"{time.time() - t0:.0f}s); channels recorded in run_config.json")
    elif plan.checkpoint is not None and plan.stored and "proj_init" in plan.stored:
        plan.record["proj_init"] = plan.stored["proj_init"]  # the resumed run's start, kept in its record
    if cfg["load_model_weight_path"]:
        ck = load_lrc_checkpoint(cfg["load_model_weight_path"])
        weights = official_to_ours(ck.weights, lrc, model.kept_layers) if ck.official else ck.weights
        load_into_projections(model.projections, weights,
                              what=f"--load_model_weight_path {cfg['load_model_weight_path']}")
        say(f"warm start: projections loaded from {cfg['load_model_weight_path']}")
    if cfg["init_from"] and not baseline:
        plan.record["init_from"] = str(Path(cfg["init_from"]).resolve())
        if plan.checkpoint is None:
            say("init from: " + init_from_checkpoint(cfg["init_from"], model.projections, lrc, model.kept_layers,
                                                     TeacherRef(**plan.record["teacher"])))
        else:
            say(f"--init_from {cfg['init_from']} is not used: the run resumes from its own checkpoint")
    if not baseline and main:  # printed and recorded by the main process only (SVDs of every teacher matrix)
        from lrc.mlp_train import format_audit

        audit = model.reachability_audit()
        say(format_audit(audit, lrc.mlp_train))
        plan.record["reachability_audit"] = [r.to_dict() for r in audit]
    ref = TeacherRef(**plan.record["teacher"])
    stopper = StopOnSignal(stop)
    lrc_only = {} if baseline else dict(generation_once_per_step=cfg["generation_once_per_step"],
                                        shard_generation=cfg["shard_generation"],
                                        diagnostics_steps=cfg["diagnostics_steps"])
    trainer = trainer_cls(model=model, args=args, teacher_ref=ref, train_dataset=train_ds, eval_dataset=eval_ds,
                          run_record=plan.record, resume_plan=plan, callbacks=[stopper], **lrc_only)
    if not baseline:
        say(trainer.generation_summary())
    if baseline:
        trainer.student_tokenizer = tokenizer
    if trainer.is_deepspeed_enabled and "world_size" in plan.changed:
        raise CheckpointError("--allow_changed world_size is not supported under DeepSpeed: its ZeRO optimizer "
                              "states are partitioned per rank (convert the checkpoint with DeepSpeed's universal "
                              "checkpoint tools, or resume with the same number of processes)")
    n_train = sum(p.numel() for p in model.trainable_parameters())
    say(f"trainable parameters: {n_train:,} | train sequences: {len(train_ds):,} x {cfg['data_max_len']} tokens"
        + (f" | eval sequences: {len(eval_ds):,}" if eval_ds is not None else ""))
    say(f"outputs: {out} (checkpoint-N/ every {cfg['save_steps']} steps, final outputs at its root)")
    if main:
        start.write_record(plan.record)
        _check_free_space(out, model, trainer.is_deepspeed_enabled)
    if plan.checkpoint:
        say(f"resuming from {plan.checkpoint} (step {plan.step})")
    return trainer, stopper


# ---------------------------------------------------------------------------------------------- demo
def _loss_curve(trainer) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]


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


def run_demo(cfg: dict[str, Any], trainer_cls=None) -> None:
    """Train, convert to {output_dir}/student, compare held-out perplexities, print the next commands."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrc.convert import convert_checkpoint
    from lrc.data import build_dataset
    from lrc.evaluate import heldout_perplexity
    from lrc.teacher import load_tokenizer

    t0 = time.time()
    trainer = train(cfg, trainer_cls)
    if trainer is None or not is_main_process():
        return
    out = Path(cfg["output_dir"]).resolve()
    teacher = trainer.distill_model.teacher
    if cfg["model_cls"] == "distill":
        student_dir = out / "student"
        say(f"converting the final checkpoint to {student_dir} ...")
        convert_checkpoint(str(out), str(student_dir), overwrite=True)
    else:
        student_dir = out  # a baseline's output is already a standard HF checkpoint
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tok = load_tokenizer(cfg["tokenizer"] or cfg["raw_model_name"], teacher.config.vocab_size)
    texts = [cfg["eval_dataset"]] + ([cfg["demo_ood_eval"]] if cfg["demo_ood_eval"] else [])
    helds = {path: build_dataset(path, cfg["data_max_len"], teacher.config.vocab_size, tok) for path in texts}
    scores = {}  # held-out text -> (teacher, student) perplexities
    for path, held in helds.items():
        say(f"held-out perplexity on {path} ({len(held)} x {cfg['data_max_len']} tokens) ...")
        scores[path] = (heldout_perplexity(teacher, held, cfg["batch_size"]),
                        heldout_perplexity(student, held, cfg["batch_size"]))
    base_mc = cfg.get("demo_baseline") if cfg["model_cls"] == "distill" else None
    base_scores = {}  # held-out text -> the same-size student without LRC's perplexity
    if base_mc not in (None, "", "none"):
        base_dir = out / f"baseline-{base_mc}"
        say(f"\n--demo_baseline {base_mc}: the same student size WITHOUT LRC, on the same tokens, into {base_dir}")
        from .train_flags import LRC_ONLY_FLAGS

        bcfg = {**cfg, "model_cls": base_mc, "output_dir": str(base_dir), "demo_baseline": None,
                "_given": [k for k in cfg["_given"] if k not in LRC_ONLY_FLAGS]}
        base_trainer = train(bcfg)
        if base_trainer is not None:
            base_student = base_trainer.baseline_model.student
            base_scores = {path: heldout_perplexity(base_student, held, cfg["batch_size"])
                           for path, held in helds.items()}
    t_ppl, s_ppl = scores[cfg["eval_dataset"]]
    curve = _loss_curve(trainer)
    n_t = sum(p.numel() for p in teacher.parameters()) / 1e6
    n_s = sum(p.numel() for p in student.parameters()) / 1e6
    mc = cfg["model_cls"]
    lrc_run = mc == "distill"
    lrc = lrc_command()
    lines = [
        "",
        "=" * 78,
        f"{'LRC' if lrc_run else mc} demo finished in {time.time() - t0:.0f}s",
        *([f"recipe: --proj_init {cfg['proj_init']} --use_aux_loss {cfg['use_aux_loss']} --aux_loss_scale_factor "
           f"{cfg['aux_loss_scale_factor']} --learning_rate {cfg['learning_rate']} (flags after --demo override it)"]
          if lrc_run else []),
        f"training loss ({'CE + KL + alpha x clone' if lrc_run else mc}): step {curve[0][0]}: {curve[0][1]:.2f} -> "
        f"step {curve[-1][0]}: {curve[-1][1]:.2f}",
        f"held-out perplexity on {Path(cfg['eval_dataset']).name} ({t_ppl.tokens} predicted tokens):",
        f"  teacher SmolLM2-135M-Instruct  {n_t:6.1f}M params  ppl {t_ppl.ppl:10.1f}",
        f"  student d_s={cfg['target_hidden_size']:<4}              {n_s:6.1f}M params  ppl {s_ppl.ppl:10.1f}"
        f"  ({s_ppl.ppl / t_ppl.ppl:.1f}x the teacher's)",
        *([f"  same size without LRC (--demo_baseline {base_mc}, same tokens)  ppl "
           f"{base_scores[cfg['eval_dataset']].ppl:10.1f}  ({base_scores[cfg['eval_dataset']].ppl / t_ppl.ppl:.1f}x)"]
          if base_scores else [] if not lrc_run else [
            "  same size without LRC: --demo_baseline prune_kd trains it on the same tokens (about 5 more minutes "
            "here); on 32K tokens of prose (docs/REPRODUCE_SMALL.md) prune_kd reached 6-7x the teacher's perplexity, "
            "this recipe 8-10x"]),
        *[f"another domain, {Path(p).name} ({t.tokens} predicted tokens): teacher ppl {t.ppl:.1f}, student ppl "
          f"{s.ppl:.1f} ({s.ppl / t.ppl:.1f}x: what the student inherited beyond its training text)"
          + (f"; without LRC ({base_mc}) {base_scores[p].ppl:.1f} ({base_scores[p].ppl / t.ppl:.1f}x)"
             if base_scores else "")
          for p, (t, s) in scores.items() if p != cfg["eval_dataset"]],
        f"  ({cfg['max_steps']} steps x {cfg['batch_size']} x {cfg['data_max_len']} tokens: a smoke run; "
        f"the paper trains on ~10B tokens)",
        f"outputs in {out}: checkpoint-N/, " + ("lrc_weights.safetensors, student/ (a standard HF model)" if lrc_run
                                                else "the student as a standard HF model (no conversion needed)"),
        "next:",
        f"  {lrc} train --demo{'' if lrc_run else ' --model_cls ' + mc} --output_dir {out} "
        f"--max_steps {2 * cfg['max_steps']} --resume auto   # train on",
        *([f"  {lrc} convert --ckpt-path {out} --save-path {out / 'student-again'}"] if lrc_run else []),
        f"  {lrc} eval --model {student_dir} --data {cfg['eval_dataset']} --data_max_len {cfg['data_max_len']}",
        f"  {lrc} eval --model {cfg['raw_model_name']} --data {cfg['eval_dataset']} "
        f"--data_max_len {cfg['data_max_len']}   # the teacher",
        "=" * 78,
    ]
    say("\n".join(lines))


# ---------------------------------------------------------------------------------------------- entry
def _run_parsed(parse, trainer_cls=None) -> int:
    """Parse (``parse()`` -> flag dict), then train or run the demo; the exit code of ``lrc.errors`` (0 done, 2 bad
    input, 3 non-finite loss, 75 stopped by a signal after saving, 130 interrupted)."""
    from lrc.errors import run_cli

    def go() -> None:
        cfg = parse()
        (run_demo if cfg["demo"] else train)(cfg, trainer_cls)

    return run_cli(go)


def run(raw_flags: dict[str, Any], trainer_cls=None) -> int:
    """``lrc train`` for flags held in a dict ({name: value}); the exit code (see ``_run_parsed``)."""
    return _run_parsed(lambda: parse_flags(raw_flags), trainer_cls)


def main(**flags: Any) -> None:
    """``run(flags)``, then exit with its code (the official script's ``main``)."""
    sys.exit(run(flags))


def cli(argv: list[str] | None = None, trainer_cls=None) -> int:
    """``lrc train`` (flags as ``--help`` lists them; ``argv`` default: sys.argv[1:]); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(__doc__))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return _run_parsed(lambda: parse_argv(argv), trainer_cls)
