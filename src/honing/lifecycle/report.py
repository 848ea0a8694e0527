"""Report files of the maintenance commands (compare, retrain, drift): JSON with every number, Markdown,
and one self-contained HTML page in the evaluation report's style (same stylesheet, inline PNG figures).
Every file is written atomically."""

from __future__ import annotations

import html
import json
from pathlib import Path

from honing.evaluate.report import _CSS, _figure, _md_cell, _png
from honing.fileio import write_text_atomic

e = html.escape


def short_value(v) -> str:
    """A value as a diff shows it: a sha256 fingerprint cut to 12 characters, anything else as is."""
    s = str(v)
    return s[:12] if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def _html_table(header: list[str], rows: list[list], row_classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            + ["| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows])


def _imgs(figs: list[str | None]) -> str:
    return "<div class='figs'>" + "".join(f"<img alt='figure' src='data:image/png;base64,{f}'>" for f in figs if f) + "</div>"


def _fmt(v, spec: str = "") -> str:
    return "?" if v is None else format(v, spec)


# --------------------------------------------------------------------------------------------- compare
def _approach_rows(c) -> list[list]:
    return [[r["name"], r["kind"], f"{r['value']:.3f}", f"[{r['ci']['low']:.3f}, {r['ci']['high']:.3f}]",
             f"{r['prompt_tokens']:.0f}", f"{r['s_per_example']:.3f}"] for r in c.table()]


def _difference_rows(c) -> list[list]:
    rows = []
    for d in c.differences:
        iv = d["difference"]
        rows.append([f"{d['a']} - {d['b']}", f"{iv['estimate']:+.3f}", f"[{iv['low']:+.3f}, {iv['high']:+.3f}]",
                     "yes" if d["significant"] else "no"])
    return rows


def _forgetting_rows(c) -> list[list]:
    rows = []
    for r in c.runs:
        f = r.result.forgetting
        if not f:
            rows.append([r.label, "not measured", "", "", "", ""])
            continue
        rows.append([r.label, f"{f['before']['perplexity']:.2f} -> {f['after']['perplexity']:.2f}",
                     f"{f['perplexity_change']:+.0%}", f"{f['before']['qa_accuracy']:.3f} -> {f['after']['qa_accuracy']:.3f}",
                     f"{f['qa_accuracy_change'] * 100:+.1f} points",
                     ("flagged: " + "; ".join(f["reasons"])) if f["flagged"] else "within thresholds"])
    return rows


def _cost_rows(c) -> list[list]:
    rows = []
    for r in c.runs:
        k = r.cost()
        rows.append([r.label, _fmt(k["wall_seconds"], ".0f"), _fmt(k["steps"]), _fmt(k["trained_tokens"], ","),
                     _fmt(k["trained_tokens_per_s"], ".1f"), _fmt(k["peak_memory_mb"], ".0f")])
    return rows


def _lineage_rows(c) -> list[list]:
    labels = [r.label for r in c.runs]
    diffs = {**c.lineage_differences, **c.config_differences}
    return [[key] + [short_value(values.get(lab)) for lab in labels] for key, values in diffs.items()]


FORGET_HEAD = ["run", "general-text perplexity", "change", "general QA accuracy", "change", "verdict"]
COST_HEAD = ["run", "wall seconds", "steps", "trained tokens", "trained tokens/s", "peak RSS MB"]
APPROACH_HEAD = ["approach", "kind", "metric", "95% CI", "mean prompt tokens", "s/example"]
DIFF_HEAD = ["difference", "estimate", "95% CI", "significant"]


def compare_bars_png(c) -> str:
    plt = _figure()
    rows = c.table()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 3.4))
    values = [r["value"] for r in rows]
    err = [[r["value"] - r["ci"]["low"] for r in rows], [r["ci"]["high"] - r["value"] for r in rows]]
    colors = ["#c44e52" if r["kind"] == "run" else "#4c72b0" for r in rows]
    ax.bar([r["name"] for r in rows], values, yerr=err, capsize=6, color=colors)
    ax.set_ylabel(c.primary)
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="x", rotation=20)
    ax.set_title(f"{c.primary}: runs (red) and baselines (blue), 95% bootstrap CI")
    return _png(fig)


