"""``string_check`` and ``text_similarity``: graders that compare two filled templates.

Every similarity metric is a library's own implementation (none is written here):

* ``fuzzy_match``: rapidfuzz ``fuzz.WRatio`` with ``utils.default_process`` (lower-case, strip
  punctuation), / 100, the fuzzy match of OpenAI's graders guide;
* ``bleu``: sacrebleu ``sentence_bleu`` (its default 13a tokenizer, exponential smoothing), / 100;
* ``gleu``: NLTK ``sentence_gleu`` over NLTK's ``wordpunct_tokenize`` tokens (needs no NLTK data);
* ``meteor``: NLTK ``meteor_score`` (needs NLTK's WordNet data; refused at load time without it);
* ``rouge_1`` .. ``rouge_5``, ``rouge_l``: rouge-score F-measure with Porter stemming (as ``hone eval``);
* ``cosine``: cosine similarity of the all-MiniLM-L6-v2 embeddings that ship with Honing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from honing.graders.base import Grader, check_keys, grader_name, one_of
from honing.graders.core import GraderError, GradeResult, Sample, where
from honing.graders.templates import parse_template

OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine",
           "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class StringCheckGrader(Grader):
    """Reward 1 when ``input`` <operation> ``reference`` holds, else 0. ``like`` is a case-sensitive
    substring test (reference inside input), ``ilike`` the same ignoring case."""

    type = "string_check"

    def __init__(self, spec: dict, path: str):
        check_keys(spec, path, ("input", "reference", "operation"))
        super().__init__(grader_name(spec, path))
        self.input = parse_template(spec["input"], where(path, "input"))
        self.reference = parse_template(spec["reference"], where(path, "reference"))
        self.operation = one_of(spec, path, "operation", OPERATIONS)

    def item_fields(self) -> set[str]:
        return self.input.item_fields() | self.reference.item_fields()

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        check = _CHECKS[self.operation]
        return self.grade_each(samples, (self.input, self.reference),
                               lambda rows: [float(check(a, b)) for a, b in rows])


_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.casefold() in a.casefold(),
}


class TextSimilarityGrader(Grader):
    """The similarity of ``input`` to ``reference`` under ``evaluation_metric`` (see the module doc).
    ``pass_threshold`` (the evals form of this grader) is accepted and does not change the reward."""

    type = "text_similarity"

    def __init__(self, spec: dict, path: str):
        check_keys(spec, path, ("input", "reference", "evaluation_metric"), ("pass_threshold",))
        super().__init__(grader_name(spec, path))
        self.input = parse_template(spec["input"], where(path, "input"))
        self.reference = parse_template(spec["reference"], where(path, "reference"))
        self.metric = one_of(spec, path, "evaluation_metric", METRICS)
        if self.metric == "meteor" and not wordnet_available():
            raise GraderError(
                f"{where(path, 'evaluation_metric')}: 'meteor' needs NLTK's WordNet data, which is not "
                "installed (no PyPI package ships it): run `python -m nltk.downloader wordnet` once on a "
                "machine with internet access, or choose another metric such as rouge_l or bleu")

    def item_fields(self) -> set[str]:
        return self.input.item_fields() | self.reference.item_fields()

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        metric = metric_function(self.metric)
        return self.grade_each(samples, (self.input, self.reference),
                               lambda rows: metric([a for a, _ in rows], [b for _, b in rows]))


def metric_function(name: str) -> Callable[[list[str], list[str]], list[float]]:
    """``f(inputs, references) -> scores`` for one ``evaluation_metric``."""
    if name.startswith("rouge_"):
        return functools.partial(_rouge, "rougeL" if name == "rouge_l" else f"rouge{name[-1]}")
    return {"fuzzy_match": _fuzzy, "bleu": _bleu, "gleu": _gleu, "meteor": _meteor, "cosine": _cosine}[name]


def _fuzzy(inputs: list[str], refs: list[str]) -> list[float]:
    from rapidfuzz import fuzz, utils

    return [fuzz.WRatio(a, b, processor=utils.default_process) / 100.0 for a, b in zip(inputs, refs, strict=True)]


def _bleu(inputs: list[str], refs: list[str]) -> list[float]:
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # sentence-level BLEU, as sacrebleu.sentence_bleu
    return [bleu.sentence_score(a, [b]).score / 100.0 for a, b in zip(inputs, refs, strict=True)]


def _gleu(inputs: list[str], refs: list[str]) -> list[float]:
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.gleu_score import sentence_gleu

    return [float(sentence_gleu([wordpunct_tokenize(b)], wordpunct_tokenize(a)))
            for a, b in zip(inputs, refs, strict=True)]


def _meteor(inputs: list[str], refs: list[str]) -> list[float]:
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import meteor_score

    return [float(meteor_score([wordpunct_tokenize(b)], wordpunct_tokenize(a)))
            for a, b in zip(inputs, refs, strict=True)]


@functools.lru_cache(maxsize=8)
def _rouge_scorer(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str, inputs: list[str], refs: list[str]) -> list[float]:
    scorer = _rouge_scorer(kind)
    return [scorer.score(b, a)[kind].fmeasure for a, b in zip(inputs, refs, strict=True)]


def _cosine(inputs: list[str], refs: list[str]) -> list[float]:
    from honing.evaluate.embeddings import embed
    from honing.quiet import quiet_libraries

    quiet_libraries()  # no weight-loading progress bar in the middle of `hone grade`'s output
    vectors = embed(list(inputs) + list(refs))  # L2-normalised: a dot product is the cosine
    n = len(inputs)
    return [float(min(1.0, max(-1.0, vectors[i] @ vectors[n + i]))) for i in range(n)]


@functools.lru_cache(maxsize=1)
def wordnet_available() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True
