"""lm-eval on a converted tiny student, offline, with a custom local multiple-choice task; scripts/eval.sh."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from students import converted_student

from lrc.after.harness import ALL_TASKS, PAPER_TASKS, TASKS, HarnessError, markdown_table, resolve_tasks, task_spec

REPO = Path(__file__).resolve().parents[1]
EVAL_SH = REPO / "scripts" / "eval.sh"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHON=sys.executable, **extra)
    return env


def _write_task(root: Path, n: int = 12) -> Path:
    """A custom multiple-choice task: YAML with ``dataset_path: json`` over a local jsonl of tiny-vocabulary words."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"question": " ".join(f"w{rng.randrange(3, 90)}" for _ in range(5)),
             "choices": [f"w{rng.randrange(3, 90)} w{rng.randrange(3, 90)}" for _ in range(3)], "label": i % 3}
            for i in range(n)]
    (root / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'tiny_mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    return root


def test_lm_eval_offline_on_converted_student(tmp_path):
    """scripts/eval.sh -> lm_eval.simple_evaluate on a converted student, custom task, no network."""
    student = converted_student(tmp_path)
    tasks = _write_task(tmp_path / "tasks")
    out = tmp_path / "eval"
    (tmp_path / "ref.json").write_text(json.dumps({"tiny_mc": 0.5}))
    (tmp_path / "heldout.txt").write_text(" ".join(f"w{i % 90 + 3}" for i in range(200)) + "\n")
    r = subprocess.run(["bash", str(EVAL_SH), str(student), "tiny_mc", "--fewshot", "0", "--include_path", str(tasks),
                        "--output_dir", str(out), "--device", "cpu", "--reference", str(tmp_path / "ref.json"),
                        "--heldout", str(tmp_path / "heldout.txt"), "--heldout_max_len", "32"],
                       capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "results.json").read_text())
    t = summary["tasks"]["tiny_mc"]
    assert t["metric"] == "acc" and 0.0 <= t["value"] <= 1.0 and t["stderr"] is not None
    assert set(t["metrics"]) >= {"acc", "acc_norm"} and t["num_fewshot"] == 0 and t["paper"] == 0.5
    raw = json.loads((out / "lm_eval_results.json").read_text())
    assert raw["results"]["tiny_mc"]["acc,none"] == t["value"]
    assert raw["n-samples"]["tiny_mc"]["effective"] == 12
    md = (out / "results.md").read_text()
    assert "| tiny_mc | acc |" in md and "| reference (%) |" in md and "50.00" in md
    assert "results written to" in r.stdout
    assert summary["heldout"]["tokens"] > 0 and summary["heldout"]["ppl"] > 1 and "Held-out perplexity" in md


def test_eval_sh_usage_on_bad_arguments():
    for args in ([], ["--fewshot", "5"]):
        r = subprocess.run(["bash", str(EVAL_SH), *args], capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error:") and "usage: scripts/eval.sh MODEL [TASKS|paper|all]" in r.stderr
    r = subprocess.run(["bash", str(EVAL_SH), "--help"], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout


def test_eval_sh_refuses_unknown_task(tmp_path):
    r = subprocess.run(["bash", str(EVAL_SH), str(tmp_path), "arc_easy,no_such_task"], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "unknown task 'no_such_task'" in err[0]
    assert all(t in err[0] for t in ALL_TASKS) and "paper, all" in err[0]


def test_task_lists_and_metrics(tmp_path):
    assert resolve_tasks("paper") == list(PAPER_TASKS) and len(PAPER_TASKS) == 9
    assert resolve_tasks("all") == list(ALL_TASKS) and len(ALL_TASKS) == 12
    assert set(PAPER_TASKS) < set(ALL_TASKS)
    assert resolve_tasks("piqa,truthfulqa,piqa") == ["piqa", "truthfulqa_mc2"]
    assert {t: task_spec(t).batch_size for t in ("boolq", "mmlu", "commonsense_qa", "sciq")} == \
        {"boolq": 8, "mmlu": 8, "commonsense_qa": 8, "sciq": 32}
    assert all(s.metric in ("acc", "acc_norm") for s in TASKS.values())
    with pytest.raises(HarnessError, match="known tasks: sciq"):
        resolve_tasks("nope")
    assert resolve_tasks("tiny_mc", include_path=str(_write_task(tmp_path / "t"))) == ["tiny_mc"]
    summary = {"model": "m", "num_fewshot": 0, "limit": None, "lm_eval_version": "x", "average": 0.5,
               "tasks": {"arc_easy": {"metric": "acc_norm", "value": 0.5, "stderr": 0.01, "paper": None}}}
    md = markdown_table(summary)
    assert "| arc_easy | acc_norm | 50.00 | 1.00 | – |" in md and "no published number for these tasks" in md


def test_the_paper_column_is_the_published_table():
    """The paper's main-table numbers (arXiv 2505.12781) fill the reference column, for the row --paper_model picks."""
    from lrc.after.harness import PAPER_RESULTS, HarnessOptions, config_from_args

    assert set(PAPER_RESULTS["LRC-4B"]) == set(PAPER_TASKS)
    assert PAPER_RESULTS["LRC-4B"]["commonsense_qa"] == pytest.approx(0.7928)
    assert PAPER_RESULTS["Qwen3-4B"]["mmlu"] == pytest.approx(0.6838)
    avg = sum(PAPER_RESULTS["LRC-4B"].values()) / 9
    assert avg == pytest.approx(0.7030, abs=5e-5)  # the paper's average
    summary = {"model": "m", "num_fewshot": 0, "limit": None, "lm_eval_version": "x", "average": 0.5,
               "paper_model": "LRC-4B",
               "tasks": {"arc_easy": {"metric": "acc_norm", "value": 0.5, "stderr": 0.01,
                                      "paper": PAPER_RESULTS["LRC-4B"]["arc_easy"]}}}
    md = markdown_table(summary)
    assert "| arc_easy | acc_norm | 50.00 | 1.00 | 78.37 |" in md and "LRC-4B (teacher Qwen2.5-7B, 18B training" in md
    with pytest.raises(HarnessError, match="--paper_model 'LRC-9B'"):
        config_from_args(HarnessOptions(model="m", paper_model="LRC-9B"))


def test_harness_refuses_an_lrc_checkpoint(tmp_path, capsys):
    from lrc.after.harness import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "lrc_weights.safetensors").write_bytes(b"")
    assert main(["--model", str(tmp_path / "run"), "--tasks", "sciq"]) == 2
    assert "convert it first with python convert_ckpt.py" in capsys.readouterr().err
    # a run directory holding only checkpoint-N/ folders: LRC ones need conversion, a baseline's is a model
    (tmp_path / "run" / "lrc_weights.safetensors").unlink()
    ck = tmp_path / "run" / "checkpoint-4"
    ck.mkdir()
    (ck / "lrc_weights.safetensors").write_bytes(b"")
    assert main(["--model", str(tmp_path / "run"), "--tasks", "sciq"]) == 2
    assert "convert it first" in capsys.readouterr().err
    (ck / "lrc_weights.safetensors").unlink()
    (ck / "config.json").write_text("{}")
    assert main(["--model", str(tmp_path / "run"), "--tasks", "sciq"]) == 2
    assert f"pass --model {ck}" in capsys.readouterr().err
