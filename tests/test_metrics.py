"""Every evaluation metric against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import pytest

from honing.errors import ConfigError
from honing.evaluate import metrics as M
from honing.evaluate.bootstrap import mean_ci, paired_difference_ci


def test_normalize_answer_follows_squad():
    assert M.normalize_answer("  The Cat, sat!  on   a mat. ") == "cat sat on mat"
    assert M.normalize_answer("An apple") == "apple"
    # 'the' inside a word is not an article.
    assert M.normalize_answer("Theory") == "theory"


def test_exact_match():
    assert M.exact_match("  The PARIS. ", "paris") == 1.0
    assert M.exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_hand_computed():
    # pred -> [cat, sat, on, mat], ref -> [cat, on, mat]: 3 common; P = 3/4, R = 1; F1 = 2PR/(P+R) = 6/7.
    assert M.token_f1("the cat sat on the mat", "cat on a mat") == pytest.approx(6 / 7)
    # Repeated tokens count by multiplicity: pred [x, x, y], ref [x, y, y] -> common {x:1, y:1} = 2;
    # P = R = 2/3 -> F1 = 2/3.
    assert M.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert M.token_f1("dog", "cat") == 0.0
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("the", "cat") == 0.0  # pred normalizes to nothing


def test_rouge_l_hand_computed():
    # Tokens (stemmed): pred [the, cat, sat], ref [the, cat, was, sit]; LCS = [the, cat] = 2.
    # P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7.
    assert M.rouge_l("the cat sat", "the cat was sitting") == pytest.approx(4 / 7)
    assert M.rouge_l("a b c", "a b c") == pytest.approx(1.0)


def test_chrf_hand_computed():
    # sacrebleu chrF (char order 6, beta 2, effective-order averaging): 'ab' vs 'abc'.
    # 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; orders 3-6 have no hypothesis n-grams.
    # avgP = 1, avgR = (2/3 + 1/2)/2 = 7/12; F2 = 5 * 1 * 7/12 / (4 * 1 + 7/12) = 7/11.
    assert M.chrf(["ab"], ["abc"]) == pytest.approx(7 / 11)
    assert M.sentence_chrf("ab", "abc") == pytest.approx(7 / 11)
    assert M.chrf(["xyz"], ["abc"]) == 0.0


def test_json_metrics():
    assert M.json_valid('{"a": 1}') == 1.0
    assert M.json_valid('```json\n{"a": 1}\n```') == 1.0
    assert M.json_valid("{a: 1}") == 0.0
    # Key order and whitespace do not matter; values do.
    assert M.json_match('{"b": 2, "a": 1}', '{"a":1,"b":2}') == 1.0
    assert M.json_match('{"a": 1, "b": 3}', '{"a":1,"b":2}') == 0.0
    assert M.json_match("not json", '{"a": 1}') == 0.0
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    assert M.schema_valid('{"name": "x"}', schema) == 1.0
    assert M.schema_valid('{"name": 3}', schema) == 0.0
    assert M.schema_valid("nope", schema) == 0.0


def test_classification_accuracy_macro_f1_confusion():
    refs = ["cat", "dog", "cat", "bird"]
    preds = ["Cat.", "dog", "dog", "a fish"]
    s = M.score(preds, refs, "classification")
    # Mapped predictions: [cat, dog, dog, <other>] -> 2 of 4 right.
    assert s.labels == ["bird", "cat", "dog"]
    assert s.summary["accuracy"] == pytest.approx(0.5)
    # Per class F1: bird TP0 -> 0; cat TP1 FN1 -> P1 R1/2 F 2/3; dog TP1 FP1 -> P1/2 R1 F 2/3.
    # Macro = (0 + 2/3 + 2/3) / 3 = 4/9.
    assert s.summary["macro_f1"] == pytest.approx(4 / 9)
    # Rows = reference (bird, cat, dog), columns = predicted (bird, cat, dog, <other>).
    assert s.confusion == [[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert s.per_example["accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert s.primary == "accuracy"


def test_map_to_label_finds_the_single_named_label():
    labels = ["os", "logging", "xml"]
    assert M.map_to_label("The module is logging.", labels) == "logging"
    assert M.map_to_label("os or xml", labels) == "os or xml"  # ambiguous: stays a miss
    assert M.map_to_label("cosine", labels) == "cosine"  # 'os' only inside a word: no match


def test_text_and_json_scores():
    s = M.score(["the cat sat"], ["the cat was sitting"], "text")
    assert s.primary == "rouge_l"
    assert s.summary["rouge_l"] == pytest.approx(4 / 7)
    assert 0 < s.summary["chrf"] < 1
    j = M.score(['{"a": 1}', "oops"], ['{"a": 1}', '{"a": 2}'], "json", schema={"type": "object"})
    assert j.summary["json_valid"] == 0.5
    assert j.summary["json_match"] == 0.5
    assert j.summary["schema_valid"] == 0.5


def test_detect_task():
    assert M.detect_task(["yes", "no", "no", "yes", "maybe"]) == "classification"
    assert M.detect_task(['{"a": 1}', "[1, 2]"]) == "json"
    assert M.detect_task([f"a long free text answer number {i} about things" for i in range(5)]) == "text"
    # Every reference distinct: not a label set, even when short.
    assert M.detect_task(["one", "two", "three"]) == "text"
    with pytest.raises(ConfigError):
        M.detect_task([])
    with pytest.raises(ConfigError, match="unknown metric"):
        M.score(["a"], ["a"], "bleu")


def test_bootstrap_identical_predictions_give_zero_interval():
    a = [1.0, 0.0, 1.0, 1.0, 0.0] * 10
    ci = paired_difference_ci(a, a)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.excludes_zero


def test_bootstrap_clear_difference_excludes_zero_and_small_one_does_not():
    better = [1.0] * 45 + [0.0] * 5
    worse = [1.0] * 10 + [0.0] * 40
    ci = paired_difference_ci(better, worse, seed=1)
    assert ci.estimate == pytest.approx(0.7)
    assert ci.low > 0.5 and ci.high <= 0.9 and ci.excludes_zero
    # One example of difference in 50 is noise.
    a = [1.0] * 26 + [0.0] * 24
    b = [1.0] * 25 + [0.0] * 25
    assert not paired_difference_ci(a, b).excludes_zero
    with pytest.raises(ValueError):
        paired_difference_ci([1.0], [1.0, 0.0])


def test_mean_ci_brackets_the_mean_and_is_seeded():
    x = [0.0, 1.0] * 30
    ci = mean_ci(x)
    assert ci.low < 0.5 < ci.high
    assert ci == mean_ci(x)
    assert 0.3 < ci.low and ci.high < 0.7
