"""The benchmark and comparison scripts run end to end on tiny shapes (seconds), and
``reproduce_small.py`` resumes, reports and refuses a changed configuration."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import VOCAB, save_teacher, tiny_teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("scripts")
    teacher = save_teacher(tiny_teacher("llama", tied=True, layers=2), d / "teacher")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(VOCAB - 3)]
    paras = [" ".join(words[(s + k) % len(words)] for k in range(rng.randrange(20, 60)))
             for s in (rng.randrange(len(words)) for _ in range(80))]
    (d / "train.txt").write_text("\n\n".join(paras[:60]) + "\n")
    (d / "held.txt").write_text("\n\n".join(paras[60:]) + "\n")
    return {"teacher": teacher, "train": str(d / "train.txt"), "held": str(d / "held.txt"), "dir": d}


def test_bench_step_runs_on_a_tiny_teacher(tiny_assets, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--teacher", tiny_assets["teacher"],
                        "--target-hidden-size", "32", "--batch", "2", "--seq", "16", "--warmup", "1", "--iters", "1",
                        "--loss-memory", "--loss-vocab", "512", "--loss-tokens", "64", "--mlp-train", "dense,core",
                        "--gas", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    sec = res["seconds"]
    for phase in ("a_teacher_forward", "b_student_train_step", "c_lrc_step", "c_lrc_step_per_micro_batch"):
        assert sec[phase] > 0 and res["tokens_per_s"][phase] == pytest.approx(2 * 2 * 16 / sec[phase])  # GAS 2
    assert res["ratio_c_over_a_plus_b"] == pytest.approx(
        sec["c_lrc_step"] / (sec["a_teacher_forward"] + sec["b_student_train_step"]))
    assert res["once_per_step_speedup"] == pytest.approx(sec["c_lrc_step_per_micro_batch"] / sec["c_lrc_step"])
    # 2 layers x (q 64x32, k, v 32x32 each, o 32x64, gate, up 96x32, down 32x96) + embedding 101x32, k = d = 64
    per_layer = 64 * 32 + 2 * 32 * 32 + 32 * 64 + 3 * 96 * 32
    assert res["generation_gflop_per_step"] == pytest.approx(4 * 64 * (2 * per_layer + 101 * 32) / 1e9)
    assert res["trainable_params"] > 0 and res["student_params"] < res["teacher_params"]
    lm = res["loss_memory"]
    assert lm["vocab"] == 512 and lm["tokens"] == 64 and lm["ratio"] > 0
    mt = res["mlp_train"]  # Dense / CORE step against plain LRC: 2 layers x 3 matrices x I=96 x d_s=32 more
    for mode in ("dense", "core"):
        assert mt[mode]["step_time_ratio"] == pytest.approx(sec[f"c_lrc_step_{mode}"] / sec["c_lrc_step"])
        assert mt[mode]["trainable_params"] - res["trainable_params"] == 2 * 3 * 96 * 32
    assert mt["dense"]["core_bases_bytes"] == 0 and mt["core"]["core_bases_bytes"] == 2 * 3 * 96 * 64 * 4


def test_bench_step_two_processes_shard_the_generation(tiny_assets, tmp_path):
    """--nproc 2: the sharded and unsharded LRC step in 2 gloo processes; each rank generates about half."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--teacher", tiny_assets["teacher"],
                        "--target-hidden-size", "32", "--batch", "1", "--seq", "16", "--warmup", "0", "--iters", "1",
                        "--nproc", "2", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    per_rank, total = res["generation_gflop_per_rank"], res["generation_gflop_unsharded"]
    assert sum(per_rank) == pytest.approx(total) and max(per_rank) <= 0.55 * total
    # what each rank no longer computes, counted by torch's FLOP counter, is exactly the other rank's share
    assert res["step_gflop_saved_per_rank"] == pytest.approx(per_rank[::-1], rel=1e-6)
    assert res["step_time_ratio_sharded_over_unsharded"] > 0


