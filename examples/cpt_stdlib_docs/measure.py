"""Held-out domain perplexity of the base model vs a continued-pre-training run, with a paired bootstrap
interval over the held-out documents (the same blocks as training's eval: documents joined with the
end-of-text token, 512-token blocks overlapping by one token).

    HF_HUB_OFFLINE=1 python examples/cpt_stdlib_docs/measure.py runs/cpt_stdlib_docs_lora [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent


def document_nll(model, tokenizer, texts: list[str], block_size: int) -> list[tuple[float, int]]:
    """(summed NLL, predicted tokens) of each document on its own (its text + end-of-text token)."""
    import torch

    from honing.data.conversation import RawText
    from honing.train.cpt import blocks, token_stream
    from honing.train.losses import causal_lm_loss_sum

    out = []
    with torch.no_grad():
        for text in texts:
            total, n = 0.0, 0
            for b in blocks(token_stream(tokenizer, [RawText(text)]), block_size):
                ids = torch.tensor([b])
                loss, k = causal_lm_loss_sum(model, {"input_ids": ids}, ids)
                total, n = total + float(loss), n + k
            out.append((total, n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("--eval", default=str(HERE / "eval.jsonl"))
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from honing.evaluate.bootstrap import paired_difference_ci
    from honing.models.loading import load_for_inference
    from honing.rundir import RunDir

    texts = [json.loads(line)["text"] for line in Path(a.eval).read_text().splitlines()]
    tuned, tok, _ = load_for_inference(a.run)
    tuned_nll = document_nll(tuned, tok, texts, a.block_size)
    del tuned
    base, tok, _ = load_for_inference(RunDir(a.run).base_model_reference())
    base_nll = document_nll(base, tok, texts, a.block_size)
    per_doc = {name: [s / n for s, n in nll] for name, nll in (("base", base_nll), ("cpt", tuned_nll))}
    ppl = {name: math.exp(sum(s for s, _ in nll) / sum(n for _, n in nll))
           for name, nll in (("base", base_nll), ("cpt", tuned_nll))}
    ci = paired_difference_ci(per_doc["cpt"], per_doc["base"], resamples=2000)
    report = {"documents": len(texts), "tokens": sum(n for _, n in base_nll), "perplexity": ppl,
              "mean_nll_per_document": {k: sum(v) / len(v) for k, v in per_doc.items()},
              "nll_difference_cpt_minus_base": ci.to_dict()}
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
