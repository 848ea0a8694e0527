"""Few-shot selection, RAG chunking/retrieval, the verdict and the forgetting thresholds."""

from __future__ import annotations

import pytest
from eval_helpers import one_torch_thread  # noqa: F401

from honing.data.conversation import Message
from honing.errors import ConfigError, DataError
from honing.evaluate import baselines as B
from honing.evaluate.bootstrap import mean_ci
from honing.evaluate.dataset import EvalItem
from honing.evaluate.forgetting import (
    GeneralAbility,
    answer_contained,
    forgetting_verdict,
    general_questions,
    general_text,
)
from honing.evaluate.metrics import score
from honing.evaluate.runner import ApproachResult, compare

SYS = Message("system", "Answer with one word.")


def _item(question: str, answer: str, line: int = 1) -> EvalItem:
    return EvalItem((SYS, Message("user", question)), answer, line)


POOL = [
    _item("How do I bake sourdough bread at home?", "oven", 1),
    _item("What is the best way to train a puppy to sit?", "treats", 2),
    _item("Which tyres should I put on my road bike?", "slicks", 3),
    _item("How long should bread dough rise before baking?", "hours", 4),
    _item("My dog keeps barking at night, what can I do?", "walks", 5),
]


def test_few_shot_picks_the_most_similar_training_examples():
    items = [_item("How do I get a crusty loaf of bread from my oven?", "?"),
             _item("How can I stop my puppy from chewing shoes?", "?")]
    chosen = B.select_shots(items, POOL, k=2)
    assert sorted(chosen[0].tolist()) == [0, 3]  # the two bread questions
    assert sorted(chosen[1].tolist()) == [1, 4]  # the two dog questions
    prompts = B.few_shot_prompts(items, POOL, k=2)
    p = prompts[0]
    # system, (user, assistant) x 2, then the query; the most similar shot sits right before the query.
    assert [m.role for m in p] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert p[0] == SYS and p[-1].content == items[0].query
    assert p[3].content == POOL[chosen[0][0]].query and p[4].content == POOL[chosen[0][0]].reference


def test_few_shot_never_shows_the_evaluated_example_itself():
    item = POOL[2]
    chosen = B.select_shots([item], POOL, k=2)
    assert 2 not in chosen[0].tolist()
    with pytest.raises(DataError, match="training examples"):
        B.select_shots([item], [], k=2)


def test_chunking_and_rag_prompts(tmp_path):
    words = [f"w{i}" for i in range(200)]
    chunks = B.chunk_text(" ".join(words), "a.txt", words=80, overlap=20)
    # Windows start every 60 words: 0, 60, 120 (the last, 80 words, reaches the end).
    assert [c.text.split()[0] for c in chunks] == ["w0", "w60", "w120"]
    assert chunks[-1].text.split()[-1] == "w199" and all(len(c.text.split()) <= 80 for c in chunks)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bread.md").write_text("Sourdough bread needs a starter, flour, water and a hot oven for a crust.")
    (docs / "bikes.txt").write_text("Road bikes use narrow slick tyres inflated to high pressure.")
    (docs / "skip.pdf").write_text("not read")
    found = B.document_chunks(docs)
    assert sorted(c.source for c in found) == ["bikes.txt", "bread.md"]
    item = _item("What tyres suit a road bike?", "?")
    (prompt,) = B.rag_prompts([item], found, k=1)
    assert [m.role for m in prompt] == ["system", "user"]
    assert prompt[0].content.startswith(SYS.content) and "slick tyres" in prompt[0].content
    assert "Sourdough" not in prompt[0].content
    with pytest.raises(DataError, match="not a directory"):
        B.document_chunks(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt"):
        B.document_chunks(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown baseline"):
        B.check_baselines(["few-shot", "oracle"])


def _approach(name: str, correct: list[float]) -> ApproachResult:
    refs = ["yes"] * len(correct)
    preds = ["yes" if c else "no" for c in correct]
    s = score(preds, refs, "classification", labels=["yes", "no"])
    return ApproachResult(name, "base", s, preds, [10] * len(preds), 1.0, mean_ci(s.per_example["accuracy"]))


def test_verdict_names_a_significant_winner_and_calls_small_gaps_a_tie():
    winner, comps, verdict = compare([_approach("zero-shot", [1.0] * 10 + [0.0] * 40),
                                      _approach("fine-tuned", [1.0] * 45 + [0.0] * 5)], "accuracy")
    assert winner == "fine-tuned" and comps[0]["significant"]
    assert verdict.startswith("fine-tuned wins") and "+70.0 points" in verdict
    _, comps, verdict = compare([_approach("zero-shot", [1.0] * 25 + [0.0] * 25),
                                 _approach("few-shot", [1.0] * 26 + [0.0] * 24)], "accuracy")
    assert not comps[0]["significant"] and verdict.startswith("no clear winner")


def test_forgetting_thresholds():
    before = GeneralAbility(10.0, 0.80, [], [])
    assert not forgetting_verdict(before, GeneralAbility(11.9, 0.71, [], []))["flagged"]  # +19 %, -9 points
    v = forgetting_verdict(before, GeneralAbility(12.5, 0.80, [], []))
    assert v["flagged"] and "perplexity up +25%" in v["reasons"][0]
    v = forgetting_verdict(before, GeneralAbility(10.0, 0.60, [], []))
    assert v["flagged"] and "20.0 points" in v["reasons"][0]
    assert v["qa_accuracy_change"] == pytest.approx(-0.2)


def test_shipped_general_resources_and_answer_matching():
    assert len(general_text().split()) > 2500
    qs = general_questions()
    assert len(qs) == 40 and all(q["question"].endswith("?") and q["answer"] for q in qs)
    assert answer_contained("The capital of France is Paris.", "Paris") == 1.0
    assert answer_contained("It is 120.", "12") == 0.0  # whole words only
    assert answer_contained("Carbon dioxide, mostly.", "carbon dioxide") == 1.0


def test_thread_choice_is_one_or_the_default_and_restores_the_count():
    import torch

    from honing.threads import fastest_thread_count, torch_threads

    with torch_threads(2):  # (this module's autouse fixture set 1)
        assert fastest_thread_count(reps=3) in {1, 2}
        assert torch.get_num_threads() == 2
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
