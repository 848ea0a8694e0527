"""The evaluation report: ``eval.json`` (every number), ``report.md`` and one self-contained
``report.html`` (figures are inline base64 PNGs from matplotlib; no external assets, no scripts).

Every file is written to a temporary name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

MAX_SAMPLES = 15
MAX_PROMPT_CHARS = 300


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def metric_bars_png(result) -> str:
    """Primary metric per approach with its 95% bootstrap interval as error bars."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [a.name for a in result.approaches]
    values = [a.primary_value for a in result.approaches]
    lows = [a.primary_value - a.primary_ci.low for a in result.approaches]
    highs = [a.primary_ci.high - a.primary_value for a in result.approaches]
    colors = ["#c44e52" if a.name == result.winner else "#4c72b0" for a in result.approaches]
    ax.bar(names, values, yerr=[lows, highs], capsize=6, color=colors)
    ax.set_ylabel(result.primary)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{result.primary} by approach (95% bootstrap CI)")
    return _png(fig)


def confusion_png(labels: list[str], matrix: list[list[int]], title: str) -> str:
    plt = _figure()
    cols = labels + ["<other>"]
    size = max(4.0, 0.45 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    peak = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > peak / 2 else "black")
    ax.set_title(title)
    return _png(fig)


def loss_curve_png(rows: list[dict]) -> str | None:
    train = [(r["step"], r["train_loss"]) for r in rows if "step" in r and r.get("train_loss") is not None]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "step" in r and r.get("eval_loss") is not None]
    if not train and not ev:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if ev:
        ax.plot(*zip(*ev), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.set_title("training run")
    return _png(fig)


def differing_samples(result, limit: int = MAX_SAMPLES) -> list[dict]:
    """Examples where the base model (zero-shot, else the first baseline) and the fine-tuned model
    (else the winner) answer differently: the most telling side-by-side view."""
    names = [a.name for a in result.approaches]
    left = "zero-shot" if "zero-shot" in names else names[0]
    right = "fine-tuned" if "fine-tuned" in names else result.winner
    if left == right:
        right = names[-1]
    a, b = result.approach(left), result.approach(right)
    primary = result.primary
    out = []
    for i, item in enumerate(result.items):
        if a.predictions[i] == b.predictions[i]:
            continue
        out.append({
            "index": i, "line": item.line, "prompt": item.query[:MAX_PROMPT_CHARS], "reference": item.reference,
            left: a.predictions[i], right: b.predictions[i],
            f"{left}_correct": a.scores.per_example[primary][i], f"{right}_correct": b.scores.per_example[primary][i],
        })
        if len(out) >= limit:
            break
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def render_markdown(result, samples: list[dict]) -> str:
    lines = [f"# Evaluation: {result.model_ref}", "",
             (f"{result.n_examples} examples from `{result.eval_path}`; task **{result.task}**, "
             f"primary metric **{result.primary}**."), "", f"**{result.verdict}**", "",
             f"| approach | {result.primary} | 95% CI | other metrics | mean prompt tokens | s/example |",
             "| --- | --- | --- | --- | --- | --- |"]
    for a in result.approaches:
        others = ", ".join(f"{k} {v:.3f}" for k, v in a.scores.summary.items() if k != result.primary)
        lines.append(f"| {a.name} | {a.primary_value:.3f} | [{a.primary_ci.low:.3f}, {a.primary_ci.high:.3f}] | "
                     f"{others} | {a.mean_prompt_tokens:.0f} | {a.latency_per_example:.3f} |")
    if result.comparisons:
        lines += ["", ("Paired bootstrap (1000 resamples) of the difference in "
                  f"{result.primary}, winner minus each other approach:"), ""]
        for c in result.comparisons:
            d = c["difference"]
            lines.append(f"- {c['a']} - {c['b']}: {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                         + ("" if c["significant"] else " (not significant)"))
    if result.reference_loss:
        lines += ["", "Loss on the reference answers (nats/token; first examples only, see `examples`):", ""]
        for k, v in result.reference_loss.items():
            lines.append(f"- {k}: loss {v['loss']:.4f}, perplexity {v['perplexity']:.2f} "
                         f"({v['tokens']} tokens of {v['examples']} examples)")
    if result.forgetting:
        f = result.forgetting
        lines += ["", "## Forgetting", "",
                  "| probe | base | fine-tuned |", "| --- | --- | --- |",
                  f"| general-text perplexity | {f['before']['perplexity']:.2f} | {f['after']['perplexity']:.2f} |",
                  f"| general QA accuracy | {f['before']['qa_accuracy']:.3f} | {f['after']['qa_accuracy']:.3f} |", "",
                  ("**Flagged:** " + "; ".join(f["reasons"])) if f["flagged"] else "No drop beyond the thresholds."]
    if samples:
        keys = [k for k in samples[0] if k not in ("index", "line", "prompt", "reference") and not k.endswith("_correct")]
        lines += ["", "## Where the answers differ", "",
                  "| # | prompt | reference | " + " | ".join(keys) + " |", "| --- " * (3 + len(keys)) + "|"]
        for s in samples:
            lines.append(f"| {s['index']} | {_md_cell(s['prompt'])} | {_md_cell(s['reference'])} | "
                         + " | ".join(_md_cell(s[k]) for k in keys) + " |")
    lines += ["", f"Settings: `{json.dumps(result.settings)}`", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.win{background:#fdecea}.verdict{font-size:1.15em;font-weight:600}
.ok{color:#2a7a2a}.bad{color:#b00020}img{max-width:100%}.figs{display:flex;flex-wrap:wrap;gap:1em}"""


def render_html(result, samples: list[dict]) -> str:
    e = html.escape
    parts = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Honing evaluation</title>"
             f"<style>{_CSS}</style></head><body>"),
             f"<h1>Evaluation of {e(result.model_ref)}</h1>",
             (f"<p>{result.n_examples} examples from <code>{e(result.eval_path)}</code>; task <b>{e(result.task)}</b>, "
             f"primary metric <b>{e(result.primary)}</b>.</p>"),
             f"<p class='verdict'>{e(result.verdict)}</p>",
             (f"<table><tr><th>approach</th><th>{e(result.primary)}</th><th>95% CI</th><th>other metrics</th>"
             "<th>mean prompt tokens</th><th>s/example</th></tr>")]
    for a in result.approaches:
        others = ", ".join(f"{k} {v:.3f}" for k, v in a.scores.summary.items() if k != result.primary)
        cls = " class='win'" if a.name == result.winner else ""
        parts.append(f"<tr{cls}><td>{e(a.name)}</td><td>{a.primary_value:.3f}</td>"
                     f"<td>[{a.primary_ci.low:.3f}, {a.primary_ci.high:.3f}]</td><td>{e(others)}</td>"
                     f"<td>{a.mean_prompt_tokens:.0f}</td><td>{a.latency_per_example:.3f}</td></tr>")
    parts.append("</table>")
    if result.comparisons:
        parts.append("<h2>Differences (paired bootstrap, 95% CI)</h2><ul>")
        for c in result.comparisons:
            d = c["difference"]
            note = "" if c["significant"] else " <i>(not significant)</i>"
            parts.append(f"<li>{e(c['a'])} &minus; {e(c['b'])}: {d['estimate']:+.3f} "
                         f"[{d['low']:+.3f}, {d['high']:+.3f}]{note}</li>")
        parts.append("</ul>")
    figs = [metric_bars_png(result)]
    shown = next((a for a in reversed(result.approaches) if a.name == "fine-tuned"), None) or \
        result.approach(result.winner)
    if shown.scores.labels:
        figs.append(confusion_png(shown.scores.labels, shown.scores.confusion, f"confusion matrix: {shown.name}"))
    curve = loss_curve_png(result.loss_curve)
    if curve:
        figs.append(curve)
    parts.append("<div class='figs'>" + "".join(f"<img alt='figure' src='data:image/png;base64,{f}'>" for f in figs)
                 + "</div>")
    if result.reference_loss:
        parts.append("<h2>Loss on the reference answers</h2><ul>")
        for k, v in result.reference_loss.items():
            parts.append(f"<li>{e(k)}: {v['loss']:.4f} nats/token, perplexity {v['perplexity']:.2f} "
                         f"({v['tokens']} tokens of {v['examples']} examples)</li>")
        parts.append("</ul>")
    if result.forgetting:
        f = result.forgetting
        status = (f"<p class='bad'>Flagged: {e('; '.join(f['reasons']))}</p>" if f["flagged"]
                  else "<p class='ok'>No drop beyond the thresholds.</p>")
        parts.append("<h2>Forgetting</h2><table><tr><th>probe</th><th>base</th><th>fine-tuned</th></tr>"
                     f"<tr><td>general-text perplexity</td><td>{f['before']['perplexity']:.2f}</td>"
                     f"<td>{f['after']['perplexity']:.2f}</td></tr><tr><td>general QA accuracy</td>"
                     f"<td>{f['before']['qa_accuracy']:.3f}</td><td>{f['after']['qa_accuracy']:.3f}</td></tr>"
                     f"</table>{status}")
    if samples:
        keys = [k for k in samples[0] if k not in ("index", "line", "prompt", "reference") and not k.endswith("_correct")]
        parts.append("<h2>Where the answers differ</h2><table><tr><th>#</th><th>prompt</th><th>reference</th>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
        for s in samples:
            cells = "".join(f"<td class='{'ok' if s[k + '_correct'] else 'bad'}'>{e(s[k])}</td>" for k in keys)
            parts.append(f"<tr><td>{s['index']}</td><td>{e(s['prompt'])}</td><td>{e(s['reference'])}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append(f"<p><small>Settings: <code>{e(json.dumps(result.settings))}</code></small></p></body></html>")
    return "".join(parts)


def write_reports(result, out_dir: Path) -> None:
    """eval.json, report.md and report.html into ``out_dir`` (created), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = differing_samples(result)
    data = result.to_dict(per_example=True)
    data["samples"] = samples
    data["predictions"] = {a.name: a.predictions for a in result.approaches}
    _atomic_write(out_dir / "eval.json", json.dumps(data, indent=2) + "\n")
    _atomic_write(out_dir / "report.md", render_markdown(result, samples))
    _atomic_write(out_dir / "report.html", render_html(result, samples))
