"""Train a student: ``lrc train`` / ``hf_trainer.py``, assembled from a ``TrainConfig`` and a registered method.

    # the out-of-the-box run (SmolLM2-135M teacher, shipped text sample, ~5-9 min on 2 CPU cores)
    lrc train --demo

    # the official README command works verbatim (plus the accelerate config of your cluster)
    accelerate launch --config_file configs/accel_ds_zero2_8gpu.yaml hf_trainer.py --log_steps 100 \\
        --max_grad_norm 1.0 --learning-rate 1e-4 --gradient_accumulation_steps 1 --max_steps 208000 \\
        --dataset_name ../datasets/mix_general_llama3_tokenized_v5.1/train.jsonl --batch-size 3 \\
        --data-max-len 2048 --save_steps 20000 --check_data_cls_loss False --target_hidden_size 1536 \\
        --kl_temperature 40 --warmup-ratio 0.005 --raw-model-name /path/to/Llama-3.2-3B-Instruct \\
        --extra_tags general_train,8h800,arch,try_sota,all_ffn,all_attn --use_accelerate True \\
        --output_dir ../ckpts/lrc-1.5b --str_ban_losses no --tie_word_emb_proj 1 --use_all_attn 1 \\
        --aux_loss_scale_factor 0.2 --resume auto

``lrc train --help`` prints every flag with its doc, its default and the official default where they differ (also
in docs/TRAINING.md). ``--flag-name`` and ``--flag_name`` are the same flag; a ``--config recipe.yaml`` gives flags
from a file, and the command line overrides it (``lrc.training.config``). Outputs go exactly to ``--output_dir``:
``checkpoint-N/`` every ``--save_steps`` and the final outputs at its root (docs/TRAINING.md, What a run guarantees).

The assembly: the flags (``lrc.training.config.TrainConfig``) -> the output directory claimed and the resume planned
(``lrc.training.start``) -> data, teacher, the method's model, its start and its trainer (``lrc.training.methods``) -> HF
``Trainer.train`` -> the final outputs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from lrc.console import say, warn
from lrc.training.config import TrainConfig


def train(cfg: TrainConfig, trainer_cls=None):
    """Train the run ``cfg`` describes. Returns the trainer after the final outputs are written, or None when there
    was nothing to train (a finished run resumed). Raises ``lrc.training.preemption.Preempted`` (exit 75) after a
    SIGTERM/SIGINT stop. ``trainer_cls``: a subclass of the method's trainer (tests)."""
    import torch

    from lrc.training.drive import drive_run
    from lrc.training.methods import method_named
    from lrc.training.start import open_run_dir

    method = method_named(cfg.run.model_cls)
    _report_env(cfg)
    args = build_training_args(cfg, torch.cuda.is_available())  # under `accelerate launch`: torch.distributed
    main = args.process_index == 0
    out = Path(cfg.run.output_dir).resolve()
    raw = cfg.run.raw_model_name
    teacher_path = str(Path(raw).resolve()) if Path(raw).exists() else raw
    trainer = drive_run(
        out, main, cfg.optim.max_steps,
        claim=lambda stack, start: open_run_dir(cfg, args.world_size, args.bf16, teacher_path, stack, start),
        build=lambda plan, tcfg, start, stop: _build(cfg, method, args, plan, teacher_path, tcfg, trainer_cls, main,
                                                     start, stop))
    if trainer is not None:
        say(method.final_message(out))
    return trainer


