"""Conversion: the folded, saved, reloaded student equals the training-time student (fp32, 1e-5)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny import FAMILIES, randomize_projections, save_teacher, tiny_teacher
from transformers import AutoModelForCausalLM, AutoTokenizer

from lrc.after.convert import ConversionError, convert_checkpoint
from lrc.checkpoint import TeacherRef, save_lrc_checkpoint
from lrc.config import LRCConfig
from lrc.families import SUPPORTED_FAMILIES
from lrc.model import LRCModel
from lrc.projections import official_names
from lrc.teacher import teacher_fingerprint

REPO = Path(__file__).resolve().parents[1]


def _train_time_model(teacher_dir: str, teacher, lrc: LRCConfig, seed: int = 1) -> LRCModel:
    model = LRCModel(teacher, lrc)
    randomize_projections(model, seed)
    return model


def _save_ckpt(model: LRCModel, teacher_dir: str, out: Path) -> Path:
    ref = TeacherRef(teacher_dir, teacher_fingerprint(model.teacher.config), model.teacher.config.model_type)
    save_lrc_checkpoint(out, model.projections, model.lrc_config, ref, core_basis=model.core_bases_fingerprint())
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One saved teacher per (family, tied)."""
    out = {}
    for fam, tied in itertools.product(FAMILIES, (True, False)):
        d = tmp_path_factory.mktemp(f"{fam}_{int(tied)}")
        out[fam, tied] = save_teacher(tiny_teacher(fam, tied), d / "teacher")
    return out


MATRIX = list(itertools.product(FAMILIES, (True, False), (True, False), (True, False), (True, False), ((), (1,)),
                                ("lrc", "dense", "core")))


@pytest.mark.parametrize("family,tied,tie_proj,all_attn,in_out,del_layers,mlp_train", MATRIX,
                         ids=[f"{f}-tied{int(t)}-tp{int(tp)}-aa{int(a)}-io{int(i)}-del{len(d)}-{m}"
                              for f, t, tp, a, i, d, m in MATRIX])
def test_converted_student_equals_training_student(teachers, tmp_path, family, tied, tie_proj, all_attn, in_out,
                                                   del_layers, mlp_train):
    """Every family x variant x --mlp_train: the folded student is the training-time one (Deltas nonzero)."""
    teacher_dir = teachers[family, tied]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, tie_word_emb_proj=tie_proj, use_all_attn=all_attn,
                    use_in_out_mlp=in_out, del_layers=del_layers, target_rms_norm_eps=1e-5, mlp_train=mlp_train)
    model = _train_time_model(teacher_dir, teacher, lrc)
    ckpt = _save_ckpt(model, teacher_dir, tmp_path / "run")
    out = convert_checkpoint(str(ckpt), str(tmp_path / "student"))

    student = AutoModelForCausalLM.from_pretrained(out)  # plain load, no remote code
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.student_logits(ids)
        got = student(ids).logits
    assert (got - ref).abs().max().item() <= 1e-5

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 32
    assert cfg["head_dim"] == teacher.config.head_dim if family == "qwen3" else cfg["head_dim"] == 16
    assert cfg["rms_norm_eps"] == 1e-5
    assert cfg["num_hidden_layers"] == 3 - len(del_layers)
    assert cfg["tie_word_embeddings"] == (tied and tie_proj)
    assert cfg["model_type"] == family
    assert student.config.num_attention_heads == 4 and student.config.num_key_value_heads == 2
    assert (out / "generation_config.json").is_file()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    assert json.loads((out / "lrc_conversion.json").read_text())["lrc"]["mlp_train"] == mlp_train
    L = model.kept_layers[0]  # the Delta is in the deployed matrix, not only in the training-time one
    plain_down = model.projections.layers[str(L)].down @ teacher.model.layers[L].mlp.down_proj.weight
    moved = (student.model.layers[0].mlp.down_proj.weight - plain_down).abs().max().item()
    assert (moved > 1e-3) == (mlp_train != "lrc"), moved