def test_reproduce_small_out_of_domain_heldout_and_pruned_starts(tiny_assets, tmp_path):
    """--ood_heldout adds a second held-out set (teacher and every method); prune_kd and LRC with
    --proj_init activation run as methods."""
    import reproduce_small as rs

    out, docs = tmp_path / "out", tmp_path / "docs"
    rs.main(out=str(out), docs=str(docs), methods="prune_kd,lrc:proj_init=activation", teacher=tiny_assets["teacher"],
            train=tiny_assets["train"], heldout=tiny_assets["held"], ood_heldout=tiny_assets["train"], budgets="64",
            seq_len=16, batch_size=2, eval_sequences=2, train_sequences=8, warmup_steps=1, target_hidden_size=32,
            learning_rate=1e-2)
    teacher = json.loads((out / "results" / "teacher.json").read_text())
    assert teacher["ood_ppl"] > 1 and teacher["ood_tokens"] == 2 * 15
    for m in ("prune_kd", "lrc:proj_init=activation"):
        r = json.loads((out / "results" / m / "64.json").read_text())
        assert r["ood_ppl"] > 1 and 0 <= r["ood_top1"] <= 1 and r["ppl"] > 1
        assert len(json.loads((out / "runs" / m / "run_config.json").read_text())["proj_init"]["channels"]) == 32
    report = (docs / "REPRODUCE_SMALL.md").read_text()
    assert "Out-of-domain held-out" in report and f"{teacher['ood_ppl']:.2f}" in report


