"""Train what you deploy (``--mlp_train dense|core``, ``--init_from``): step 0 is plain LRC, the Deltas train,
CORE stays in the complement of the teacher's space, the bases are deterministic, parameter counts follow
the documented formula, training resumes bitwise, and ``--init_from`` continues exactly an LRC student.

The conversion equivalence matrix for dense and core is in tests/test_convert.py; the 2-process
DeepSpeed ZeRO-2 run with core in tests/test_trainer.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny import randomize_projections, save_teacher, tiny_teacher
from trainer_helpers import base_flags, cli, make_assets, train, train_logs, weights

from lrc.checkpoint import CheckpointError, TeacherRef, init_from_checkpoint, save_lrc_checkpoint
from lrc.config import LRCConfig, LRCConfigError
from lrc.mlp_train import (
    added_trainable_parameters,
    bases_fingerprint,
    core_bases,
    numerical_rank,
    reachable_space_basis,
)
from lrc.model import LRCModel
from lrc.teacher import teacher_fingerprint
from lrc.training.run_dir import RUN_RECORD_NAME

IDS = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
MLP = {"gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def _model(mode: str, family: str = "llama", seed: int = 3, **lrc_kw) -> LRCModel:
    torch.manual_seed(seed)
    return LRCModel(tiny_teacher(family, tied=True), LRCConfig(target_hidden_size=32, mlp_train=mode, **lrc_kw))


def _delta(model: LRCModel, L: int, kind: str) -> torch.Tensor:
    """The generated Delta of teacher layer L's MLP matrix: the student weight minus its plain-LRC part."""
    j = model.kept_layers.index(L)
    w = model.student_weights()[f"model.layers.{j}.{MLP[kind]}"]
    lrc_only = generate_without_delta(model)[f"model.layers.{j}.{MLP[kind]}"]
    return (w - lrc_only).detach()


def generate_without_delta(model: LRCModel) -> dict[str, torch.Tensor]:
    from lrc.generate import generate_student_weights

    plain = LRCConfig.from_dict({**model.lrc_config.to_dict(), "mlp_train": "lrc"})
    return generate_student_weights(dict(model.teacher.named_parameters()), model.projections, plain,
                                    model.kept_layers, model._student_param_names, model.teacher_tied)


# ---------------------------------------------------------------------------------------------- the method
@pytest.mark.parametrize("family, variant", [("llama", {}), ("qwen2", {"use_in_out_mlp": True}),
                                             ("qwen3", {"del_layers": (1,), "use_all_attn": False}),
                                             ("llama", {"tie_word_emb_proj": False, "ban_losses": ("mlp-up-loss",)})])
