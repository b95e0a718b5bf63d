"""The sharded teacher (``--shard_teacher``: ``lrc.sharded_teacher``, ``lrc.gathered_generation``), CPU, gloo.

- model level (``sharded_teacher_worker.py``): an ``LRCModel`` on the teacher sharded over 2 ranks equals one on the
  whole teacher (loss, clone terms, every projection gradient) over 3 steps, for a Llama (untied, GQA), a Qwen2 (tied,
  biases), GAS 2 with CORE and with Dense, Qwen3 with in/out MLP clones and gradient checkpointing, Gemma 2; no rank
  holds the whole teacher after loading or at any gather during the steps;
- training (``accelerate launch --config_file configs/accel_cpu_shard_teacher_2proc.yaml``): 3-4 optimizer steps
  equal the whole-teacher run; under DeepSpeed ZeRO-2 with GAS 2, CORE and sharded generation too; SIGTERM saves
  on both ranks and the resumed run is bitwise the uninterrupted one; the converted students are equal;
- refusals: one line each.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_run_contract import TWO_PROC, errors, one_line_error
from tiny import save_teacher, tiny_teacher
from trainer_helpers import base_flags, free_port, make_assets, train_logs, weights

import hf_trainer
from lrc.training.run_dir import verify_checkpoint

REPO = Path(__file__).resolve().parent.parent
ACCEL = str(Path(sys.executable).parent / "accelerate")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------- model level
def test_sharded_model_equals_whole(tmp_path):
    """3 steps per case (``sharded_teacher_worker.CASES``) on both ranks' own batches: losses, clone terms and
    gradients equal the whole teacher's (bitwise but for the order of sums where one projection serves several
    matrices); each rank holds half the teacher after loading, and at most one layer's units more at any gather."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        free_port(), str(REPO / "tests/sharded_teacher_worker.py"), str(tmp_path)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:  # the KL's teacher logits from the vocabulary-sharded head (lrc.sharded_head)
        exchange = rank.pop("head_exchange")
        assert exchange["torch.float32"] == {"rows": 11, "max_diff": pytest.approx(0, abs=1e-5), "finite": True}
        assert exchange["torch.bfloat16"] == {"rows": 11, "max_diff": 0.0, "finite": True}
    assert set(ranks[0]) == {"llama_untied_gqa", "qwen2_tied_bias", "llama_gas2_core", "qwen2_gas2_dense",
                             "qwen3_inout_checkpointing", "gemma2_untied", "llama_uneven_chunks"}
    for rank in ranks:
        for name, case in rank.items():
            total = case["after_load"]["total"]
            assert case["after_load"]["gathered"] == 0 and case["after_load"]["local"] <= math.ceil(total / 2) + 200
            biggest = max(case["units_numel"].values())
            assert case["held_max"] <= 2 * biggest and case["after_load"]["local"] + case["held_max"] < total, name
            assert case["gathered_at_end"] == 0 and not case["teacher_registered"]
            assert case["after_loss_max"] == 0, name  # the KL read the head's rows where they live
            assert "model.layers.0.self_attn.q_proj.weight" in case["names"]
            for step in case["steps"]:
                w, s = step["whole"], step["sharded"]
                assert s["loss"] == pytest.approx(w["loss"], rel=1e-6, abs=1e-7), name
                assert s["terms"].keys() == w["terms"].keys()
                for k in w["terms"]:
                    assert s["terms"][k] == pytest.approx(w["terms"][k], rel=1e-6, abs=1e-7), (name, k)
                for k, g in w["grads"].items():
                    assert torch.allclose(torch.tensor(s["grads"][k]), torch.tensor(g), rtol=1e-5, atol=1e-6), (name, k)
    # the ranks saw different batches, so their losses differ: a run that ignored one rank's data would not
    assert ranks[0]["llama_untied_gqa"]["steps"][0]["whole"]["loss"] != \
        ranks[1]["llama_untied_gqa"]["steps"][0]["whole"]["loss"]


# ---------------------------------------------------------------------------------------------- training


