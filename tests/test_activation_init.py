"""Activation-aware initialisation (``--proj_init activation``, lrc.activation_init): the student starts as
the width-pruned teacher. Its logits are compared with a teacher pruned by hand here (weights sliced to
the selected channels), the calibration is checked for determinism, and a run using it resumes bitwise.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny import VOCAB, tiny_teacher
from trainer_helpers import base_flags, make_assets, stop_at, train, train_logs, weights
from transformers import AutoModelForCausalLM

import hf_trainer
from lrc.activation_init import apply_channel_selection, channel_importance, select_channels
from lrc.config import LRCConfig
from lrc.model import LRCModel
from lrc.training.run_dir import newest_complete_checkpoint

OUT_ROWS = ("self_attn.o_proj", "mlp.down_proj")  # output side: keep the selected rows (and bias entries)


def hand_pruned(teacher, channels: list[int], eps: float):
    """The teacher with only ``channels`` of its residual stream, built by slicing its weights."""
    cfg = copy.deepcopy(teacher.config)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cfg.hidden_size, cfg.head_dim, cfg.rms_norm_eps = len(channels), head_dim, eps
    pruned = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    idx = torch.tensor(channels)
    sd = {}
    for name, w in teacher.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            sd[name] = w  # on head_dim, untouched
        elif name.endswith("norm.weight") or (module.endswith(OUT_ROWS) and name.endswith("bias")):
            sd[name] = w[idx]
        elif module.endswith(OUT_ROWS):
            sd[name] = w[idx, :]
        elif name.endswith("weight") and w.dim() == 2:  # q, k, v, gate, up, embedding, head: input columns
            sd[name] = w[:, idx]
        else:
            sd[name] = w  # q/k/v biases
    pruned.load_state_dict(sd, strict=False)
    if not cfg.tie_word_embeddings:
        assert torch.equal(pruned.lm_head.weight, sd["lm_head.weight"])
    return pruned.eval()


@pytest.mark.parametrize("family, tied, tie_proj", [("llama", True, True), ("qwen2", False, False),
                                                     ("qwen3", False, True), ("gemma2", True, True),
                                                     ("gemma3_text", True, False)])
def test_activation_init_is_the_width_pruned_teacher(family, tied, tie_proj):
    teacher = tiny_teacher(family, tied=tied, layers=2)
    lrc = LRCConfig(target_hidden_size=24, tie_word_emb_proj=tie_proj, proj_init="activation",
                    target_rms_norm_eps=teacher.config.rms_norm_eps)
    model = LRCModel(teacher, lrc)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    importance, seen = channel_importance(teacher, [(ids, None)], model.kept_layers, max_tokens=30)
    assert seen == 30 and importance.shape == (64,)
    channels = select_channels(importance, 24)
    apply_channel_selection(model.projections, channels, teacher)
    with torch.no_grad():
        got = model.student_logits(ids)
        want = hand_pruned(teacher, channels, teacher.config.rms_norm_eps)(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-5
    assert not torch.allclose(got, teacher(input_ids=ids).logits, atol=1e-2)  # it really is pruned


def test_calibration_is_deterministic_and_ties_go_to_the_lower_channel():
    teacher = tiny_teacher("llama", layers=2)
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0  # padding is not counted
    a, n = channel_importance(teacher, [(ids, mask)], [0, 1], max_tokens=10_000)
    b, _ = channel_importance(teacher, [(ids[:, :9], None)], [0, 1], max_tokens=10_000)
    assert n == 36 and torch.allclose(a, b, rtol=1e-5)  # the masked tail changes nothing (fp32 model)
    assert torch.equal(a, channel_importance(teacher, [(ids, mask)], [0, 1], max_tokens=10_000)[0])
    assert select_channels(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 2) == [1, 2]
    assert select_channels(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 3) == [1, 2, 4]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def test_training_with_activation_init_records_and_resumes_bitwise(assets, tmp_path, capsys):
    over = dict(proj_init="activation", calib_tokens=64, max_steps=4, save_steps=2, batch_size=2)
    train(assets, tmp_path / "one", **over)
    record = json.loads((tmp_path / "one" / "run_config.json").read_text())["proj_init"]
    assert len(record["channels"]) == 32 and record["calib_tokens"] == 64  # 2 whole sequences of 32
    assert json.loads((tmp_path / "one" / "lrc_config.json").read_text())["lrc"]["proj_init"] == "activation"
    assert "activation-aware init: the student starts as the teacher pruned to its 32" in capsys.readouterr().out
    train(assets, tmp_path / "two", trainer_cls=stop_at(2), **over)
    assert newest_complete_checkpoint(tmp_path / "two")[0].name == "checkpoint-2"
    train(assets, tmp_path / "two", resume="auto", **over)
    # the resumed run's record (final outputs and its checkpoints) still says where the student started
    for rc in (tmp_path / "two" / "run_config.json", tmp_path / "two" / "checkpoint-4" / "run_config.json"):
        assert json.loads(rc.read_text())["proj_init"] == record
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in train_logs(tmp_path / "one")] == [h["loss"] for h in train_logs(tmp_path / "two")]
    # the same calibration gives the same start: a third run's first loss is the first run's
    train(assets, tmp_path / "three", **{**over, "max_steps": 1})
    assert train_logs(tmp_path / "three")[0]["loss"] == train_logs(tmp_path / "one")[0]["loss"]


def test_activation_init_refuses_a_second_starting_point(assets, tmp_path):
    flags = base_flags(assets, tmp_path / "o", proj_init="activation", init_from=str(tmp_path))
    with pytest.raises(hf_trainer.FlagError, match="--proj_init activation and --init_from both choose"):
        hf_trainer.parse_flags(flags)