def test_official_checkpoint_converts(teachers, tmp_path):
    """A checkpoint with the official code's names (no metadata) converts, variant read from the tensors."""
    teacher_dir = teachers["llama", True]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, tie_word_emb_proj=False, use_all_attn=True)
    model = _train_time_model(teacher_dir, teacher, lrc)
    names = official_names(lrc, model.kept_layers)
    sd = {names[k]: v.contiguous() for k, v in model.projections.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))  # the official converter's input: no metadata

    with pytest.raises(ConversionError, match="raw-model-name"):
        convert_checkpoint(str(tmp_path / "model.safetensors"), str(tmp_path / "x"))
    with pytest.raises(ConversionError, match="use-all-attn"):
        convert_checkpoint(str(tmp_path / "model.safetensors"), str(tmp_path / "x"), raw_model_name=teacher_dir,
                           flags={"use_all_attn": False})
    out = convert_checkpoint(str(tmp_path / "model.safetensors"), str(tmp_path / "student"),
                             raw_model_name=teacher_dir, flags={"target_rms_norm_eps": 1e-5})
    student = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        assert (student(ids).logits - model.student_logits(ids)).abs().max().item() <= 1e-5
    assert student.config.tie_word_embeddings is False


def test_checkpoint_path_forms(teachers, tmp_path):
    """A run dir (falls back to the latest checkpoint-N), a checkpoint-N dir and the file all convert."""
    teacher_dir = teachers["llama", True]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    model = _train_time_model(teacher_dir, teacher, LRCConfig(target_hidden_size=32))
    run = tmp_path / "run"
    _save_ckpt(model, teacher_dir, run / "checkpoint-5")
    randomize_projections(model, seed=7)
    _save_ckpt(model, teacher_dir, run / "checkpoint-10")
    ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        ref = model.student_logits(ids)
    for i, src in enumerate([run, run / "checkpoint-10", run / "checkpoint-10" / "lrc_weights.safetensors"]):
        out = convert_checkpoint(str(src), str(tmp_path / f"s{i}"))
        with torch.no_grad():
            got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        assert (got - ref).abs().max().item() <= 1e-5, src


@pytest.mark.parametrize("family, tied, mlp_train", [("qwen2", False, "core"), ("llama", True, "lrc")])
def test_conversion_reads_the_teacher_a_few_tensors_at_a_time(teachers, tmp_path, family, tied, mlp_train):
    """A safetensors teacher is read piecewise (at most 4 tensors held, far less than the teacher), and the folded
    bf16 student is exactly the training-time fp32 generation rounded to bf16."""
    from lrc.after.fold import _teacher_tensors, build_student, fold
    from lrc.tensor_files import TensorFiles

    teacher_dir = teachers[family, tied]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, mlp_train=mlp_train)
    model = _train_time_model(teacher_dir, teacher, lrc)
    ckpt = _save_ckpt(model, teacher_dir, tmp_path / "run")
    student, _, _ = build_student(str(ckpt), dtype=torch.bfloat16)
    ref = model.student_weights(dtype=torch.float32)
    got = dict(student.named_parameters())
    assert got.keys() == ref.keys()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k].to(torch.bfloat16)) for k in ref)
    tensors = _teacher_tensors(teacher_dir, teacher.config)  # what build_student read from, read again to measure
    assert isinstance(tensors, TensorFiles)
    fold(tensors, model.projections, lrc, teacher.config, model.core_bases(), torch.bfloat16)
    whole = sum(p.numel() * 4 for p in teacher.parameters())
    biggest = max(p.numel() * 4 for p in teacher.parameters())
    assert 0 < tensors.peak_bytes <= 4 * biggest and tensors.peak_bytes < whole / 2


# ----------------------------------------------------------------------------- bad input through the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "convert_ckpt.py"), *args], cwd=REPO, capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          timeout=300)


def _assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    err_lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err_lines[0], err_lines[0]


