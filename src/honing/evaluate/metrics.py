"""Task metrics on (prediction, reference) strings, built on the field's libraries.

* normalized exact match and token F1 follow SQuAD's official script (lowercase, strip punctuation,
  the articles a/an/the and extra whitespace; F1 over the bag of normalized tokens);
* classification: ``sklearn.metrics`` accuracy, macro-F1 and confusion matrix over the label set;
* free text: ROUGE-L (``rouge_score``) and chrF (``sacrebleu``);
* JSON: validity (``json.loads``), equality of the parsed values, and JSON-schema conformance
  (``jsonschema``) when a schema is given.

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

from honing.errors import ConfigError

TASKS = ("classification", "json", "text")
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


PRIMARY = {"classification": "accuracy", "json": "json_match", "text": "rouge_l"}


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    task: str,
    schema: dict | None = None,
    labels: Sequence[str] | None = None,
) -> TaskScores:
    """All metrics for ``task`` ('classification' | 'json' | 'text'); see the module docstring."""
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
    else:
        per["rouge_l"] = [rouge_l(p, r) for p, r in zip(predictions, references)]
        summary["chrf"] = chrf(predictions, references)
    for name, values in per.items():
        summary.setdefault(name, sum(values) / len(values) if values else 0.0)
    return TaskScores(task, PRIMARY[task], summary, per, out_labels, confusion)