def loss_curves_png(c) -> str | None:
    series = []
    for r in c.runs:
        pts = [(m["step"], m["eval_loss"]) for m in r.metrics if "step" in m and m.get("eval_loss") is not None]
        pts = pts or [(m["step"], m["train_loss"]) for m in r.metrics if "step" in m and m.get("train_loss") is not None]
        if pts:
            series.append((r.label, pts))
    if not series:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, pts in series:
        ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval loss (nats/token)")
    ax.legend()
    ax.set_title("training runs")
    return _png(fig)


def compare_markdown(c, level: int = 1) -> list[str]:
    h = "#" * level
    lines = [f"{h} Comparison of {', '.join(r.label for r in c.runs)}", "",
             (f"{c.n_examples} examples from `{c.eval_path}`; task **{c.task}**, primary metric **{c.primary}**. "
             f"Baselines on `{c.baselines_model}`."), ""]
    lines += _md_table(APPROACH_HEAD, _approach_rows(c))
    lines += ["", f"Paired bootstrap differences in {c.primary} (1000 resamples):", ""]
    lines += _md_table(DIFF_HEAD, _difference_rows(c))
    lines += ["", f"{h}# Forgetting", ""] + _md_table(FORGET_HEAD, _forgetting_rows(c))
    lines += ["", f"{h}# Training cost", ""] + _md_table(COST_HEAD, _cost_rows(c))
    rows = _lineage_rows(c)
    lines += ["", f"{h}# What differs in their lineage", ""]
    lines += _md_table(["key"] + [r.label for r in c.runs], rows) if rows else \
        ["Same base model, data and configuration."]
    return lines


def compare_html(c, level: int = 1) -> list[str]:
    h1, h2 = f"h{level}", f"h{level + 1}"
    cand = c.candidate.label
    classes = ["win" if r["name"] == cand else "" for r in c.table()]
    parts = [f"<{h1}>Comparison of {e(', '.join(r.label for r in c.runs))}</{h1}>",
             (f"<p>{c.n_examples} examples from <code>{e(c.eval_path)}</code>; task <b>{e(c.task)}</b>, primary "
             f"metric <b>{e(c.primary)}</b>. Baselines on <code>{e(c.baselines_model)}</code>; the candidate "
             f"(<b>{e(cand)}</b>) is highlighted.</p>"),
             _html_table(APPROACH_HEAD, _approach_rows(c), classes),
             f"<{h2}>Differences (paired bootstrap, 95% CI)</{h2}>", _html_table(DIFF_HEAD, _difference_rows(c)),
             _imgs([compare_bars_png(c), loss_curves_png(c)]),
             f"<{h2}>Forgetting</{h2}>", _html_table(FORGET_HEAD, _forgetting_rows(c)),
             f"<{h2}>Training cost</{h2}>", _html_table(COST_HEAD, _cost_rows(c)),
             f"<{h2}>What differs in their lineage</{h2}>"]
    rows = _lineage_rows(c)
    parts.append(_html_table(["key"] + [r.label for r in c.runs], rows) if rows else
                 "<p>Same base model, data and configuration.</p>")
    return parts


