"""The demo's third act (``lrc train --demo --onpolicy_steps N``): after LRC and the conversion, N on-policy steps of
the converted student from the same teacher (``lrc onpolicy``), reported beside the teacher and the LRC student.

Prompts are cut from the held-out text: the first ``PROMPT_WORDS`` words of each paragraph long enough; the last
``EVAL_PROMPTS`` of them (at most half) are kept out of training and judge the students. The students are trained on their own
samples only (never on the held-out text's continuations), so the held-out perplexities stay comparable with act 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from lrc.console import say
from lrc.errors import DataError

PROMPT_WORDS = 12
EVAL_PROMPTS = 8
SAMPLES_SHOWN = 3
NEW_TOKENS = 32
"""Tokens per completion, in training and in the report."""
LEARNING_RATE = 3e-5
"""The act's learning rate (``lrc onpolicy``'s default, 1e-6, is TRL's, for larger models)."""


def cut_prompts(text_path: str, words: int = PROMPT_WORDS) -> list[str]:
    """The first ``words`` words of each paragraph (blank-line separated) of at least 2 x ``words`` words."""
    paras = [" ".join(p.split()) for p in Path(text_path).read_text(encoding="utf-8").split("\n\n")]
    return [" ".join(p.split()[:words]) for p in paras if len(p.split()) >= 2 * words]


def run_act(steps: int, student_dir: Path, teacher_path: str, heldout: str, out: Path, seed: int) -> dict:
    """Train ``steps`` on-policy steps into ``out``; returns the act's record: the run directory and the judging
    prompts (``report`` scores it)."""
    from lrc.onpolicy.options import OnPolicyOptions
    from lrc.onpolicy.run import onpolicy

    prompts = cut_prompts(heldout)
    n_judge = min(EVAL_PROMPTS, len(prompts) // 2)
    if n_judge < 1:
        raise DataError(f"{heldout}: {len(prompts)} paragraphs of {2 * PROMPT_WORDS}+ words; the on-policy act needs 2 "
                        f"or more to cut prompts from")
    train, judge = prompts[:-n_judge], prompts[-n_judge:]
    file = out.parent / "onpolicy_prompts.jsonl"
    file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train), encoding="utf-8")
    say(f"\n--onpolicy_steps {steps}: on-policy distillation of {student_dir} from the same teacher, {len(train)} "
        f"prompts cut from {heldout} ({file}), into {out}")
    opts = OnPolicyOptions(student=str(student_dir), teacher=teacher_path, prompts=str(file), output_dir=str(out),
                           chat_template="off", max_new_tokens=NEW_TOKENS, batch_size=4, max_steps=steps,
                           learning_rate=LEARNING_RATE, lr_scheduler="constant", save_steps=steps,
                           log_steps=max(1, steps // 5), seed=seed, overwrite_output_dir=True)
    onpolicy(opts)
    return {"dir": out, "judge": judge, "options": opts}


def continue_command(opts, lrc: str, max_steps: int) -> str:
    """The ``lrc onpolicy`` command that continues the act's run to ``max_steps`` (``--resume auto``: every flag a
    resume compares as the act set it)."""
    import dataclasses

    from lrc.onpolicy.options import OnPolicyOptions

    defaults = OnPolicyOptions()
    skip = {"max_steps", "overwrite_output_dir", "resume", "save_steps", "log_steps"}
    flags = [f"--{f.name} {getattr(opts, f.name)}" for f in dataclasses.fields(opts)
             if f.name not in skip and getattr(opts, f.name) != getattr(defaults, f.name)]
    return f"{lrc} onpolicy {' '.join(flags)} --max_steps {max_steps} --resume auto"


def report(act: dict, teacher, lrc_student, onpolicy_student, tokenizer, ppl_rows: list[str]) -> list[str]:
    """The act's lines: held-out perplexities (``ppl_rows``, made by the caller), then on the judging prompts the
    teacher's reverse KL to each student on the student's own samples and the teacher's log-probability of them,
    then ``SAMPLES_SHOWN`` completions of the teacher and of each student."""
    from lrc.onpolicy.measure import sample, teacher_scores

    judge = act["judge"]
    lines = ["", f"act 3, on-policy distillation ({act['dir']}):", *ppl_rows,
             f"on {len(judge)} held-out prompts, each model's own samples ({NEW_TOKENS} tokens), judged by the teacher:"]
    samples = {}
    for name, model in (("LRC student", lrc_student), ("on-policy", onpolicy_student), ("teacher", teacher)):
        samples[name] = sample(model, tokenizer, judge, chat=False, max_new_tokens=NEW_TOKENS, seed=0)
        if name != "teacher":
            s = teacher_scores(model, teacher, samples[name])
            lines.append(f"  {name:<12} reverse KL to the teacher {s.reverse_kl:6.3f} nats/token, teacher "
                         f"log-prob {s.teacher_logprob:7.3f} nats/token")
    for i, prompt in enumerate(judge[:SAMPLES_SHOWN]):
        lines.append(f"  prompt {i + 1}: {prompt!r}")
        for name, done in samples.items():
            lines.append(f"    {name:<12} ... {_one_line(done[i].text)}")
    return lines


def _one_line(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")
