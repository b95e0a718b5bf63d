"""``lrc onpolicy``: on-policy distillation with TRL's DistillationTrainer under the run contract.

Tiny teachers (a tied Llama, an untied Qwen2) and smaller students of the same vocabulary, on CPU: the divergence
TRL's chunked kernel computes equals a full-vocabulary fp64 reference (value and gradient) for every divergence
offered; a 3-step run learns; the teacher stays frozen and out of the optimizer and the checkpoints; resume is
bitwise; SIGTERM saves; bad prompts files are refused in one line; the output loads in stock transformers and in
``lrc eval``."""

from __future__ import annotations

import copy
import json
import math
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_run_contract import SignalAt
from tiny import save_teacher, tiny_config, tiny_teacher, tiny_tokenizer
from trainer_helpers import StopAt
from transformers import AutoModelForCausalLM

from lrc.after.evaluate import cli as eval_cli
from lrc.errors import run_cli
from lrc.onpolicy import measure
from lrc.onpolicy.options import OnPolicyOptions
from lrc.onpolicy.prompts import prompt_ids
from lrc.onpolicy.run import cli, onpolicy, training_args
from lrc.onpolicy.trainer import OnPolicyTrainer
from lrc.training.run_dir import LOCK_NAME, finished_step, verify_checkpoint

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}w7{% endif %}")


def _student(family: str, tied: bool, path: Path) -> str:
    torch.manual_seed(3)
    cfg = tiny_config(family, tied, layers=2, hidden_size=32, intermediate_size=48, initializer_range=0.2)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    m.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def _prompts(path: Path, n: int = 16, completion: bool = True) -> str:
    rows = [{"prompt": " ".join(f"w{(i * 7 + k) % 90 + 3}" for k in range(4 + i % 3))} for i in range(n)]
    if completion:
        for r in rows:
            r["completion"] = "w10 w11 w12"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module", params=[("llama", True), ("qwen2", False)], ids=["llama-tied", "qwen2-untied"])
def assets(request, tmp_path_factory):
    family, tied = request.param
    d = tmp_path_factory.mktemp(f"onpolicy-{family}")
    teacher = save_teacher(tiny_teacher(family, tied=tied, layers=2), d / "teacher")
    held = d / "heldout.txt"
    held.write_text("\n\n".join(" ".join(f"w{(s + k) % 90 + 3}" for k in range(30)) for s in range(8)) + "\n")
    tok = d / "tokenizer"  # its own directory: beside a Qwen2 config.json, AutoTokenizer would pick Qwen2's class
    tiny_tokenizer().save_pretrained(tok)
    return {"teacher": teacher, "student": _student(family, tied, d / "student"), "prompts": _prompts(d / "p.jsonl"),
            "heldout": str(held), "tokenizer": str(tok), "dir": d}


def _opts(assets, out: Path, **over) -> OnPolicyOptions:
    kw = dict(student=assets["student"], teacher=assets["teacher"], prompts=assets["prompts"], output_dir=str(out),
              tokenizer=assets["tokenizer"],
              batch_size=2, max_new_tokens=6, max_steps=3, save_steps=10, log_steps=1, learning_rate=3e-3,
              lr_scheduler="constant")
    kw.update(over)
    return OnPolicyOptions(**kw)


def _load(path) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


# ---------------------------------------------------------------------------------------------- the divergence
def _reference(student, teacher, batch, divergence: str, beta: float, temperature: float):
    """Mean over completion tokens of the divergence, from both models' full logits in fp64 (independent of TRL), and
    its gradient for every student parameter. One row at a time, its prompt's left padding dropped (rotary positions
    are relative: the same logits)."""
    s, t = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    total, count = 0.0, 0
    for b in range(batch["prompt_ids"].shape[0]):
        prompt = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()]
        ids = torch.cat([prompt, batch["completion_ids"][b]])[None]
        p = prompt.numel()
        log_ps = F.log_softmax(s(input_ids=ids).logits[0, p - 1:-1] / temperature, -1)
        with torch.no_grad():
            log_pt = F.log_softmax(t(input_ids=ids).logits[0, p - 1:-1] / temperature, -1)
        if divergence == "forward_kl":
            d = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        elif divergence == "reverse_kl":
            d = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
        else:
            log_m = torch.logsumexp(torch.stack([log_ps + math.log(1 - beta), log_pt + math.log(beta)]), 0)
            d = (beta * (log_pt.exp() * (log_pt - log_m)).sum(-1)
                 + (1 - beta) * (log_ps.exp() * (log_ps - log_m)).sum(-1))
        m = batch["completion_mask"][b].double()
        total = total + (d * m).sum()
        count += int(m.sum())
    loss = total / count
    loss.backward()
    return loss, {n: q.grad for n, q in s.named_parameters()}