def _build(cfg: TrainConfig, method, args, plan, teacher_path: str, tcfg, trainer_cls, main: bool, start, stop):
    """Data, teacher, the method's model and its start, the trainer; the run's record written. Returns (trainer,
    its ``StopOnSignal``)."""
    import torch
    from transformers import set_seed

    from lrc.checkpoint import CheckpointError, TeacherRef
    from lrc.data.datasets import build_dataset, cut_note
    from lrc.teacher import find_tokenizer, load_teacher
    from lrc.training.preemption import StopOnSignal

    r = cfg.run
    tokenizer, no_tokenizer = find_tokenizer(r.tokenizer or teacher_path, tcfg.vocab_size)

    def dataset(path: str):
        return build_dataset(path, r.data_max_len, tcfg.vocab_size, tokenizer, r.text_field, no_tokenizer)

    with args.main_process_first(desc="data check"):  # the first process checks and caches, the others read
        train_ds = dataset(r.dataset_name)
        eval_ds = dataset(r.eval_dataset) if r.eval_dataset else None
        if eval_ds is not None and r.eval_max_sequences:
            eval_ds = torch.utils.data.Subset(eval_ds, range(min(r.eval_max_sequences, len(eval_ds))))
    note = cut_note(train_ds, "--dataset_name")
    if note:
        warn(note)
    plan.record["train_sequences"] = len(train_ds)

    t0 = time.time()
    dtype, attn = torch.bfloat16 if args.bf16 else torch.float32, method.attn_implementation(cfg)
    units = None
    if cfg.optim.shard_teacher:
        from lrc.sharded_teacher import load_sharded_teacher, teacher_mesh

        units = load_sharded_teacher(teacher_path, tcfg, teacher_mesh(args.device), dtype, args.device, attn,
                                     cfg.method.teacher_space_linears())
        teacher = units.teacher
    else:
        teacher = load_teacher(teacher_path, dtype=dtype, attn_implementation=attn, config=tcfg)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    say(f"teacher {r.raw_model_name} loaded in {time.time() - t0:.0f}s: {n_teacher / 1e6:.1f}M params, "
        f"{tcfg.num_hidden_layers} layers, hidden {tcfg.hidden_size} -> student {cfg.method.target_hidden_size}"
        + ("" if units is None else f"; sharded over {units.size} processes (FSDP2): {units.local_numel() / 1e6:.1f}M "
           f"params on each, one decoder layer gathered at a time"))
    set_seed(cfg.optim.seed)  # the projection / student init
    model = method.build_model(teacher, cfg, units)
    if method.starts_from_activations(cfg) and plan.checkpoint is None:
        t0 = time.time()
        init = method.initialise(model, dataset(r.calib_data) if r.calib_data else train_ds, cfg)
        plan.record["proj_init"] = {**init, "calib_data": r.calib_data or r.dataset_name}
        say(f"activation-aware init: the student starts as the teacher pruned to its {len(init['channels'])} "
            f"most active residual channels ({init['calib_tokens']:,} calibration tokens, {time.time() - t0:.0f}s); "
            f"channels recorded in run_config.json")
    elif plan.checkpoint is not None and plan.stored and "proj_init" in plan.stored:
        plan.record["proj_init"] = plan.stored["proj_init"]  # the resumed run's start, kept in its record
    method.warm_start(model, cfg, plan.record, resuming=plan.checkpoint is not None)
    if main or units is not None:  # a sharded teacher's tensors are gathered by every rank together
        audit = method.audit(model, cfg)
        if audit is not None:
            plan.record["reachability_audit"] = audit
    stopper = StopOnSignal(stop)
    trainer = method.trainer(model, args, cfg, tokenizer, no_tokenizer, trainer_cls=trainer_cls,
                             teacher_ref=TeacherRef(**plan.record["teacher"]), train_dataset=train_ds,
                             eval_dataset=eval_ds, run_record=plan.record, resume_plan=plan, callbacks=[stopper])
    if trainer.is_deepspeed_enabled and "world_size" in plan.changed:
        raise CheckpointError("--allow_changed world_size is not supported under DeepSpeed: its ZeRO optimizer "
                              "states are partitioned per rank (convert the checkpoint with DeepSpeed's universal "
                              "checkpoint tools, or resume with the same number of processes)")
    n_train = sum(p.numel() for p in model.trainable_parameters())
    say(f"trainable parameters: {n_train:,} | train sequences: {len(train_ds):,} x {r.data_max_len} tokens"
        + (f" | eval sequences: {len(eval_ds):,}" if eval_ds is not None else ""))
    say(f"outputs: {start.out} (checkpoint-N/ every {cfg.ckpt.save_steps} steps, final outputs at its root)")
    if main:
        start.write_record(plan.record)
        _check_free_space(start.out, model, trainer.is_deepspeed_enabled)
    if plan.checkpoint:
        say(f"resuming from {plan.checkpoint} (step {plan.step})")
    return trainer, stopper


# ---------------------------------------------------------------------------------------------- the HF side
def _report_env(cfg: TrainConfig) -> None:
    """Where wandb and tensorboard log (environment variables HF's integrations read)."""
    out = str(Path(cfg.run.output_dir).resolve())
    reporters = cfg.ckpt.reporters()
    if "wandb" in reporters:
        os.environ.setdefault("WANDB_PROJECT", cfg.ckpt.project_name)
        os.environ.setdefault("WANDB_DIR", out)
        os.environ.setdefault("WANDB_TAGS", ",".join([Path(cfg.run.dataset_name).name] + cfg.ckpt.tags()))
        has_key = bool(os.environ.get("WANDB_API_KEY"))
        netrc = Path.home() / ".netrc"
        has_key = has_key or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        if not has_key and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            say(f"wandb: no credentials (WANDB_API_KEY / ~/.netrc): logging offline under "
                f"{os.environ['WANDB_DIR']}/wandb (upload later with `wandb sync`)")
    if "tensorboard" in reporters:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(out) / "tensorboard"))
        say(f"tensorboard: logging to {os.environ['TENSORBOARD_LOGGING_DIR']}")
    if not reporters:
        say("report_to none: metrics go to the console and trainer_state.json (log_history)")