def write_compare_report(c, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "compare.json", json.dumps(c.to_dict(), indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", "\n".join(compare_markdown(c)) + "\n")
    write_text_atomic(out_dir / "report.html", _page("Honing comparison", compare_html(c)))


# --------------------------------------------------------------------------------------------- gate
def gate_markdown(verdict) -> list[str]:
    lines = [f"**Gate: {'PASSED' if verdict.passed else 'FAILED'}**", ""]
    lines += [f"- {'ok' if ch.passed else 'FAIL'} ({ch.name}): {ch.detail}" for ch in verdict.checks]
    return lines


def gate_html(verdict) -> list[str]:
    cls = "ok" if verdict.passed else "bad"
    items = "".join(f"<li class='{'ok' if ch.passed else 'bad'}'><b>{e(ch.name)}</b>: {e(ch.detail)}</li>"
                    for ch in verdict.checks)
    return [f"<p class='verdict {cls}'>Gate: {'PASSED' if verdict.passed else 'FAILED'}</p><ul>{items}</ul>"]


# --------------------------------------------------------------------------------------------- data diff
def datadiff_markdown(d, level: int = 2) -> list[str]:
    h = "#" * level
    c = d.counts
    lines = [f"{h} Data: {d.old_path} -> {d.new_path}", "",
             (f"{d.old_examples} -> {d.new_examples} examples: **{c['added']} added, {c['removed']} removed, "
             f"{c['changed']} changed**, {d.unchanged} unchanged (by content fingerprint)."), ""]
    if d.answer_changes:
        lines += _md_table(["old answer", "new answer", "examples"], [[a, b, n] for a, b, n in d.answer_changes[:10]])
        lines.append("")
    if d.changed:
        lines += _md_table(["old line", "new line", "prompt", "old answer", "new answer"],
                           [[x["old_line"], x["new_line"], x["prompt"], x["old_answer"], x["new_answer"]]
                            for x in d.changed[:10]])
        lines.append("")
    errors = sum(p["severity"] == "error" for p in d.new_problems)
    lines.append(f"Validation: {len(d.new_problems)} new problem(s) in the new version ({errors} error(s)); "
                 f"{d.fixed_problems} problem(s) of the old version fixed.")
    if d.new_problems:
        lines += [""] + _md_table(["line", "category", "severity", "message"],
                                  [[p["line"], p["category"], p["severity"], p["message"]] for p in d.new_problems[:20]])
    return lines


def datadiff_html(d, level: int = 2) -> list[str]:
    h = f"h{level}"
    c = d.counts
    parts = [f"<{h}>Data: {e(d.old_path)} &rarr; {e(d.new_path)}</{h}>",
             (f"<p>{d.old_examples} &rarr; {d.new_examples} examples: <b>{c['added']} added, {c['removed']} removed, "
             f"{c['changed']} changed</b>, {d.unchanged} unchanged (by content fingerprint).</p>")]
    if d.answer_changes:
        parts.append(_html_table(["old answer", "new answer", "examples"], [[a, b, n] for a, b, n in d.answer_changes[:10]]))
    if d.changed:
        parts.append(_html_table(["old line", "new line", "prompt", "old answer", "new answer"],
                                 [[x["old_line"], x["new_line"], x["prompt"], x["old_answer"], x["new_answer"]]
                                  for x in d.changed[:15]]))
    errors = sum(p["severity"] == "error" for p in d.new_problems)
    cls = "bad" if errors else "ok"
    parts.append(f"<p class='{cls}'>Validation: {len(d.new_problems)} new problem(s) in the new version "
                 f"({errors} error(s)); {d.fixed_problems} problem(s) of the old version fixed.</p>")
    if d.new_problems:
        parts.append(_html_table(["line", "category", "severity", "message"],
                                 [[p["line"], p["category"], p["severity"], p["message"]] for p in d.new_problems[:50]]))
    return parts


# --------------------------------------------------------------------------------------------- retrain
def write_retrain_report(r, out_dir: Path) -> None:
    """retrain.json, report.md, report.html: what was rerun, the data diff, the comparison, the gate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    intro = (f"Retrained {r.old_run} as {r.new_run}"
             + (f" on base model {r.changes['model']}" if "model" in r.changes else "")
             + (f" with data {r.changes['data']}" if "data" in r.changes else "") + ".")
    md = ["# Retrain", "", intro, ""] + gate_markdown(r.gate) + [""]
    body = ["<h1>Retrain</h1>", f"<p>{e(intro)}</p>"] + gate_html(r.gate)
    if r.data_diff is not None:
        md += datadiff_markdown(r.data_diff) + [""]
        body += datadiff_html(r.data_diff)
    md += compare_markdown(r.comparison, level=2)
    body += compare_html(r.comparison, level=2)
    write_text_atomic(out_dir / "retrain.json", json.dumps(r.to_dict(), indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", "\n".join(md) + "\n")
    write_text_atomic(out_dir / "report.html", _page("Honing retrain", body))


# --------------------------------------------------------------------------------------------- drift
def drift_hist_png(d) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    hi = max([*d.reference_distances, *d.current_distances, d.threshold]) * 1.05
    bins = [hi * i / 40 for i in range(41)]
    ax.hist(d.reference_distances, bins=bins, alpha=0.6, density=True, label="training inputs (to the others)")
    ax.hist(d.current_distances, bins=bins, alpha=0.6, density=True, label="current inputs")
    ax.axvline(d.threshold, color="#c44e52", linestyle="--", label=f"threshold {d.threshold:.3f}")
    ax.set_xlabel("cosine distance to the nearest training input")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("how far inputs are from the training data")
    return _png(fig)


def _cluster_rows(d) -> list[list]:
    return [[i + 1, cl["size"], f"{cl['share']:.1%}", ", ".join(cl["keywords"]), " | ".join(cl["examples"][:3]),
             cl["nearest_training"][0] if cl["nearest_training"] else ""] for i, cl in enumerate(d.clusters)]


CLUSTER_HEAD = ["cluster", "inputs", "share of current", "keywords", "examples", "closest training input"]


def drift_markdown(d) -> list[str]:
    lines = ["# Drift", "", (f"Reference `{d.reference_path}` ({d.n_reference} inputs), current `{d.current_path}` "
             f"({d.n_current} inputs)."), "", f"**Recommendation: {d.recommendation}.** {d.reason}", "",
             (f"- far from every training input: {d.far_count} of {d.n_current} ({d.far_share:.1%}); expected "
             f"without drift: {d.expected_share:.1%} (threshold: the {d.percentile:g}th percentile of the "
             f"training inputs' distance, {d.threshold:.3f})"),
             (f"- median distance to the nearest training input: current {d.current_median:.3f}, training inputs to each other "
             f"{d.reference_median:.3f}")]
    if d.clusters:
        lines += ["", "## What is new", ""] + _md_table(CLUSTER_HEAD, _cluster_rows(d))
    return lines


def write_drift_report(d, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cls = {"fine": "ok"}.get(d.recommendation, "bad")
    body = ["<h1>Drift</h1>",
            (f"<p>Reference <code>{e(d.reference_path)}</code> ({d.n_reference} inputs), current "
            f"<code>{e(d.current_path)}</code> ({d.n_current} inputs).</p>"),
            f"<p class='verdict {cls}'>Recommendation: {e(d.recommendation)}</p><p>{e(d.reason)}</p>",
            ("<ul>"
            f"<li>far from every training input: {d.far_count} of {d.n_current} ({d.far_share:.1%}); expected without "
            f"drift: {d.expected_share:.1%} (threshold {d.threshold:.3f}, the {d.percentile:g}th percentile of the "
            "training inputs' distance)</li>"
            f"<li>median distance to the nearest training input: current {d.current_median:.3f}, training inputs to each other "
            f"{d.reference_median:.3f}</li></ul>"),
            _imgs([drift_hist_png(d)])]
    if d.clusters:
        body += ["<h2>What is new</h2>", _html_table(CLUSTER_HEAD, _cluster_rows(d))]
    write_text_atomic(out_dir / "drift.json", json.dumps(d.to_dict(), indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", "\n".join(drift_markdown(d)) + "\n")
    write_text_atomic(out_dir / "report.html", _page("Honing drift", body))