def test_reproduce_small_end_to_end_resume_and_report(tiny_assets, tmp_path, capsys):
    import reproduce_small as rs

    out, docs = tmp_path / "out", tmp_path / "docs"
    args = dict(out=str(out), docs=str(docs), methods="lrc,tiny_bert,origin", teacher=tiny_assets["teacher"],
                train=tiny_assets["train"], heldout=tiny_assets["held"], budgets="64,128", seq_len=16,
                batch_size=2, eval_sequences=2, train_sequences=8, warmup_steps=1, target_hidden_size=32, learning_rate=1e-2)
    rs.main(**args)
    for m in ("lrc", "tiny_bert", "origin"):
        for b in (64, 128):
            r = json.loads((out / "results" / m / f"{b}.json").read_text())
            assert r["steps"] == b // 32 and r["tokens"] == b
            assert r["ppl"] > 1 and r["kl"] >= 0 and 0 <= r["top1"] <= 1 and r["eval_tokens"] == 2 * 15
    teacher = json.loads((out / "results" / "teacher.json").read_text())
    report = (docs / "REPRODUCE_SMALL.md").read_text()
    assert f"{teacher['ppl']:.2f}" in report and "| tiny_bert |" in report and "| origin |" in report
    assert (docs / "reproduce_small.png").stat().st_size > 1000
    # the run continued from the 64-token checkpoint: 2 steps, then 2 more (4 in all)
    state = json.loads((out / "runs" / "lrc" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # a second run does nothing but report again, keeping the hand-written notes below the marker
    with open(docs / "REPRODUCE_SMALL.md", "a") as f:
        f.write("\n" + rs.NOTES_MARKER + "\n## Analysis\nhand-written text\n")
    capsys.readouterr()
    stored = json.loads((out / "repro_config.json").read_text())
    del stored["ood_heldout"]  # written before that field existed: read with its default
    (out / "repro_config.json").write_text(json.dumps(stored))
    rs.main(**args)
    assert capsys.readouterr().out.count("done before") == 6
    regenerated = (docs / "REPRODUCE_SMALL.md").read_text()
    assert regenerated.count("hand-written text") == 1 and regenerated.count(rs.NOTES_MARKER) == 1
    # the ladder may be extended in place (fixed pool, constant schedule); a budget below a trained one may not
    rs.main(**{**args, "methods": "origin", "budgets": "64,128,192"})
    assert json.loads((out / "results" / "origin" / "192.json").read_text())["steps"] == 6
    assert "192 tokens" in (docs / "REPRODUCE_SMALL.md").read_text()
    with pytest.raises(SystemExit, match="trained past"):
        rs.main(**{**args, "methods": "origin", "budgets": "32,192"})
    with pytest.raises(SystemExit, match="other settings"):
        rs.main(**{**args, "seq_len": 8})
    # a method variant (NAME:flag=value) runs under its own name with its flags; bad ones fail up front
    rs.main(**{**args, "methods": "lrc:aux_loss_type=nmse:aux_loss_scale_factor=0.5", "budgets": "64"})
    var = out / "runs" / "lrc:aux_loss_type=nmse:aux_loss_scale_factor=0.5"
    run_cfg = json.loads((var / "run_config.json").read_text())
    assert run_cfg["lrc"]["aux_loss_type"] == "nmse" and run_cfg["lrc"]["aux_loss_scale_factor"] == 0.5
    assert "| lrc:aux_loss_type=nmse:aux_loss_scale_factor=0.5 |" in (docs / "REPRODUCE_SMALL.md").read_text()
    # two phases (Train What You Deploy): plain LRC to half of each budget, then core from its weights
    rs.main(**{**args, "methods": "lrc:then=core,lrc:mlp_train=dense", "budgets": "64,128"})
    two = out / "runs" / "lrc:then=core"
    p1 = json.loads((two / "phase1" / "trainer_state.json").read_text())
    assert p1["global_step"] == 2  # 1 step (half of 64 tokens), then grown to 2 (half of 128)
    assert (two / "phase1_at_1" / "lrc_weights.safetensors").is_file()
    rec = json.loads((two / "phase2_128" / "run_config.json").read_text())
    assert rec["lrc"]["mlp_train"] == "core" and rec["init_from"] == str((two / "phase1_at_2").resolve())
    assert json.loads((two / "phase2_128" / "trainer_state.json").read_text())["global_step"] == 2
    r = json.loads((out / "results" / "lrc:then=core" / "128.json").read_text())
    assert r["steps"] == 4 and r["delta_rel_norm"] > 0
    assert json.loads((out / "results" / "lrc:mlp_train=dense" / "64.json").read_text())["delta_rel_norm"] > 0
    assert json.loads((out / "results" / "lrc" / "64.json").read_text())["delta_rel_norm"] is None
    for bad, msg in (("lrc:learning_rate=1", "set by the comparison"), ("lrc:nonsense=1", "unknown hf_trainer flag"),
                     ("lrc:aux_loss_type", "not flag=value"), ("lrx", "unknown method"),
                     ("origin:then=core", "then=MODE needs an LRC method")):
        with pytest.raises(SystemExit, match=msg):
            rs.main(**{**args, "methods": bad})


def test_grad_share_components_add_up(tiny_assets, tmp_path):
    """Each clone-term pass computes exactly its term: the per-term gradients sum to the clone
    gradient, and CE + KL + clone is the gradient of the full loss."""
    import grad_share
    import torch

    out = tmp_path / "gs.json"
    rep = grad_share.main(teacher=tiny_assets["teacher"], data=tiny_assets["train"], batches=2, batch_size=2, seq_len=16,
                          target_hidden_size=32, aux_loss_scale_factor=0.5, json_out=str(out))
    rows = json.loads(out.read_text())["components"]
    assert rows == rep["components"] and set(rows) >= {"ce", "kl", "clone", "mlp-out-loss", "total"}
    assert all(r["norm"] > 0 and -1 <= r["cos_total"] <= 1 + 1e-9 for r in rows.values())
    assert rows["total"]["cos_total"] == pytest.approx(1.0) and rows["clone"]["share_of_total_norm"] < 1 + 1e-9
    # a CE gradient reaches the embedding projection; the FFN-output clone term's reaches its down projection
    assert rows["ce"]["sq_norm_fraction_by_kind"]["embed"] > 0
    assert rows["mlp-out-loss"]["sq_norm_fraction_by_kind"]["down"] > 0
    assert sum(rows["kl"]["sq_norm_fraction_by_kind"].values()) == pytest.approx(1.0)

    from lrc.config import LRCConfig
    from lrc.data.datasets import build_dataset, collate_batch
    from lrc.model import LRCModel
    from lrc.teacher import load_teacher, load_tokenizer

    teacher = load_teacher(tiny_assets["teacher"], dtype=torch.float32)
    lrc = LRCConfig(target_hidden_size=32, aux_loss_scale_factor=0.5)
    torch.manual_seed(0)
    model = LRCModel(teacher, lrc)
    ds = build_dataset(tiny_assets["train"], 16, teacher.config.vocab_size, load_tokenizer(tiny_assets["teacher"]))
    batches = [collate_batch([ds[0], ds[1]])]
    terms = lrc.active_clone_terms()
    g = grad_share.component_gradients(model, batches, lrc, terms)["grads"]
    assert model.lrc_config == lrc  # restored
    per_term = sum(g[t] for t in terms)
    assert torch.allclose(per_term, g["clone"], rtol=1e-4, atol=1e-6 * g["clone"].abs().max())
    model(**batches[0]).loss.backward()
    full = grad_share._flat_grad(model.trainable_parameters())
    assert torch.allclose(g["ce"] + g["kl"] + g["clone"], full, rtol=1e-4, atol=1e-5 * full.abs().max())

    # from a checkpoint: its LRC config (d_s included) is the default, flags given on the command line win
    from lrc.checkpoint import TeacherRef, save_lrc_checkpoint
    from lrc.teacher import teacher_fingerprint

    ref = TeacherRef(tiny_assets["teacher"], teacher_fingerprint(teacher.config), teacher.config.model_type)
    save_lrc_checkpoint(tmp_path / "run", model.projections, lrc, ref)
    rep = grad_share.main(teacher=tiny_assets["teacher"], data=tiny_assets["train"], checkpoint=str(tmp_path / "run"),
                          batch_size=2, seq_len=16, aux_loss_type="nmse")
    assert (rep["lrc"]["target_hidden_size"], rep["lrc"]["aux_loss_scale_factor"], rep["lrc"]["aux_loss_type"]) == (
        32, 0.5, "nmse")


def test_study_after_lrc_runs_every_arm_on_a_tiny_teacher(tiny_assets, tmp_path):
    """``scripts/study_after_lrc.py`` on a tiny teacher, one seed, 1 s per arm: every arm trains from the same LRC
    checkpoint and is scored (perplexities, the teacher's judgement of its samples); the report lands between its
    markers, with the plot; a second call reads the finished arms back instead of training them again."""
    demo_flags = {"raw_model_name": tiny_assets["teacher"], "dataset_name": tiny_assets["train"],
                  "eval_dataset": tiny_assets["held"], "demo_ood_eval": tiny_assets["held"], "target_hidden_size": 32,
                  "data_max_len": 32, "max_steps": 2, "batch_size": 2, "save_steps": 2, "calib_tokens": 256}
    md = tmp_path / "report.md"
    md.write_text("before\n<!-- after-lrc:begin (scripts/study_after_lrc.py) -->\nold\n<!-- after-lrc:end -->\nafter\n")
    cmd = [sys.executable, str(REPO / "scripts" / "study_after_lrc.py"), "--out", str(tmp_path / "runs"), "--seeds",
           "1", "--budget-s", "1", "--json", str(tmp_path / "r.json"), "--md", str(md), "--png",
           str(tmp_path / "p.png"), "--demo-flags", json.dumps(demo_flags), "--train-text", tiny_assets["train"],
           "--heldout", tiny_assets["held"], "--ood", tiny_assets["held"]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads((tmp_path / "r.json").read_text())
    arms = {"lrc_more", "sft_teacher", "onpolicy_rkl", "onpolicy_jsd", "dense_kd", "prune_kd"}
    assert set(res["arms"]) == {f"{a}/seed1" for a in arms}
    for key, arm in res["arms"].items():
        assert arm["steps"] >= 1, key
        assert all(v == v and abs(v) < float("inf") for k, v in arm.items()
                   if k in ("ppl_in_domain", "ppl_out_of_domain", "reverse_kl", "teacher_logprob")), (key, arm)
    assert res["arms"]["prune_kd/seed1"]["steps"] == 2 + res["arms"]["dense_kd/seed1"]["steps"]
    text = md.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text and "| `onpolicy_rkl` |" in text
    assert (tmp_path / "p.png").stat().st_size > 0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0 and "=== " not in r.stdout