def build_training_args(cfg: TrainConfig, cuda: bool):
    """HF ``TrainingArguments`` of the run (the parallelism checked: ZeRO-3 and FSDP are refused)."""
    from transformers import TrainingArguments

    from lrc.cli.options import OptionError

    o, c, r = cfg.optim, cfg.ckpt, cfg.run
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch` from its config
    bf16 = o.use_bf16(cuda, launcher)
    if launcher not in ("no", "bf16" if bf16 else "no"):
        raise OptionError(f"--bf16 {o.bf16} contradicts the accelerate config's mixed_precision: {launcher} "
                          f"(only bf16 or no are supported)")
    sched_kwargs = {"num_decay_steps": max(1, round(0.1 * o.max_steps))} if o.lr_scheduler == "warmup_stable_decay" \
        else {}
    has_eval = bool(r.eval_dataset)
    args = TrainingArguments(
        output_dir=r.output_dir,
        per_device_train_batch_size=o.batch_size, per_device_eval_batch_size=o.batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps,
        learning_rate=o.learning_rate, lr_scheduler_type=o.lr_scheduler, lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=o.warmup_steps if o.warmup_steps is not None else o.warmup_ratio if o.warmup_ratio > 0 else 0,
        max_steps=o.max_steps, num_train_epochs=o.num_epochs,
        adam_beta1=0.9, adam_beta2=o.adam_beta2, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=o.max_grad_norm,
        logging_steps=c.log_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # it syncs every micro-step and hides NaN; the trainer stops on NaN instead
        save_strategy="steps", save_steps=c.save_steps, save_total_limit=c.save_total_limit or None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(r.eval_steps or c.save_steps) if has_eval else None,
        prediction_loss_only=True, bf16=bf16, seed=o.seed, report_to=c.reporters() or "none",
        run_name=f"{'-'.join(c.tags()) or 'lrc'}-ths{cfg.method.target_hidden_size}lr{o.learning_rate}"
                 f"kl_t{cfg.method.kl_temperature}",
        dataloader_num_workers=o.num_workers, remove_unused_columns=False, ddp_find_unused_parameters=False,
        use_cpu=not cuda,  # on CPU this is what makes DDP / DeepSpeed really use several processes
    )
    _check_parallelism(args, cfg)
    return args


def _check_parallelism(args, cfg: TrainConfig) -> None:
    """The launch's parallelism against the run's flags; each refusal is one line naming the way that works."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from lrc.cli.options import OptionError

    if is_deepspeed_zero3_enabled():
        raise OptionError("DeepSpeed ZeRO-3 is not supported: LRC reads teacher tensors outside their modules' "
                          "forward; to shard the teacher use --shard_teacher true with a DDP or ZeRO-2 config "
                          "(configs/accel_shard_teacher_8gpu.yaml)")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or args.fsdp:
        raise OptionError("an FSDP accelerate config is not supported: the projections train under DDP or DeepSpeed "
                          "ZeRO-2; to shard the teacher use --shard_teacher true "
                          "(configs/accel_shard_teacher_8gpu.yaml)")
    if not cfg.optim.shard_teacher:
        return
    if cfg.run.raw_model_name.endswith(".gguf"):
        raise OptionError(f"--shard_teacher true reads the teacher's rows from safetensors files; "
                          f"--raw_model_name {cfg.run.raw_model_name} is a .gguf file (save it with save_pretrained "
                          f"first)")
    if args.world_size < 2:
        raise OptionError("--shard_teacher true needs 2 or more processes (one process holds the whole teacher "
                          "anyway): accelerate launch --config_file configs/accel_shard_teacher_8gpu.yaml ...")


def _check_free_space(out: Path, model, deepspeed: bool) -> None:
    """Warn when --output_dir cannot hold two more checkpoints (fp32 weights + AdamW's two moments)."""
    n = sum(p.numel() for p in model.trainable_parameters())
    need = 12 * n + (sum(p.numel() * p.element_size() for p in model.teacher.parameters()) if deepspeed else 0)
    free = shutil.disk_usage(out).free
    if free < 2 * need:
        warn(f"--output_dir {out} has {free / 2**30:.1f} GiB free; a checkpoint takes about {need / 2**30:.1f} GiB")