def launch(tmp: Path, name: str, flags: dict, config: str = "accel_cpu_shard_teacher_2proc.yaml",
           sigterm_at: int = 0) -> subprocess.CompletedProcess:
    script = tmp / f"{name}.py"
    script.write_text(TWO_PROC.format(repo=str(REPO), tests=str(REPO / "tests"), step=sigterm_at, flags=flags))
    cmd = [ACCEL, "launch", "--config_file", str(REPO / "configs" / config), "--main_process_port", free_port(),
           str(script)]
    return subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Llama (untied, GQA) and Qwen2 (tied, biases) teachers, each trained with the whole teacher on every rank and
    with --shard_teacher true, 2 processes x batch 2. Qwen2: GAS 2, --mlp_train core, and the sharded run under
    DeepSpeed ZeRO-2 with --shard_generation on."""
    tmp = tmp_path_factory.mktemp("sharded")
    assets = make_assets(tmp / "assets")
    teachers = {"llama": save_teacher(tiny_teacher("llama", tied=False, layers=3), tmp / "llama"),
                "qwen2": save_teacher(tiny_teacher("qwen2", tied=True, layers=3), tmp / "qwen2")}
    out = {"tmp": tmp, "assets": assets, "teachers": teachers, "flags": {}}
    cases = {
        "llama": ({"proj_init": "activation", "diagnostics_steps": 2, "eval_dataset": assets["heldout"],
                   "eval_steps": 2}, "accel_cpu_shard_teacher_2proc.yaml"),
        "qwen2": ({"gradient_accumulation_steps": 2, "mlp_train": "core", "shard_generation": "on"},
                  "accel_cpu_ds_zero2_2proc.yaml"),
    }
    for fam, (extra, sharded_config) in cases.items():
        flags = base_flags(assets, tmp / "x", raw_model_name=teachers[fam], max_steps=4, save_steps=100,
                           batch_size=2, learning_rate=5e-3, **extra)
        out["flags"][fam] = flags
        for mode, config in (("whole", "accel_cpu_shard_teacher_2proc.yaml"), ("sharded", sharded_config)):
            if mode == "sharded" and "ds_zero2" in config:
                pytest.importorskip("deepspeed")
            run_dir = tmp / f"{fam}_{mode}"
            p = launch(tmp, f"{fam}_{mode}", {**flags, "output_dir": str(run_dir), "shard_teacher": mode == "sharded"},
                       config)
            assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
            out[f"{fam}_{mode}"] = (run_dir, p.stdout + p.stderr)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_equals_whole_teacher(runs, family):
    """Every logged value (loss, CE, KL, each clone term, the diagnostics, the evaluation) and the final projections
    equal the whole-teacher run's; the activation-aware init chose the same channels."""
    (whole, _), (sharded, said) = runs[f"{family}_whole"], runs[f"{family}_sharded"]
    assert "sharded over 2 processes (FSDP2)" in said
    a, b = train_logs(whole), train_logs(sharded)
    assert len(a) == len(b) == 4
    keys = [k for k in a[0] if k == "loss" or k in ("ce", "kl", "clone") or k.endswith("-loss")]
    assert len(keys) >= 8
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in keys + [k for k in x if k.startswith(("erank-", "cond-"))]:
            assert y[k] == pytest.approx(x[k], rel=1e-5), (k, x[k], y[k])
    if family == "llama":  # the activation init (calibrated through the sharded teacher), diagnostics, evaluation
        assert [h for h in b if "erank-teacher-final" in h]
        evals = [[h["eval_loss"] for h in json.loads((d / "trainer_state.json").read_text())["log_history"]
                  if "eval_loss" in h] for d in (whole, sharded)]
        assert len(evals[0]) == 2 and evals[1] == pytest.approx(evals[0], rel=1e-5)
        init = [json.loads((d / "run_config.json").read_text())["proj_init"] for d in (whole, sharded)]
        assert init[0]["channels"] == init[1]["channels"] and len(init[0]["channels"]) == 32
    wa, wb = weights(whole), weights(sharded)
    assert wa.keys() == wb.keys() and not any(k.startswith("teacher") for k in wb)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6) for k in wa)
    if family == "qwen2":
        assert any(k.endswith("_delta") for k in wb)  # CORE trained
        assert (sharded / "checkpoint-4" / "global_step4").is_dir()  # DeepSpeed's engine state: ZeRO-2 really ran
        assert "sharded over the 2 processes of this node" in said  # and the generation was sharded too


