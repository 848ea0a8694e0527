"""Continued pre-training data: documents -> one stream with end-of-text tokens -> blocks that cover every
token exactly once, nothing truncated; .txt files and folders are read; non-text data is refused."""

from __future__ import annotations

import itertools
import json

import pytest

from honing.config import build_config
from honing.data.conversation import RawText, chat
from honing.errors import DataError
from honing.train.cpt import CPTObjective, blocks, read_raw_documents, source_sha256, token_stream


@pytest.mark.parametrize("n,size", [(1, 4), (2, 2), (10, 4), (11, 4), (12, 4), (100, 7), (7, 64)])
def test_blocks_predict_every_token_exactly_once(n, size):
    stream = list(range(1000, 1000 + n))
    out = blocks(stream, size)
    assert all(1 <= len(b) <= size for b in out)
    # Targets of a block are its tokens after the first; together they are stream[1:], each once, in order.
    targets = [t for b in out for t in b[1:]]
    assert targets == stream[1:]
    # Inputs cover every token; consecutive blocks share exactly one token.
    assert out[0][0] == stream[0] if n > 1 else out == []
    assert all(a[-1] == b[0] for a, b in itertools.pairwise(out))


def test_blocks_control_without_overlap_would_miss_targets():
    # Plain chunking (no overlap) never predicts each block's first token: the check above would fail.
    stream = list(range(10))
    plain = [stream[i : i + 4] for i in range(0, 10, 4)]
    assert [t for b in plain for t in b[1:]] != stream[1:]


def test_stream_separates_documents_with_eos(smol_tokenizer):
    docs = [RawText("The pump is primed."), RawText("Close valve B first.")]
    stream = token_stream(smol_tokenizer, docs)
    eos = smol_tokenizer.eos_token_id
    assert stream.count(eos) == 2 and stream[-1] == eos
    first = smol_tokenizer("The pump is primed.", add_special_tokens=False)["input_ids"]
    assert stream[: len(first) + 1] == first + [eos]


def test_render_set_blocks_cover_all_text(smol_tokenizer):
    docs = [RawText(f"Document {i}: " + "maintenance procedure step " * (5 + i), line=i) for i in range(1, 6)]
    cfg = build_config(values={"data": "x", "objective": "cpt", "cpt.block_size": 16})
    rs = CPTObjective(cfg).render_set(smol_tokenizer, docs, "x", "sha")
    stream = token_stream(smol_tokenizer, docs)
    assert rs.source["trained_tokens"] == len(stream) - 1
    assert sum(CPTObjective(cfg).normalizer(it) for it in rs.items) == len(stream) - 1
    assert [t for it in rs.items for t in it.input_ids[1:]] == stream[1:]
    assert all(len(it) <= 16 for it in rs.items) and not rs.warnings


def test_cpt_refuses_chat_examples(smol_tokenizer):
    cfg = build_config(values={"data": "x", "objective": "cpt"})
    with pytest.raises(DataError, match=r"d.jsonl line 3: objective 'cpt' needs raw text"):
        CPTObjective(cfg).render_set(smol_tokenizer, [chat(("user", "a"), ("assistant", "b"), line=3)], "d.jsonl", "s")


def test_read_txt_file_and_folder(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text("second doc")
    (tmp_path / "corpus" / "a.md").write_text("first doc")
    (tmp_path / "corpus" / "sub" / "c.txt").write_text("third doc")
    (tmp_path / "corpus" / "empty.txt").write_text("  \n")
    (tmp_path / "corpus" / "skip.json").write_text(json.dumps({"text": "not read"}))
    docs = read_raw_documents(tmp_path / "corpus")
    assert [d.text for d in docs] == ["first doc", "second doc", "third doc"]
    one = read_raw_documents(tmp_path / "corpus" / "b.txt")
    assert [d.text for d in one] == ["second doc"]
    before = source_sha256(tmp_path / "corpus")
    (tmp_path / "corpus" / "b.txt").write_text("second doc, edited")
    assert source_sha256(tmp_path / "corpus") != before
    (tmp_path / "bad.txt").write_bytes(b"ok \xff bad")
    with pytest.raises(DataError, match="bad.txt: byte 3 is not valid UTF-8"):
        read_raw_documents(tmp_path / "bad.txt")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no .txt or .md files"):
        read_raw_documents(tmp_path / "none")