@pytest.mark.parametrize("divergence, beta, temperature", [("forward_kl", 0.5, 1.0), ("reverse_kl", 0.5, 0.7),
                                                             ("jsd", 0.5, 1.0), ("jsd", 0.2, 2.0)])
def test_divergence_equals_full_vocabulary_fp64(assets, tmp_path, divergence, beta, temperature):
    """TRL's chunked kernel, as this run configures it (--divergence, --jsd_beta, --temperature -> TRL's beta and
    temperature), on a fixed batch with padding: the loss and every student gradient equal an fp64 full-vocabulary
    reference."""
    opts = _opts(assets, tmp_path / "o", divergence=divergence, jsd_beta=beta, temperature=temperature)
    student, teacher = _load(assets["student"]), _load(assets["teacher"]).requires_grad_(False)
    from datasets import Dataset

    trainer = OnPolicyTrainer(model=student, teacher_model=teacher, args=training_args(opts, cuda=False),
                              train_dataset=Dataset.from_list([{"prompt": "w5"}]), processing_class=tiny_tokenizer())
    g = torch.Generator().manual_seed(0)
    batch = {"prompt_ids": torch.randint(3, 90, (3, 5), generator=g), "prompt_mask": torch.ones(3, 5, dtype=torch.long),
             "completion_ids": torch.randint(3, 90, (3, 7), generator=g),
             "completion_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0]])}
    batch["prompt_mask"][2, :2] = 0  # a left-padded prompt
    ref, ref_grads = _reference(student, teacher, batch, divergence, beta, temperature)
    student.zero_grad()
    loss, _, n = trainer._compute_loss(trainer.model, batch, None)
    loss.backward()
    assert int(n) == 17
    assert abs(loss.item() - ref.item()) < 1e-5, (loss.item(), ref.item())
    for name, q in student.named_parameters():
        torch.testing.assert_close(q.grad, ref_grads[name].float(), rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- training
def test_three_steps_learn_and_the_teacher_stays_out(assets, tmp_path):
    """3 on-policy steps: the reverse KL on a fixed set of the student's own samples falls; the teacher's weights are
    unchanged, in no optimizer group and in no checkpoint; the output is a standard HF model directory that stock
    transformers and ``lrc eval`` load."""
    tok = tiny_tokenizer()
    prompts = [json.loads(ln)["prompt"] for ln in Path(assets["prompts"]).read_text().splitlines()[:8]]
    student, teacher = _load(assets["student"]), _load(assets["teacher"])
    fixed = measure.sample(student, tok, prompts, chat=False, max_new_tokens=6, seed=1)
    before = measure.teacher_scores(student, teacher, fixed)
    out = tmp_path / "run"
    trainer = onpolicy(_opts(assets, out, save_steps=2, batch_size=8, learning_rate=1e-2))
    after = measure.teacher_scores(_load(out), teacher, fixed)
    assert after.reverse_kl < 0.95 * before.reverse_kl, (before, after)

    teacher_ids = {id(p) for p in trainer.teacher_model.parameters()}
    assert not any(id(p) in teacher_ids for g in trainer.optimizer.param_groups for p in g["params"])
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    original = load_file(Path(assets["teacher"]) / "model.safetensors")
    now = trainer.teacher_model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in original.items())
    student_keys = set(load_file(Path(assets["student"]) / "model.safetensors"))
    for d in (out / "checkpoint-2", out / "checkpoint-3", out):
        assert set(load_file(d / "model.safetensors")) == student_keys
    assert verify_checkpoint(out / "checkpoint-2") is None and finished_step(out) == 3
    assert json.loads((out / "run_config.json").read_text())["kind"] == "onpolicy"

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.hidden_size == 32
    assert eval_cli(["--model", str(out), "--data", assets["heldout"], "--data_max_len", "16"]) == 0


def test_resume_is_bitwise(assets, tmp_path):
    """Half on-policy, half teacher-sampled, 2 completions per prompt, GAS 2: stopped after step 2 and resumed with
    --resume auto, the student equals the uninterrupted run's bitwise (sampling, the per-step draw, the data order)."""
    over = dict(max_steps=4, save_steps=2, on_policy_fraction=0.5, completions_per_prompt=2,
                gradient_accumulation_steps=2, divergence="jsd")
    onpolicy(_opts(assets, tmp_path / "one", **over))
    cut = tmp_path / "two"
    onpolicy(_opts(assets, cut, **over), callbacks=[StopAt(2)])
    assert sorted(p.name for p in cut.glob("checkpoint-*")) == ["checkpoint-2"]
    onpolicy(_opts(assets, cut, resume="auto", **over))
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[(h["loss"], h["on_policy"]) for h in json.loads((d / "trainer_state.json").read_text())["log_history"]
             if "loss" in h] for d in (tmp_path / "one", cut)]
    assert logs[0] == logs[1] and {x[1] for x in logs[0]} == {0.0, 1.0}  # both sources were drawn


