"""Task metrics on (prediction, reference) strings, built on the field's libraries.

* normalized exact match and token F1 follow SQuAD's official script (lowercase, strip punctuation,
  the articles a/an/the and extra whitespace; F1 over the bag of normalized tokens);
* classification: ``sklearn.metrics`` accuracy, macro-F1 and confusion matrix over the label set;
* free text: ROUGE-L (``rouge_score``) and chrF (``sacrebleu``);
* JSON: validity (``json.loads``), equality of the parsed values, and JSON-schema conformance
  (``jsonschema``) when a schema is given;
* tool calls: the generated text parsed back into calls (``honing.data.tools.parse_tool_calls``) against
  the reference turn's ``tool_calls``: right functions, equal arguments as JSON, arguments valid under the
  tool's JSON schema, and the primary ``tool_call_exact`` (see :func:`tool_call_metrics`).

Every metric also has a per-example form (a list of floats in [0, 1]) so approaches can be compared
with a paired bootstrap over examples (see ``honing.evaluate.bootstrap``).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from honing.data.conversation import ToolCall, tool_name
from honing.data.tools import parse_tool_calls
from honing.errors import ConfigError

TASKS = ("classification", "json", "text", "tool_call")
# Above this many distinct reference values the answers are not treated as a label set.
MAX_LABELS = 20
# Labels are short: at most this many words for most (>= 90%) references.
MAX_LABEL_WORDS = 4

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between the normalized bags of words (1.0 when both are empty)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge_score, with Porter stemming), in [0, 1]."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, default chrF2), rescaled from 0-100 to [0, 1]."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(predictions), [list(references)]).score / 100.0


def sentence_chrf(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(prediction, [reference]).score / 100.0


def parse_json(text: str):
    """The JSON value in ``text`` (tolerating a ```json fence around it), or raise ValueError."""
    s = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", s, flags=re.DOTALL)
    if fence:
        s = fence.group(1)
    return json.loads(s)


def json_valid(prediction: str) -> float:
    try:
        parse_json(prediction)
    except ValueError:
        return 0.0
    return 1.0


def json_match(prediction: str, reference: str) -> float:
    """1 when both parse and the parsed values are equal (key order and whitespace do not matter)."""
    try:
        return float(parse_json(prediction) == parse_json(reference))
    except ValueError:
        return 0.0


def schema_valid(prediction: str, schema: dict) -> float:
    import jsonschema

    try:
        value = parse_json(prediction)
    except ValueError:
        return 0.0
    validator = jsonschema.validators.validator_for(schema)(schema)
    return float(validator.is_valid(value))


def map_to_label(prediction: str, labels: Sequence[str]) -> str:
    """The label a free-form prediction names: exact (normalized) match first, then the single label
    whose normalized text appears in the prediction; otherwise the prediction itself (an error)."""
    norm = normalize_answer(prediction)
    by_norm = {normalize_answer(lab): lab for lab in labels}
    if norm in by_norm:
        return by_norm[norm]
    contained = [lab for n, lab in by_norm.items() if n and re.search(rf"\b{re.escape(n)}\b", norm)]
    if len(contained) == 1:
        return contained[0]
    return prediction.strip()


def detect_task(references: Sequence[str]) -> str:
    """'classification' for a small set of short labels, 'json' when references parse as JSON objects
    or arrays, else 'text'."""
    if not references:
        raise ConfigError("cannot detect the task of an empty evaluation set")
    parsed = 0
    for r in references:
        try:
            if isinstance(parse_json(r), (dict, list)):
                parsed += 1
        except ValueError:
            pass
    if parsed >= 0.9 * len(references):
        return "json"
    distinct = {normalize_answer(r) for r in references}
    short = sum(len(r.split()) <= MAX_LABEL_WORDS for r in references)
    if len(distinct) <= MAX_LABELS and len(distinct) < len(references) and short >= 0.9 * len(references):
        return "classification"
    return "text"


@dataclass
class TaskScores:
    """Metrics of one approach on one evaluation set.

    ``per_example[name]`` holds one value in [0, 1] per example for every metric that decomposes over
    examples (these feed the bootstrap); ``summary`` holds every metric as one number; ``confusion``
    is the classification confusion matrix (rows = reference label, columns = predicted label, the
    last column ``<other>`` counts predictions that name no label).
    """

    task: str
    primary: str
    summary: dict[str, float]
    per_example: dict[str, list[float]]
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"task": self.task, "primary": self.primary, "summary": self.summary}
        if self.labels:
            d["labels"] = self.labels
            d["confusion_matrix"] = self.confusion
        return d


PRIMARY = {"classification": "accuracy", "json": "json_match", "text": "rouge_l", "tool_call": "tool_call_exact"}


def json_equal(a, b) -> bool:
    """Equality of parsed JSON values: object key order never matters, list order does, and true is not 1
    (Python's ``True == 1`` would say it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return _UNPARSABLE


_UNPARSABLE = object()  # never equal to any parsed value


def _matched(predicted: list[tuple[str, object]], reference: list[tuple[str, object]], with_args: bool) -> int:
    """How many reference calls a distinct predicted call matches (same name, and equal arguments when
    ``with_args``): a greedy one-to-one pairing, so the order of the calls does not matter."""
    left = list(predicted)
    hits = 0
    for name, args in reference:
        for i, (p_name, p_args) in enumerate(left):
            if p_name == name and (not with_args or (args is not _UNPARSABLE and p_args is not _UNPARSABLE
                                                     and json_equal(p_args, args))):
                del left[i]
                hits += 1
                break
    return hits


def _schema_ok(name: str, args, schemas: dict[str, dict | None]) -> bool:
    """Arguments are a JSON object valid under the named tool's ``parameters`` (a tool without parameters
    takes any object); a call to a function not among the tools is never valid."""
    import jsonschema

    if name not in schemas or not isinstance(args, dict):
        return False
    schema = schemas[name]
    return schema is None or jsonschema.validators.validator_for(schema)(schema).is_valid(args)


def tool_call_metrics(prediction: str, reference_calls: Sequence[ToolCall], tools: Sequence[dict]) -> dict[str, float]:
    """One example's tool-call scores, each in [0, 1].

    * ``tool_call_exact`` (primary): the predicted calls equal the reference calls *as a multiset* of
      (function, arguments) pairs: every call right, none missing, none extra. Order is not compared:
      OpenAI's parallel calls are independent and run in any order. A reference turn without calls
      (the model should answer in text) counts 1 only when the text holds no ``<tool_call>`` at all.
    * ``function_match``: the multiset of called function names equals the reference's.
    * ``arguments_match``: the share of reference calls that a distinct predicted call matches with the same
      name and arguments equal as JSON (parsed: key order and whitespace do not matter); extra calls do not
      lower it (``tool_call_exact`` counts them).
    * ``schema_valid``: the share of predicted calls whose arguments validate against their tool's JSON
      schema (a call to an unknown function is invalid); 0 when calls were expected and none was written,
      1 when none was expected and none was written.
    """
    parsed = parse_tool_calls(prediction)
    predicted = [(c["name"], _arguments(c["arguments"])) for c in parsed or []]
    reference = [(c.name, _arguments(c.arguments)) for c in reference_calls]
    if not reference:
        right = float(parsed is None)
        return {"tool_call_exact": right, "function_match": right, "arguments_match": right,
                "schema_valid": right if not predicted else 0.0}
    names_equal = sorted(n for n, _ in predicted) == sorted(n for n, _ in reference)
    full = _matched(predicted, reference, with_args=True)
    schemas = {tool_name(t): t["function"].get("parameters") for t in tools}
    valid = [_schema_ok(n, a, schemas) for n, a in predicted]
    return {
        "tool_call_exact": float(full == len(reference) == len(predicted)),
        "function_match": float(names_equal),
        "arguments_match": full / len(reference),
        "schema_valid": sum(valid) / len(valid) if valid else 0.0,
    }


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    task: str,
    schema: dict | None = None,
    labels: Sequence[str] | None = None,
    reference_calls: Sequence[Sequence[ToolCall]] | None = None,
    tools: Sequence[Sequence[dict]] | None = None,
) -> TaskScores:
    """All metrics for ``task`` ('classification' | 'json' | 'text' | 'tool_call'); see the module
    docstring. ``tool_call`` needs each example's ``reference_calls`` and ``tools``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if task not in TASKS:
        raise ConfigError(f"unknown metric/task '{task}': choose auto, {', '.join(TASKS)}")
    per: dict[str, list[float]] = {
        "exact_match": [exact_match(p, r) for p, r in zip(predictions, references)],
        "token_f1": [token_f1(p, r) for p, r in zip(predictions, references)],
    }
    summary: dict[str, float] = {}
    out_labels: list[str] = []
    confusion: list[list[int]] = []
    if task == "classification":
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

        out_labels = list(labels) if labels else sorted(set(references))
        mapped = [map_to_label(p, out_labels) for p in predictions]
        other = "<other>"
        pred_cls = [m if m in out_labels else other for m in mapped]
        per["accuracy"] = [float(p == r) for p, r in zip(pred_cls, references)]
        summary["accuracy"] = float(accuracy_score(references, pred_cls))
        # Macro-F1 over the true label set only: a prediction outside it costs recall but is no class.
        summary["macro_f1"] = float(
            f1_score(references, pred_cls, labels=out_labels, average="macro", zero_division=0)
        )
        confusion = confusion_matrix(references, pred_cls, labels=out_labels + [other]).tolist()[: len(out_labels)]
    elif task == "json":
        per["json_valid"] = [json_valid(p) for p in predictions]
        per["json_match"] = [json_match(p, r) for p, r in zip(predictions, references)]
        if schema is not None:
            per["schema_valid"] = [schema_valid(p, schema) for p in predictions]
    elif task == "tool_call":
        if reference_calls is None or len(reference_calls) != len(predictions):
            raise ValueError("the tool_call metric needs the reference calls of every example")
        rows = [tool_call_metrics(p, calls, ts) for p, calls, ts in
                zip(predictions, reference_calls, tools or [()] * len(predictions))]
        for name in ("tool_call_exact", "function_match", "arguments_match", "schema_valid"):
            per[name] = [r[name] for r in rows]
    else:
        per["rouge_l"] = [rouge_l(p, r) for p, r in zip(predictions, references)]
        summary["chrf"] = chrf(predictions, references)
    for name, values in per.items():
        summary.setdefault(name, sum(values) / len(values) if values else 0.0)
    return TaskScores(task, PRIMARY[task], summary, per, out_labels, confusion)