@pytest.mark.parametrize("mode", ["dense", "core"])
def test_step0_equals_plain_lrc(family, variant, mode):
    """Zero-initialised Deltas and unchanged RNG draws: the same loss, terms and logits as plain LRC."""
    ref, ext = _model("lrc", family, **variant), _model(mode, family, **variant)
    for k, v in ref.projections.state_dict().items():  # the shared tensors are drawn identically
        assert torch.equal(v, ext.projections.state_dict()[k])
    a, b = ref(IDS), ext(IDS)
    assert abs(a.loss.item() - b.loss.item()) <= 1e-6 * abs(a.loss.item())
    for k in a.terms:
        assert abs(a.terms[k].item() - b.terms[k].item()) <= 1e-6 * max(1.0, abs(a.terms[k].item()))
    assert (ref.student_logits(IDS) - ext.student_logits(IDS)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("mode", ["dense", "core"])
def test_deltas_receive_gradients(mode):
    model = _model(mode)
    model(IDS).loss.backward()
    for L, layer in model.projections.layers.items():
        for kind in ("gate", "up", "down"):
            g = getattr(layer, f"{kind}_delta").grad
            assert g is not None and g.abs().max().item() > 0, (L, kind)


def _train_steps(model: LRCModel, steps: int = 5, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        model(IDS).loss.backward()
        opt.step()


@pytest.mark.parametrize("mode", ["core", "dense"])
def test_core_update_stays_in_the_complement(mode):
    """core: W_T^T Delta = 0 (gate / up) and Delta W_T^T = 0 (down) after training; dense: not (the check can fail)."""
    model = _model(mode)
    _train_steps(model)
    tp = dict(model.teacher.named_parameters())
    worst = 0.0
    for L in model.kept_layers:
        for kind in ("gate", "up", "down"):
            w = tp[f"model.layers.{L}.{MLP[kind]}"].detach()
            d = _delta(model, L, kind)
            assert d.abs().max() > 1e-4  # Delta moved
            inside = w.t() @ d if kind != "down" else d @ w.t()
            worst = max(worst, (inside.abs().max() / (w.norm() * d.norm())).item())
    if mode == "core":
        assert worst <= 1e-6, worst
    else:
        assert worst > 1e-3, worst


def test_core_bases_are_deterministic_and_span_the_teacher_space():
    teacher = tiny_teacher("llama", tied=True)
    tp = dict(teacher.named_parameters())
    a, b = core_bases(tp, [0, 1, 2]), core_bases(tp, [0, 1, 2])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert bases_fingerprint(a) == bases_fingerprint(b)
    w = tp["model.layers.0.mlp.gate_proj.weight"].detach()  # (I=96, d=64)
    q = a[(0, "gate")]
    assert q.shape == (96, 64)
    assert torch.allclose(q.t() @ q, torch.eye(64), atol=1e-5)
    assert torch.allclose(q @ (q.t() @ w), w, atol=1e-4)  # Q spans W's columns
    # A rank-deficient matrix: the tolerance drops the null directions.
    low = w[:, :10] @ torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    assert numerical_rank(low) == 10 and reachable_space_basis(low, "gate").shape == (96, 10)
    assert reachable_space_basis(tp["model.layers.0.mlp.down_proj.weight"], "down").shape == (96, 64)


@pytest.mark.parametrize("variant", [{}, {"use_in_out_mlp": True, "del_layers": (0,)}])
def test_trainable_parameter_count_follows_the_formula(variant):
    """dense and core add 3 * I * d_s per kept layer; the audit's MLP rows become fully reachable."""
    base = sum(p.numel() for p in _model("lrc", **variant).trainable_parameters())
    n_kept = 3 - len(variant.get("del_layers", ()))
    for mode in ("dense", "core"):
        model = _model(mode, **variant)
        n = sum(p.numel() for p in model.trainable_parameters())
        assert n - base == added_trainable_parameters(n_kept, 96, 32, mode) == n_kept * 3 * 96 * 32
        rows = {r.kind: r for r in model.reachability_audit()}
        assert rows["gate"].reachable == rows["gate"].deployed == n_kept * 96 * 32
    rows = {r.kind: r for r in _model("lrc", **variant).reachability_audit()}
    assert rows["down"].deployed == n_kept * 32 * 96 and rows["down"].reachable == n_kept * 32 * 64  # rank d = 64
    assert rows["q"].reachable == rows["q"].deployed  # square, full rank: attention needs no Delta


def test_mlp_train_is_validated():
    with pytest.raises(LRCConfigError, match="mlp_train must be one of"):
        LRCConfig(target_hidden_size=8, mlp_train="full")


# ---------------------------------------------------------------------------------------------- --init_from
def _ref(teacher_dir: str, model: LRCModel) -> TeacherRef:
    from lrc.teacher import weights_fingerprint

    return TeacherRef(teacher_dir, teacher_fingerprint(model.teacher.config), model.teacher.config.model_type,
                      weights_fingerprint(teacher_dir))


@pytest.mark.parametrize("mode", ["dense", "core"])
def test_init_from_continues_exactly_the_lrc_student(tmp_path, mode):
    teacher_dir = save_teacher(tiny_teacher("llama", tied=True), tmp_path / "teacher")
    from lrc.teacher import load_teacher

    src = LRCModel(load_teacher(teacher_dir, dtype=torch.float32), LRCConfig(target_hidden_size=32))
    randomize_projections(src, seed=5)
    save_lrc_checkpoint(tmp_path / "phase1", src.projections, src.lrc_config, _ref(teacher_dir, src))
    torch.manual_seed(99)  # another init: everything must come from the checkpoint
    dst = LRCModel(load_teacher(teacher_dir, dtype=torch.float32), LRCConfig(target_hidden_size=32, mlp_train=mode))
    desc = init_from_checkpoint(tmp_path / "phase1", dst.projections, dst.lrc_config, dst.kept_layers,
                                _ref(teacher_dir, dst))
    assert "9 new mlp_train" in desc
    with torch.no_grad():
        assert torch.equal(src.student_logits(IDS), dst.student_logits(IDS))
        assert src(IDS).loss.item() == dst(IDS).loss.item()
    assert all(p.abs().max() == 0 for n, p in dst.projections.named_parameters() if n.endswith("_delta"))


def test_init_from_refusals(tmp_path):
    teacher_dir = save_teacher(tiny_teacher("llama", tied=True), tmp_path / "teacher")
    other_dir = save_teacher(tiny_teacher("llama", tied=True, seed=1), tmp_path / "other")
    from lrc.teacher import load_teacher

    def ckpt(name, teacher, **kw):
        m = LRCModel(load_teacher(teacher, dtype=torch.float32), LRCConfig(**{"target_hidden_size": 32, **kw}))
        save_lrc_checkpoint(tmp_path / name, m.projections, m.lrc_config, _ref(teacher, m))
        return tmp_path / name

    dst = LRCModel(load_teacher(teacher_dir, dtype=torch.float32), LRCConfig(target_hidden_size=32, mlp_train="core"))

    def init(path):
        return init_from_checkpoint(path, dst.projections, dst.lrc_config, dst.kept_layers, _ref(teacher_dir, dst))

    cases = [(ckpt("width", teacher_dir, target_hidden_size=16), "target_hidden_size: source 16 vs this run 32"),
             (ckpt("inout", teacher_dir, use_in_out_mlp=True), "use_in_out_mlp: source True vs this run False"),
             (ckpt("del", teacher_dir, del_layers=(1,)), "del_layers: source [1] vs this run []"),
             (ckpt("dense", teacher_dir, mlp_train="dense"), "trained with mlp_train='dense'"),
             (ckpt("from_other_teacher", other_dir), "other weights (weights fingerprint)")]
    for path, needle in cases:
        with pytest.raises(CheckpointError) as e:
            init(path)
        assert needle in str(e.value), (needle, str(e.value))
    init(ckpt("ok", teacher_dir))  # the control: the same teacher and variant is accepted


def test_cli_two_phases_and_flag_refusals(assets, tmp_path, capsys):
    """Phase 1 plain LRC, phase 2 core from it; the audit reaches run_config.json; bad combinations refused."""
    train(assets, tmp_path / "p1", max_steps=3, save_steps=3)
    t = train(assets, tmp_path / "p2", max_steps=2, save_steps=2, mlp_train="core", init_from=str(tmp_path / "p1"))
    out = capsys.readouterr().out
    assert "init from: projections and gains from" in out and "reachability audit (--mlp_train core)" in out
    assert t.state.global_step == 2 and train_logs(tmp_path / "p2")[0]["step"] == 1
    record = json.loads((tmp_path / "p2" / RUN_RECORD_NAME).read_text())
    assert record["init_from"] == str((tmp_path / "p1").resolve()) and record["lrc"]["mlp_train"] == "core"
    gate = {r["kind"]: r for r in record["reachability_audit"]}["gate"]
    assert gate["reachable"] == gate["deployed"]
    w = weights(tmp_path / "p2")
    assert any(k.endswith("gate_delta") and w[k].abs().max() > 0 for k in w)  # phase 2 trained its Deltas
    flags = base_flags(assets, tmp_path / "bad")
    for extra, needle in [({"mlp_train": "dense", "load_model_weight_path": str(tmp_path / "p1")}, "use --init_from"),
                          ({"init_from": str(tmp_path / "p1"), "load_model_weight_path": str(tmp_path / "p1")},
                           "give one"),
                          ({"init_from": str(tmp_path / "nope")}, "no such file or directory"),
                          ({"model_cls": "only_kd", "init_from": str(tmp_path / "p1")}, "starts from a converted student"),
                          ({"mlp_train": "full"}, "mlp_train must be one of")]:
        rc = cli(*[f"--{k}={v}" for k, v in {**flags, **extra}.items()])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, (extra, err[-1500:])
        assert not (tmp_path / "bad" / RUN_RECORD_NAME).exists()


@pytest.mark.parametrize("mode", ["dense", "core"])
def test_resume_is_bitwise_exact(assets, tmp_path, capsys, mode):
    from test_trainer import stop_at

    over = dict(max_steps=5, save_steps=2, log_steps=1, mlp_train=mode)
    train(assets, tmp_path / "one", **over)
    train(assets, tmp_path / "two", trainer_cls=stop_at(2), **over)
    train(assets, tmp_path / "two", resume="auto", **over)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert any(k.endswith("down_delta") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in train_logs(tmp_path / "one")] == [h["loss"] for h in train_logs(tmp_path / "two")]
    # Resuming a core run as dense is another method: refused, naming the field.
    rc = cli(*[f"--{k}={v}" for k, v in base_flags(assets, tmp_path / "two", **{**over, "max_steps": 6,
                                                                                   "mlp_train": "lrc"}).items()],
             "--resume=auto")
    err = capsys.readouterr().err
    assert rc == 2 and f"mlp_train: checkpoint '{mode}' vs now 'lrc'" in err, err[-1500:]


def test_gradient_checkpointing_gives_the_same_gradients():
    """core under gradient checkpointing: the same loss and Delta / projection gradients as without."""
    a, b = _model("core"), _model("core")
    for m in (a, b):
        randomize_projections(m, seed=4)
    b.enable_gradient_checkpointing()
    la, lb = a(IDS).loss, b(IDS).loss
    la.backward()
    lb.backward()
    assert abs(la.item() - lb.item()) <= 1e-6 * abs(la.item())
    for (n, p), q in zip(a.projections.named_parameters(), b.projections.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n