def test_resume_is_strict(assets, tmp_path, capsys):
    """--resume auto continues only the same run: another divergence, another student or other prompts are refused
    in one line naming the difference, and the checkpoint stays as it was."""
    out = tmp_path / "run"
    onpolicy(_opts(assets, out, max_steps=4, save_steps=2), callbacks=[StopAt(2)])
    before = sorted(p.name for p in out.rglob("*") if p.name != LOCK_NAME)
    other_student = tmp_path / "s2"
    _load(assets["student"]).save_pretrained(other_student)
    with torch.no_grad():
        m = _load(other_student)
        m.model.norm.weight.add_(1.0)
        m.save_pretrained(other_student)
    other_prompts = _prompts(tmp_path / "p2.jsonl", n=12)
    for over, expected in [(dict(divergence="jsd"), "--divergence 'jsd' (checkpoint: 'reverse_kl')"),
                           (dict(student=str(other_student)), "it was trained with --student"),
                           (dict(prompts=other_prompts), "--prompts")]:
        capsys.readouterr()
        rc = run_cli(lambda: onpolicy(_opts(assets, out, max_steps=4, save_steps=2, resume="auto", **over)))
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2 and len(err) == 1 and expected in err[0] and "cannot resume" in err[0], (over, err)
    assert sorted(p.name for p in out.rglob("*") if p.name != LOCK_NAME) == before


def test_sigterm_saves_and_exits_75(assets, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli(lambda: onpolicy(_opts(assets, out, max_steps=5), callbacks=[SignalAt(2, signal.SIGTERM)]))
    assert rc == 75
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "stopped by SIGTERM after step 2" in err[0] and "--resume auto" in err[0], err
    assert verify_checkpoint(out / "checkpoint-2") is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class NaNFromStep3(OnPolicyTrainer):
    """The divergence turns NaN in optimizer step 3 (on the first process only)."""

    def compute_loss(self, model, inputs, *a, **kw):
        loss = super().compute_loss(model, inputs, *a, **kw)
        bad = self.state.global_step + 1 >= 3 and self.accelerator.process_index == 0
        return loss * float("nan") if bad else loss


def test_nonfinite_loss_stops_before_any_save(assets, tmp_path, capsys):
    """A NaN divergence at step 3 stops the run at its next log line (exit 3, one line naming the step); the
    checkpoint of step 2 stays, and none is written after the NaN."""
    out = tmp_path / "run"
    rc = run_cli(lambda: onpolicy(_opts(assets, out, max_steps=6, save_steps=2), trainer_cls=NaNFromStep3))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 3 and len(err) == 1 and "non-finite loss at step 3" in err[0], err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-2") is None and finished_step(out) is None


def test_offpolicy_dataset_trains_on_the_files_completions(assets, tmp_path):
    """--on_policy_fraction 0 --off_policy dataset: every step trains on the prompts file's completions (3 tokens +
    the end-of-sequence token), none sampled."""
    out = tmp_path / "run"
    onpolicy(_opts(assets, out, on_policy_fraction=0.0, off_policy="dataset", max_steps=2))
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [h["on_policy"] for h in logs] == [0.0, 0.0]
    assert all(h["completions/mean_length"] == 4.0 for h in logs)


def test_chat_prompts_use_the_chat_template(assets, tmp_path):
    """A tokenizer with a chat template: the prompts are rendered with it (the generation prompt included)."""
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tmp_path / "tok")
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "w5 w6"}]}) + "\n"
                 + json.dumps({"prompt": "w8 w9"}) + "\n")
    ids = prompt_ids(tok, [{"role": "user", "content": "w5 w6"}], chat=True)
    assert tok.decode(ids).split()[-1] == "w7"
    trainer = onpolicy(_opts(assets, tmp_path / "run", tokenizer=str(tmp_path / "tok"), prompts=str(p), max_steps=1))
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------------------------------------- refusals
BAD_PROMPTS = [
    ("not json\n", ":1: not JSON"),
    ('{"prompt": "w5"}\n[1, 2]\n', ":2: a list, expected a JSON object"),
    ('{"text": "w5"}\n', ':1: expected exactly one of "prompt"'),
    ('{"prompt": ""}\n', ':1: "prompt" must be non-empty text'),
    ('{"messages": [{"role": "user", "content": "w5"}]}\n', ":1: a chat"),
    ("\n\n", "no prompts"),
]


