"""``lrc onpolicy``: on-policy distillation of a converted student from the same teacher (the stage after LRC).

    lrc onpolicy --student OUT/student --teacher TEACHER --prompts prompts.jsonl --output_dir OUT/onpolicy \\
        --divergence reverse_kl --max_new_tokens 256 --learning_rate 1e-5 --max_steps 500 --resume auto

    accelerate launch --config_file configs/accel_ddp_8gpu.yaml -m lrc onpolicy ...   # 8 GPUs, DDP

Each step the student samples completions of the step's prompts, the teacher scores every token of them, and the
student minimises the per-token divergence to the teacher on its own samples (GKD; docs/AFTER_TRAINING.md says when
to run it instead of SFT). The work is TRL's ``DistillationTrainer`` (``lrc.onpolicy.trainer``); this module parses,
checks, builds and trains under the same run contract as ``lrc train`` (``lrc.training.drive``): a lock on
``--output_dir``, a record and manifests, ``--resume auto`` (strict: same teacher, student, prompts and settings),
a checkpoint on SIGTERM, weights-only loads and one-line errors. The root of ``--output_dir`` ends as a standard HF
model directory (``AutoModelForCausalLM.from_pretrained``, ``lrc eval``, LlamaFactory).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from lrc.cli.options import OptionError, run_command
from lrc.console import say
from lrc.onpolicy.options import OnPolicyOptions


def cli(argv: list[str] | None = None) -> int:
    return run_command(OnPolicyOptions, argv, onpolicy, prog="lrc onpolicy", description=__doc__)


def onpolicy(opts: OnPolicyOptions, trainer_cls=None, callbacks=()):
    """Train the run ``opts`` describes. Returns the trainer, or None when there was nothing to train (a finished run
    resumed). ``trainer_cls``: a subclass of ``OnPolicyTrainer`` (tests); ``callbacks``: more ``TrainerCallback``s."""
    import torch

    from lrc.training.drive import drive_run

    opts.check()
    args = training_args(opts, torch.cuda.is_available())
    generation_batch = opts.batch_size * args.world_size * opts.gradient_accumulation_steps
    if generation_batch % opts.completions_per_prompt:
        raise OptionError(f"--completions_per_prompt {opts.completions_per_prompt} does not divide the generation "
                          f"batch ({opts.batch_size} x {args.world_size} processes x {opts.gradient_accumulation_steps} "
                          f"accumulation steps = {generation_batch})")
    out = Path(opts.output_dir).resolve()
    main = args.process_index == 0
    trainer = drive_run(out, main, opts.max_steps,
                        claim=lambda stack, start: _claim(opts, args.world_size, args.bf16, stack, start),
                        build=lambda plan, _, start, stop: _build(opts, args, plan, start, stop, trainer_cls,
                                                                  callbacks))
    if trainer is not None:
        say(f"the trained student is at {out} (a standard HF model directory). Next: lrc eval --model {out} --data "
            f"HELDOUT.txt")
    return trainer


def training_args(opts: OnPolicyOptions, cuda: bool):
    """TRL's ``DistillationConfig`` of the run (what it does not set is TRL's default)."""
    from trl import DistillationConfig

    reporters = [r.strip() for r in opts.report_to.split(",") if r.strip() and r.strip() != "none"]
    return DistillationConfig(
        output_dir=opts.output_dir, per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler, warmup_steps=opts.warmup_ratio, max_steps=opts.max_steps,
        max_grad_norm=opts.max_grad_norm, seed=opts.seed, bf16=_bf16(opts, cuda), fp16=False,
        activation_checkpointing=opts.gradient_checkpointing, logging_steps=opts.log_steps, logging_first_step=True,
        save_strategy="steps", save_steps=opts.save_steps, save_total_limit=opts.save_total_limit or None,
        report_to=reporters or "none", max_completion_length=opts.max_new_tokens, temperature=opts.temperature,
        top_k=0, top_p=1.0, beta=opts.trl_beta(), disable_dropout=True, use_cpu=not cuda, remove_unused_columns=False,
        ddp_find_unused_parameters=False, dataloader_num_workers=0, logging_nan_inf_filter=False,
    )


def _bf16(opts: OnPolicyOptions, cuda: bool) -> bool:
    return cuda if opts.bf16 == "auto" else opts.bf16 == "true"


def _tokenizer(opts: OnPolicyOptions):
    from lrc.teacher import find_tokenizer

    for src in ([opts.tokenizer] if opts.tokenizer else [opts.student, opts.teacher]):
        tok, why = find_tokenizer(src)
        if tok is not None:
            return tok
    raise OptionError(f"no usable tokenizer ({why}): pass --tokenizer")


def _chat(opts: OnPolicyOptions, tok) -> bool:
    """Whether prompts are rendered with the chat template (``--chat_template``)."""
    return opts.chat_template == "auto" and bool(getattr(tok, "chat_template", None))


def _prompts(opts: OnPolicyOptions, tok) -> list[dict]:
    from lrc.onpolicy.prompts import read_prompts

    return read_prompts(opts.prompts, _chat(opts, tok), need_completions=opts.off_policy == "dataset"
                        and opts.on_policy_fraction < 1.0)


def _claim(opts: OnPolicyOptions, world_size: int, bf16: bool, stack: contextlib.ExitStack, start):
    """Main process: every check that needs no model weights, then the output directory claimed (lock, resume plan,
    record: ``lrc.training.start.claim_run_dir``)."""
    from lrc.checkpoint import TeacherRef
    from lrc.families import config_hash
    from lrc.onpolicy.record import ONPOLICY_RULES, onpolicy_record
    from lrc.teacher import load_teacher_config, weight_files, weights_fingerprint
    from lrc.training.start import check_output_dir_is_free, claim_run_dir

    out = start.out
    tcfg = load_teacher_config(opts.teacher)
    scfg = load_teacher_config(opts.student)
    if Path(opts.student).is_file():
        raise OptionError(f"--student {opts.student}: a file; expected an HF model directory (lrc convert's output)")
    unsafe = [f.name for f in weight_files(opts.student) if f.suffix != ".safetensors"]
    if unsafe:
        raise OptionError(f"--student {opts.student}: weights in {', '.join(unsafe)}; only safetensors weights are "
                          f"loaded (save the model with save_pretrained)")
    if scfg.vocab_size != tcfg.vocab_size:
        raise OptionError(f"--student {opts.student} has a vocabulary of {scfg.vocab_size} tokens, --teacher "
                          f"{opts.teacher} one of {tcfg.vocab_size}: on-policy distillation compares the full "
                          f"next-token distributions, so they must share the vocabulary")
    check_output_dir_is_free(out, {"teacher": ("teacher", opts.teacher), "student": ("student", opts.student)})
    from lrc.onpolicy.prompts import check_tokenized

    tok = _tokenizer(opts)
    check_tokenized(_prompts(opts, tok), tok, _chat(opts, tok), opts.prompts)  # refused before --output_dir is touched

    def record() -> dict:
        teacher = TeacherRef(opts.teacher, config_hash(tcfg), tcfg.model_type, weights_fingerprint(opts.teacher))
        student = TeacherRef(opts.student, config_hash(scfg), scfg.model_type, weights_fingerprint(opts.student))
        return onpolicy_record(opts, world_size, teacher, student, bf16)

    return claim_run_dir(start, stack, record, opts.resume or None, opts.overwrite_output_dir, set(),
                         ONPOLICY_RULES), None


def _build(opts: OnPolicyOptions, args, plan, start, stop, trainer_cls, callbacks):
    """Every process: prompts, student, teacher, the trainer. Returns (trainer, its ``StopOnSignal``)."""
    import time

    import torch
    from datasets import Dataset
    from transformers import set_seed

    from lrc.onpolicy.trainer import OnPolicyTrainer
    from lrc.teacher import load_causal_lm
    from lrc.training.preemption import StopOnSignal

    tok = _tokenizer(opts)
    rows = _prompts(opts, tok)
    t0 = time.time()
    student = load_causal_lm(opts.student, dtype=torch.float32)  # fp32 master weights; bf16 runs under autocast
    student.requires_grad_(True)
    student.train()
    teacher = load_causal_lm(opts.teacher, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    n_s, n_t = (sum(p.numel() for p in m.parameters()) for m in (student, teacher))
    say(f"student {opts.student} ({n_s / 1e6:.1f}M params) and teacher {opts.teacher} ({n_t / 1e6:.1f}M) loaded in "
        f"{time.time() - t0:.0f}s; {len(rows):,} prompts, {opts.completions_per_prompt} completion(s) each per step, "
        f"{opts.divergence}" + (f" (beta {opts.jsd_beta})" if opts.divergence == "jsd" else "")
        + f", on-policy share {opts.on_policy_fraction:g}"
        + (f" (else {opts.off_policy} sequences)" if opts.on_policy_fraction < 1 else ""))
    set_seed(opts.seed)
    stopper = StopOnSignal(stop)
    trainer = (trainer_cls or OnPolicyTrainer)(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        on_policy_fraction=opts.on_policy_fraction, off_policy=opts.off_policy,
        completions_per_prompt=opts.completions_per_prompt, run_record=plan.record,
        callbacks=[stopper, *callbacks])
    say(f"outputs: {start.out} (checkpoint-N/ every {opts.save_steps} steps; the trained student at its root)")
    if args.process_index == 0:
        start.write_record(plan.record)
    if plan.checkpoint:
        say(f"resuming from {plan.checkpoint} (step {plan.step})")
    return trainer, stopper
