"""Training diagnostics (lrc.diagnostics): effective rank against an independent computation, condition
numbers, and their presence in a run's logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import VOCAB, tiny_teacher
from trainer_helpers import make_assets, train, train_logs

from lrc.config import LRCConfig
from lrc.diagnostics import condition_numbers, effective_rank, hidden_state_ranks, projection_condition_summary
from lrc.model import LRCModel


def _erank_numpy(h: np.ndarray) -> float:  # Roy & Vetterli (2007), written independently
    s = np.linalg.svd(h, compute_uv=False)
    p = s[s > 0] / s[s > 0].sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank_matches_numpy_and_known_cases():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 12, generator=g) @ torch.diag(torch.logspace(0, -3, 12))
    assert effective_rank(h) == pytest.approx(_erank_numpy(h.double().numpy()), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(40, 5, generator=g, dtype=torch.float64))
    assert effective_rank(q * 3.0) == pytest.approx(5.0, rel=1e-9)  # 5 equal singular values
    two = torch.diag(torch.tensor([3.0, 1.0]))
    assert effective_rank(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_condition_numbers():
    w = torch.diag(torch.tensor([4.0, 2.0, 0.5]))
    wide = torch.cat([w, torch.zeros(3, 4)], dim=1)  # 3 x 7: the smaller Gram is 3 x 3
    got = condition_numbers({"a": w, "b": wide, "c": wide.t()})
    assert got == pytest.approx({"a": 8.0, "b": 8.0, "c": 8.0}, rel=1e-9)
    assert condition_numbers({"z": torch.zeros(2, 2)})["z"] == float("inf")


def test_model_diagnostics_keys_and_values():
    m = LRCModel(tiny_teacher("qwen2", tied=False, layers=3), LRCConfig(target_hidden_size=16))
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    r = hidden_state_ranks(m, ids, mask)
    assert set(r) == {"erank-student-mid", "erank-teacher-mid", "erank-student-final", "erank-teacher-final"}
    assert 1.0 <= r["erank-student-final"] <= 15 and 1.0 <= r["erank-teacher-final"] <= 15  # 15 real tokens
    c = projection_condition_summary(m)
    assert set(c) == {f"cond-{k}-max" for k in ("q", "k", "v", "o", "gate", "up", "down", "embed")} | \
        {"cond-median"}
    assert all(v >= 1.0 for v in c.values())


def test_diagnostics_are_logged_every_n_steps(tmp_path):
    assets = make_assets(tmp_path / "assets")
    train(assets, tmp_path / "run", max_steps=4, save_steps=4, diagnostics_steps=2, log_steps=1)
    logs = train_logs(tmp_path / "run")
    with_diag = [h["step"] for h in logs if "erank-student-final" in h]
    assert with_diag == [2, 4] and all("cond-median" in h for h in logs if h["step"] in (2, 4))