@pytest.mark.parametrize("text, expected", BAD_PROMPTS)
def test_bad_prompts_refused_in_one_line(assets, tmp_path, capsys, text, expected):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    out = tmp_path / "run"
    rc = cli(["--student", assets["student"], "--teacher", assets["teacher"], "--prompts", str(p),
              "--output_dir", str(out), "--tokenizer", assets["tokenizer"]])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_refusals(assets, tmp_path, capsys):
    """One line each, nothing written: a completion missing for --off_policy dataset; a chat ending on an assistant
    turn; another vocabulary; --output_dir holding an lrc train run (never resumed, never deleted) or being the
    student's or the teacher's directory."""
    no_completion = _prompts(tmp_path / "p.jsonl", completion=False)
    ends_assistant = tmp_path / "a.jsonl"
    ends_assistant.write_text(json.dumps({"messages": [{"role": "assistant", "content": "w5"}]}) + "\n")
    other_vocab = tmp_path / "other"
    AutoModelForCausalLM.from_config(tiny_config("llama", True, 1, vocab_size=120)).save_pretrained(other_vocab)
    train_run = tmp_path / "train_run"
    train_run.mkdir()
    (train_run / "run_config.json").write_text(json.dumps({"lrc_run_record": 1, "run_id": "x"}))
    models_before = {d: sorted(p.name for p in Path(assets[d]).iterdir()) for d in ("student", "teacher")}
    capsys.readouterr()
    cases = [
        (dict(prompts=no_completion, on_policy_fraction=0.5, off_policy="dataset"), ':1: no "completion"'),
        (dict(prompts=str(ends_assistant), chat_template="auto"), ":1: a chat (\"messages\")"),
        (dict(student=str(other_vocab)), "vocabulary of 120 tokens"),
        (dict(output_dir=str(train_run), overwrite_output_dir=True), "holds an lrc train run"),
        (dict(output_dir=assets["student"], overwrite_output_dir=True), "is the student's directory (--student"),
        (dict(output_dir=assets["teacher"]), "is the teacher's directory (--teacher"),
        (dict(completions_per_prompt=3), "does not divide the generation batch"),
        (dict(divergence="kl"), "--divergence 'kl': expected one of"),
    ]
    for over, expected in cases:
        out = Path(over.get("output_dir", tmp_path / "run"))
        rc = run_cli(lambda: onpolicy(_opts(assets, out, **over)))
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc != 0 and len(err) == 1 and expected in err[0], (over, err)
        assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in train_run.iterdir()) == ["run_config.json"]
    assert {d: sorted(p.name for p in Path(assets[d]).iterdir()) for d in ("student", "teacher")} == models_before


# ---------------------------------------------------------------------------------------------- several processes
def test_two_processes_under_accelerate(assets, tmp_path):
    """``accelerate launch --config_file configs/accel_cpu_ddp_2proc.yaml -m lrc onpolicy``: 2 gloo processes,
    half the steps on the teacher's samples; the on/off-policy draw is the same on both ranks (their logged mean is
    0 or 1, never 0.5), each rank's RNG state is in the checkpoint, and the output loads."""
    import os
    import subprocess
    import sys

    from trainer_helpers import free_port

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    flags = dict(student=assets["student"], teacher=assets["teacher"], prompts=assets["prompts"],
                 tokenizer=assets["tokenizer"], output_dir=str(out), batch_size=2, max_new_tokens=4, max_steps=4,
                 save_steps=4, log_steps=1, on_policy_fraction=0.5, learning_rate=1e-3)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(repo / "configs" / "accel_cpu_ddp_2proc.yaml"), "--main_process_port", free_port(), "-m", "lrc",
           "onpolicy", *[a for k, v in flags.items() for a in (f"--{k}", str(v))]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert finished_step(out) == 4
    assert sorted(f.name for f in (out / "checkpoint-4").glob("rng_state_*.pth")) == ["rng_state_0.pth",
                                                                                     "rng_state_1.pth"]
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logs) == 4 and {h["on_policy"] for h in logs} <= {0.0, 1.0} and len({h["on_policy"] for h in logs}) == 2
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 32