def test_sigterm_saves_on_both_ranks_and_resume_is_bitwise(runs):
    """Rank 0 signalled during step 2: both ranks stop after step 3 and save it (one rng state each); resumed, the run
    equals the uninterrupted sharded run bitwise (weights and every logged loss)."""
    tmp, flags = runs["tmp"], {**runs["flags"]["llama"], "shard_teacher": True}
    out = tmp / "cut"
    p = launch(tmp, "cut", {**flags, "output_dir": str(out)}, sigterm_at=2)
    assert p.returncode != 0
    assert len(errors(p.stderr)) == 1 and "stopped by SIGTERM after step 3" in p.stderr, p.stderr[-4000:]
    assert [c.name for c in out.glob("checkpoint-*")] == ["checkpoint-3"]
    assert verify_checkpoint(out / "checkpoint-3") is None
    assert sorted(f.name for f in (out / "checkpoint-3").glob("rng_state_*.pth")) == ["rng_state_0.pth",
                                                                                       "rng_state_1.pth"]
    p = launch(tmp, "resume", {**flags, "output_dir": str(out), "resume": "auto"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    whole, _ = runs["llama_sharded"]
    a, b = weights(whole), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in train_logs(whole)] == [h["loss"] for h in train_logs(out)]


def test_conversion_equals_whole_teacher_run(runs):
    """convert_ckpt.py on the sharded run and on the whole-teacher run: the same student."""
    got = {}
    for mode in ("whole", "sharded"):
        run_dir, _ = runs[f"llama_{mode}"]
        p = subprocess.run([sys.executable, str(REPO / "convert_ckpt.py"), "--ckpt-path", str(run_dir), "--save-path",
                            str(run_dir / "student")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        got[mode] = load_file(str(run_dir / "student" / "model.safetensors"))
    assert got["whole"].keys() == got["sharded"].keys()
    assert all(torch.allclose(got["whole"][k], got["sharded"][k], rtol=1e-5, atol=1e-6) for k in got["whole"])


# ---------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.mark.parametrize("over, needles", [
    ({}, ("--shard_teacher true needs 2 or more processes",)),
    ({"model_cls": "prune_kd"}, ("--shard_teacher true applies to --model_cls lrc", "prune_kd")),
    ({"raw_model_name": "teacher.gguf"}, ("reads the teacher's rows from safetensors files", "teacher.gguf")),
])
def test_refused_in_one_line(assets, tmp_path, capsys, over, needles):
    """Where the sharded teacher cannot apply, one line says so and --output_dir is not created."""
    out = tmp_path / "out"
    rc = hf_trainer.run(base_flags(assets, out, shard_teacher=True, **over))
    one_line_error(capsys, rc, 2, *needles)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- one process
@pytest.fixture
def one_process_group():
    """torch.distributed with this process alone (gloo): the sharded teacher at N = 1, the path one GPU takes."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _load_sharded(path, linears=("o",), dtype=torch.float32):
    from lrc.sharded_teacher import load_sharded_teacher, teacher_mesh
    from lrc.teacher import load_teacher_config

    return load_sharded_teacher(str(path), load_teacher_config(str(path)), teacher_mesh(torch.device("cpu")),
                                dtype, torch.device("cpu"), "eager", linears)


def test_one_process_equals_whole(one_process_group, tmp_path):
    """N = 1 (CORE, untied Qwen2): the same loss and gradients, the same student weights generated unit by unit
    outside training, the same CORE bases and reachability audit, read one unit at a time."""
    from lrc.config import LRCConfig
    from lrc.model import LRCModel

    path = save_teacher(tiny_teacher("qwen2", tied=False, layers=2), tmp_path / "t")
    cfg = LRCConfig(target_hidden_size=32, mlp_train="core")
    torch.manual_seed(0)
    whole = LRCModel(tiny_teacher("qwen2", tied=False, layers=2), cfg)
    units = _load_sharded(path, cfg.teacher_space_linears())
    sharded = LRCModel(units.teacher, cfg, units=units)
    sharded.projections.load_state_dict(whole.projections.state_dict())
    assert sharded.core_bases_fingerprint() == whole.core_bases_fingerprint()
    assert [r.to_dict() for r in sharded.reachability_audit()] == [r.to_dict() for r in whole.reachability_audit()]
    ids = torch.randint(3, 101, (2, 10), generator=torch.Generator().manual_seed(0))
    for m in (whole, sharded):
        m(ids).loss.backward()
    for (n, a), b in zip(whole.projections.named_parameters(), sharded.projections.parameters()):
        assert torch.equal(a.grad, b.grad), n
    ws, ss = whole.student_weights(), sharded.student_weights()
    assert ws.keys() == ss.keys() and all(torch.equal(ws[k], ss[k]) for k in ws)
    assert units.gathered_numel() == 0


def test_one_process_bf16_equals_whole(one_process_group, tmp_path):
    """A bf16 teacher (the GPU setting; fp32 files converted while each rank reads its rows): the same loss and
    gradients as the whole teacher loaded in bf16."""
    from lrc.config import LRCConfig
    from lrc.model import LRCModel
    from lrc.teacher import load_teacher

    path = save_teacher(tiny_teacher("llama", tied=False, layers=2), tmp_path / "t")
    cfg = LRCConfig(target_hidden_size=32)
    whole = LRCModel(load_teacher(path, dtype=torch.bfloat16, attn_implementation="eager"), cfg)
    units = _load_sharded(path, cfg.teacher_space_linears(), dtype=torch.bfloat16)
    sharded = LRCModel(units.teacher, cfg, units=units)
    for m in (whole, sharded):
        m.projections.float()
    sharded.projections.load_state_dict(whole.projections.state_dict())
    ids = torch.randint(3, 101, (2, 10), generator=torch.Generator().manual_seed(0))
    losses = []
    for m in (whole, sharded):
        out = m(ids)
        out.loss.backward()
        losses.append(out.loss.item())
    assert losses[0] == losses[1] and units.teacher.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(whole.projections.parameters(),
                                                          sharded.projections.parameters()))


def _damage(path: Path, how: str) -> None:
    from safetensors.torch import save_file

    f = path / "model.safetensors"
    if how == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
        return
    if how == "bin":
        (path / "pytorch_model.bin").write_bytes(b"not read")
        return
    sd = load_file(str(f))
    key = "model.layers.1.mlp.up_proj.weight"
    if how == "missing":
        del sd[key]
    elif how == "shape":
        sd[key] = sd[key][:-1]
    elif how == "nan":
        sd[key][0, 0] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})


@pytest.mark.parametrize("how, needle", [
    ("missing", "lack 1 tensor(s) the config needs, e.g. model.layers.1.mlp.up_proj.weight"),
    ("shape", "tensor model.layers.1.mlp.up_proj.weight has shape (95, 64), the config gives (96, 64)"),
    ("nan", "tensor model.layers.1.mlp.up_proj.weight holds NaN or infinite values"),
    ("truncated", "is truncated"),
    ("bin", "reads safetensors files only"),
])
def test_bad_teacher_files_refused(one_process_group, tmp_path, how, needle):
    """A teacher directory that cannot be read row by row: one TeacherError naming the file and tensor."""
    from lrc.teacher import TeacherError

    path = Path(save_teacher(tiny_teacher("llama", tied=False, layers=2), tmp_path / "t"))
    _damage(path, how)
    with pytest.raises(TeacherError, match=None) as e:
        _load_sharded(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
