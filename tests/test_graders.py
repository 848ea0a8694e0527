"""OpenAI grader objects evaluated by Honing: validation (a table of malformed graders), templates, each
metric against its library on fixed strings, multi formulas, the judge's score parsing, the response
shape against the official client's model, and `hone grade`."""

from __future__ import annotations

import json
import math

import pytest
from openai.types.fine_tuning.alpha import GraderRunResponse
from openai.types.graders import StringCheckGrader as OpenAIStringCheck
from openai.types.graders import TextSimilarityGrader as OpenAITextSimilarity
from typer.testing import CliRunner

from honing.cli import app
from honing.graders import GraderError, Sample, load_grader, run_result_json
from honing.graders.formula import Formula
from honing.graders.judge import parse_score
from honing.graders.text import wordnet_available


def check(op="eq", input="{{sample.output_text}}", reference="{{item.answer}}", name="match"):
    return {"type": "string_check", "name": name, "input": input, "reference": reference, "operation": op}


def similarity(metric, name="sim"):
    return {"type": "text_similarity", "name": name, "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "evaluation_metric": metric}


def multi(formula, graders=None):
    return {"type": "multi", "name": "combo", "calculate_output": formula,
            "graders": graders or {"a": check(name="a"), "b": similarity("rouge_l", name="b")}}


MALFORMED = [
    ("not an object", [1, 2], "grader: must be a JSON object"),
    ("no type", {"name": "x"}, "type: required"),
    ("unknown type", {"type": "regex", "name": "x"}, "type: 'regex' is not one of string_check, text_similarity"),
    ("label_model", {"type": "label_model", "name": "x"}, "'label_model' is not supported"),
    ("bad operation", check(op="eqq"), "operation: 'eqq' is not one of eq, ne, like, ilike"),
    ("missing reference", {k: v for k, v in check().items() if k != "reference"}, "reference: required"),
    ("unknown key", {**check(), "refrence": "x"}, "refrence: unknown key"),
    ("empty field", check(reference="{{item.}}"), "reference: template '{{item.}}': expected item.<field>"),
    ("bad namespace", check(reference="{{foo.x}}"), "namespace 'foo' is not one of item, sample"),
    ("bare namespace", check(reference="{{item}}"), "expected item.<field>"),
    ("unclosed", check(reference="{{item.answer"), "'{{' without a closing '}}'"),
    ("unknown sample field", check(input="{{sample.text}}"), "sample has no field 'text'"),
    ("template not a string", check(reference=3), "reference: must be a string"),
    ("bad metric", similarity("bleurt"), "evaluation_metric: 'bleurt' is not one of fuzzy_match"),
    ("formula names a missing grader", multi("a + c"), "calculate_output: 'c' is not one of the graders (a, b)"),
    ("attribute access", multi("a.__class__"), "calculate_output: attribute access ('a.__class__')"),
    ("call to open", multi("open('x')"), "'open' is not an allowed function"),
    ("dunder import", multi("__import__('os')"), "'__import__' is not an allowed function"),
    ("subscript", multi("a[0]"), "a subscript ('a[0]') is not allowed"),
    ("lambda", multi("(lambda: 1)()"), "not an allowed function"),
    ("comparison", multi("a > b"), "('a > b') is not allowed"),
    ("string constant", multi("'1' + a"), "the constant '1' is not a number"),
    ("syntax", multi("a +* b"), "is not an arithmetic expression"),
    ("keyword argument", multi("max(a, b, key=a)"), "max() takes plain arguments only"),
    ("arity", multi("sqrt(a, b)"), "sqrt() takes 1 argument(s), not 2"),
    ("nested multi", multi("a", {"a": multi("x", {"x": check(name="x")})}), "graders.a: a multi grader cannot"),
    ("sub-grader error has its path", multi("a", {"a": check(op="eqq")}),
     "graders.a.operation: 'eqq' is not one of eq, ne, like, ilike"),
    ("python without grade()", {"type": "python", "name": "p", "source": "def score(s, i):\n    return 1\n"},
     "source: defines no top-level function grade(sample, item)"),
    ("python syntax error", {"type": "python", "name": "p", "source": "def grade(s, i)\n    return 1\n"},
     "source: line 1"),
    ("judge model unknown", {"type": "score_model", "name": "j", "model": "gpt-4o-2024-08-06",
                             "input": [{"role": "user", "content": "x"}]}, "model: 'gpt-4o-2024-08-06' is not a model"),
    ("judge bad range", {"type": "score_model", "name": "j", "model": "smollm2-135m-instruct", "range": [1, 0],
                         "input": [{"role": "user", "content": "x"}]}, "range: must be two finite numbers"),
    ("judge image input", {"type": "score_model", "name": "j", "model": "smollm2-135m-instruct",
                           "input": [{"role": "user", "content": {"type": "input_image", "image_url": "x"}}]},
     "content of type 'input_image' is not supported"),
    ("judge bad sampling", {"type": "score_model", "name": "j", "model": "smollm2-135m-instruct",
                            "sampling_params": {"max_completions_tokens": 0},
                            "input": [{"role": "user", "content": "x"}]},
     "sampling_params.max_completions_tokens: must be an integer from 1 to 4096"),
]


@pytest.mark.parametrize("spec,fragment", [(s, f) for _, s, f in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_graders_are_refused_with_where_and_what(spec, fragment):
    with pytest.raises(GraderError) as info:
        load_grader(spec)
    assert fragment in str(info.value)


def test_path_prefix_for_callers():
    with pytest.raises(GraderError, match=r"^method\.reinforcement\.grader\.graders\.a\.operation: 'x'"):
        load_grader(multi("a", {"a": check(op="x")}), path="method.reinforcement.grader")


def test_string_check_operations():
    samples = [Sample("Paris", {"answer": "Paris"}), Sample("In Paris.", {"answer": "Paris"}),
               Sample("in paris", {"answer": "Paris"}), Sample("London", {"answer": "Paris"})]
    expected = {"eq": [1, 0, 0, 0], "ne": [0, 1, 1, 1], "like": [1, 1, 0, 0], "ilike": [1, 1, 1, 0]}
    for op, rewards in expected.items():
        assert [r.reward for r in load_grader(check(op=op)).grade(samples)] == rewards, op


def test_templates_nested_paths_json_and_missing_fields():
    g = load_grader(check(input="{{sample.output_json.city}}/{{item.meta.tags[1]}}/{{item.meta.tags.0}}",
                          reference="{{item.expected}}"))
    assert g.item_fields() == {"meta", "expected"}
    item = {"meta": {"tags": ["x", 7]}, "expected": "Oslo/7/x"}
    ok, not_json, missing = g.grade([Sample('{"city": "Oslo"}', item), Sample("Oslo", item),
                                     Sample('{"city": "Oslo"}', {"expected": "x"})])
    assert ok.reward == 1.0 and not ok.errors
    assert not_json.reward == 0.0 and not_json.metadata["errors"]["sample_parse_error"]
    assert "not JSON" in not_json.errors[0]
    assert missing.reward == 0.0 and missing.metadata["errors"]["invalid_variable_error"]
    assert "item has no field 'meta'" in missing.errors[0]


def test_non_string_item_values_render_as_json():
    g = load_grader(check(reference="{{item.n}} {{item.obj}}"))
    (r,) = g.grade([Sample('3 {"a":[1,2]}', {"n": 3, "obj": {"a": [1, 2]}})])
    assert r.reward == 1.0


HYP, REF = "The quick brown fox jumps over the lazy dog.", "A quick brown fox jumped over a lazy dog!"


def _library_values() -> dict:
    import sacrebleu
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.gleu_score import sentence_gleu
    from rapidfuzz import fuzz, utils
    from rouge_score import rouge_scorer

    values = {
        "fuzzy_match": fuzz.WRatio(HYP, REF, processor=utils.default_process) / 100,
        "bleu": sacrebleu.sentence_bleu(HYP, [REF]).score / 100,
        "gleu": sentence_gleu([wordpunct_tokenize(REF)], wordpunct_tokenize(HYP)),
    }
    for n in range(1, 6):
        values[f"rouge_{n}"] = rouge_scorer.RougeScorer([f"rouge{n}"], use_stemmer=True).score(REF, HYP)[
            f"rouge{n}"].fmeasure
    values["rouge_l"] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(REF, HYP)["rougeL"].fmeasure
    return values


def test_metrics_equal_their_libraries_on_fixed_strings():
    expected = _library_values()
    for metric, value in expected.items():
        (r,) = load_grader(similarity(metric)).grade([Sample(HYP, {"answer": REF})])
        assert r.reward == pytest.approx(value, abs=1e-9), metric
        assert 0.0 < r.reward < 1.0, metric  # the strings differ and overlap: no degenerate 0 or 1
    # Golden numbers, so a library update that changes a metric is noticed.
    assert expected["bleu"] == pytest.approx(0.2056, abs=1e-3)
    assert expected["rouge_l"] == pytest.approx(0.7778, abs=1e-3)
    (same,) = load_grader(similarity("bleu")).grade([Sample(REF, {"answer": REF})])
    assert same.reward == pytest.approx(1.0)


@pytest.mark.slow  # loads sentence-transformers and the MiniLM model
def test_cosine_uses_the_shipped_minilm():
    from honing.evaluate.embeddings import embed

    samples = [Sample("The cat sat on the mat.", {"answer": "A cat was sitting on the mat."}),
               Sample("Quarterly revenue grew 4%.", {"answer": "A cat was sitting on the mat."})]
    close, far = load_grader(similarity("cosine")).grade(samples)
    vectors = embed([s.output_text for s in samples] + [s.item["answer"] for s in samples])
    assert close.reward == pytest.approx(float(vectors[0] @ vectors[2]), abs=1e-5)
    assert close.reward > 0.7 > far.reward


def test_meteor_needs_wordnet():
    if wordnet_available():
        from nltk.tokenize import wordpunct_tokenize
        from nltk.translate.meteor_score import meteor_score

        (r,) = load_grader(similarity("meteor")).grade([Sample(HYP, {"answer": REF})])
        assert r.reward == pytest.approx(meteor_score([wordpunct_tokenize(REF)], wordpunct_tokenize(HYP)))
    else:
        with pytest.raises(GraderError, match=r"evaluation_metric: 'meteor' needs NLTK's WordNet data"):
            load_grader(similarity("meteor"))


def test_multi_combines_sub_rewards_and_reports_them():
    g = load_grader(multi("0.25 * a + 0.75 * min(b, 1) ^ 2"))
    r_exact, r_partial = g.grade([Sample("Paris", {"answer": "Paris"}), Sample("city of Paris", {"answer": "Paris"})])
    assert r_exact.reward == pytest.approx(1.0)
    assert r_partial.metadata["scores"] == r_partial.sub_rewards
    b = r_partial.sub_rewards["b"]
    assert r_partial.sub_rewards["a"] == 0.0 and r_partial.reward == pytest.approx(0.75 * b ** 2)
    assert g.item_fields() == {"answer"}


def test_multi_with_one_grader_object_as_the_openai_client_types_it():
    g = load_grader({"type": "multi", "name": "m", "calculate_output": "2 * exact", "graders": check(name="exact")})
    (r,) = g.grade([Sample("x", {"answer": "x"})])
    assert r.reward == 2.0 and r.sub_rewards == {"exact": 1.0}


def test_multi_sub_grader_error_scores_it_zero_and_is_reported():
    g = load_grader(multi("a + b", {"a": check(name="a"), "b": check(name="b", reference="{{item.other}}")}))
    (r,) = g.grade([Sample("x", {"answer": "x"})])
    assert r.reward == 1.0 and r.sub_rewards == {"a": 1.0, "b": 0.0}
    assert r.metadata["errors"]["invalid_variable_error"]


@pytest.mark.parametrize("formula,value", [("log(a)", "ValueError"), ("a / b", "ZeroDivisionError"),
                                           ("(0 - 8) ** 0.5", "not a real number"), ("exp(1000)", "OverflowError"),
                                           ("10 ** 10 ** 10", "OverflowError")])
def test_formula_runtime_errors_score_zero(formula, value):
    g = load_grader(multi(formula, {"a": check(name="a"), "b": check(name="b")}))
    (r,) = g.grade([Sample("x", {"answer": "y"})])
    assert r.reward == 0.0 and math.isfinite(r.reward)
    assert r.metadata["errors"]["other_error"] and value in r.errors[0]


def test_formula_whitelist_functions():
    f = Formula("max(a, b) + min(a, b, 0.5) - abs(-a) + floor(1.7) + ceil(0.2) + sqrt(4) + exp(0) + log(e1, 2)",
                ["a", "b", "e1"], "calculate_output")
    assert f.evaluate({"a": 0.25, "b": 0.75, "e1": 8.0}) == pytest.approx(0.75 + 0.25 - 0.25 + 1 + 1 + 2 + 1 + 3)


@pytest.mark.parametrize("reply,score", [
    ("0.8", 0.8), ('{"score": 0.3, "reason": "ok"}', 0.3), ('```json\n{"result": 1}\n```', 1.0),
    ("The answer mentions 2 facts. Score: 0.5", 0.5), ("Rating = 7/10", 7.0), ("I'd give it 4 out of 5", 4.0),
    ("no idea", None), ("score: nan", None),
])
def test_judge_score_parsing(reply, score):
    assert parse_score(reply) == score


def test_result_matches_the_official_clients_response_model():
    (r,) = load_grader(multi("a * b")).grade([Sample("Paris", {"answer": "Paris"})])
    body = run_result_json(r)
    parsed = GraderRunResponse.model_validate(body)
    assert parsed.reward == 1.0 and parsed.metadata.scores == {"a": 1.0, "b": 1.0}
    assert parsed.metadata.errors.formula_parse_error is False
    assert json.loads(json.dumps(body)) == body  # plain JSON
    # The grader objects of this file are valid for OpenAI's client too.
    OpenAIStringCheck.model_validate(check())
    OpenAITextSimilarity.model_validate(similarity("rouge_l"))


def test_hone_grade_cli(tmp_path):
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(multi("0.5 * a + 0.5 * b")))
    rows = [{"model_sample": "Paris", "item": {"answer": "Paris"}},
            {"model_sample": "Rome", "item": {"answer": "Paris"}}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    out = runner.invoke(app, ["grade", "--grader", str(grader), "--samples", str(samples), "--json"])
    assert out.exit_code == 0, out.output
    results = [GraderRunResponse.model_validate(x) for x in json.loads(out.stdout)]
    assert [x.reward for x in results] == [1.0, 0.0]
    readable = runner.invoke(app, ["grade", "--grader", str(grader), "--samples", str(samples)])
    assert readable.exit_code == 0 and "reward 1.0000" in readable.stdout and "a=0.0000" in readable.stdout
    valid = runner.invoke(app, ["grade", "--grader", str(grader), "--validate"])
    assert valid.exit_code == 0 and "valid multi grader 'combo'" in valid.stdout


def test_hone_grade_cli_errors_say_where(tmp_path):
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(check(op="eqq")))
    runner = CliRunner()
    out = runner.invoke(app, ["grade", "--grader", str(grader), "--validate"])
    assert isinstance(out.exception, GraderError)
    assert str(out.exception) == f"{grader}: operation: 'eqq' is not one of eq, ne, like, ilike"
    grader.write_text(json.dumps(check()))
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"model_sample": "x", "item": {"answer": "x"}}\n\n{"model_sample": 1}\n{"item": {}}\n'
                       '{"model_sample": "y", "item": {"other": 1}}\n')
    out = runner.invoke(app, ["grade", "--grader", str(grader), "--samples", str(samples)])
    message = str(out.exception)
    assert f"{samples}:3: model_sample: required" in message
    assert f"{samples}:4: model_sample: required" in message
    assert f"{samples}:5: item has no field 'answer'" in message


@pytest.mark.slow
def test_score_model_with_the_embedded_judge():
    spec = {"type": "score_model", "name": "judge", "model": "smollm2-135m-instruct", "range": [0, 10],
            "sampling_params": {"max_completions_tokens": 6},
            "input": [{"role": "system", "content": "Rate the answer from 0 to 10. Reply with the number only."},
                      {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"}]}
    g = load_grader(spec)
    assert g.item_fields() == {"question"}
    with g:
        results = g.grade([Sample("Paris", {"question": "Capital of France?"}),
                           Sample("Paris", {"nope": 1})])
    first, missing = results
    assert 0.0 <= first.reward <= 10.0 and math.isfinite(first.reward)
    assert first.metadata["sampled_model_name"] == "smollm2-135m-instruct"
    assert first.metadata["token_usage"] > 0
    assert first.token_usage_per_model["smollm2-135m-instruct"]["completion_tokens"] <= 6
    assert first.errors == [] or first.metadata["errors"]["model_grader_parse_error"]
    assert missing.reward == 0.0 and missing.metadata["errors"]["invalid_variable_error"]
    GraderRunResponse.model_validate(run_result_json(first))