@pytest.fixture(scope="module")
def cli_case(teachers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    teacher_dir = teachers["llama", True]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    model = _train_time_model(teacher_dir, teacher, LRCConfig(target_hidden_size=32))
    good = _save_ckpt(model, teacher_dir, tmp / "good")
    # a checkpoint missing one tensor, with valid metadata
    from safetensors import safe_open
    from safetensors.torch import load_file

    f = good / "lrc_weights.safetensors"
    with safe_open(str(f), "pt") as sf:
        meta = sf.metadata()
    sd = load_file(str(f))
    del sd["layers.1.up"]
    (tmp / "missing").mkdir()
    save_file(sd, str(tmp / "missing" / "lrc_weights.safetensors"), metadata=meta)
    sd = load_file(str(f))
    sd["layers.0.extra"] = torch.zeros(3)
    (tmp / "unexpected").mkdir()
    save_file(sd, str(tmp / "unexpected" / "lrc_weights.safetensors"), metadata=meta)
    # an official-code checkpoint of the same projections
    names = official_names(model.lrc_config, model.kept_layers)
    save_file({names[k]: v.contiguous() for k, v in model.projections.state_dict().items()},
              str(tmp / "official.safetensors"))
    return tmp, good


def test_cli_converts_and_reports(cli_case, tmp_path):
    tmp, good = cli_case
    r = _cli("--ckpt-path", str(good), "--save-path", str(tmp_path / "student"))
    assert r.returncode == 0, r.stderr
    assert "converted student written to" in r.stdout
    assert (tmp_path / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", ["missing_tensor", "unexpected_tensor", "other_teacher", "flag_mismatch",
                                  "official_bad_width", "unsupported_family", "no_such_path", "save_path_not_empty"])
def test_cli_bad_input(cli_case, teachers, tmp_path, case):
    tmp, good = cli_case
    save = tmp_path / "out"
    if case == "missing_tensor":
        r = _cli("--ckpt-path", str(tmp / "missing"), "--save-path", str(save))
        _assert_one_line_error(r, "missing tensor", "layers.1.up")
    elif case == "unexpected_tensor":
        r = _cli("--ckpt-path", str(tmp / "unexpected"), "--save-path", str(save))
        _assert_one_line_error(r, "unexpected tensor", "layers.0.extra")
    elif case == "official_bad_width":
        r = _cli("--ckpt-path", str(tmp / "official.safetensors"), "--save-path", str(save), "--raw-model-name",
                 teachers["llama", True], "--target-hidden-size", "64")
        _assert_one_line_error(r, "--target-hidden-size=64", "target_hidden_size=32")
    elif case == "save_path_not_empty":
        save.mkdir()
        (save / "keep.txt").write_text("user data")
        r = _cli("--ckpt-path", str(good), "--save-path", str(save))
        _assert_one_line_error(r, "exists and is not empty", "--overwrite")
        assert (save / "keep.txt").read_text() == "user data"
        return
    elif case == "other_teacher":
        r = _cli("--ckpt-path", str(good), "--save-path", str(save), "--raw-model-name", teachers["qwen2", True])
        _assert_one_line_error(r, "teacher mismatch", "config hash")
    elif case == "flag_mismatch":
        r = _cli("--ckpt-path", str(good), "--save-path", str(save), "--target-hidden-size", "16")
        _assert_one_line_error(r, "--target-hidden-size=16", "target_hidden_size=32")
    elif case == "unsupported_family":
        from transformers import GPT2Config, GPT2LMHeadModel

        d = tmp_path / "gpt2"
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=101)).save_pretrained(d)
        r = _cli("--ckpt-path", str(good), "--save-path", str(save), "--raw-model-name", str(d))
        _assert_one_line_error(r, "unsupported teacher model_type 'gpt2'", ", ".join(SUPPORTED_FAMILIES))
    else:
        r = _cli("--ckpt-path", str(tmp / "nope"), "--save-path", str(save))
        _assert_one_line_error(r, "does not exist")
    assert not save.exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # no temp leftovers
