"""``score_model`` graders: a judge model Honing loads itself reads the grader's ``input`` messages (with
their templates filled) and answers with a score.

The judge is any model reference Honing loads (a catalog name such as ``smollm2-135m-instruct``, a model
directory, a ``.gguf`` file or a training run directory), loaded once per process and kept. Greedy
decoding unless ``sampling_params.temperature`` > 0 (then ``top_p`` and ``seed`` apply too);
``max_completions_tokens`` defaults to 128.

How a score is read from the reply (OpenAI's judges answer in a structured format; a small local model
answers in prose), first rule that applies:
1. the reply (or the ```json block in it) is JSON: a number, or an object's ``score`` / ``result`` number;
2. the last number written right after the word score, rating, grade or result ("Score: 0.8", "score = 7");
3. the first number in the reply.
The number is then clamped into ``range`` (default [0, 1]). No number: reward 0, ``model_grader_parse_error``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from honing.graders.base import Grader, check_keys, grader_name
from honing.graders.core import GraderError, GradeResult, Sample, where
from honing.graders.templates import Template, Unresolved, parse_template

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text")
SAMPLING_KEYS = ("temperature", "top_p", "max_completions_tokens", "seed", "reasoning_effort")
DEFAULT_MAX_TOKENS = 128
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_LABELLED = re.compile(rf"\b(?:score|rating|grade|result)\b\W{{0,3}}(?:is\s+)?({_NUMBER})", re.IGNORECASE)
_ANY = re.compile(_NUMBER)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class ScoreModelGrader(Grader):
    type = "score_model"

    def __init__(self, spec: dict, path: str):
        check_keys(spec, path, ("input", "model"), ("range", "sampling_params", "pass_threshold"))
        super().__init__(grader_name(spec, path))
        self.model_ref = _checked_model(spec["model"], where(path, "model"))
        self.messages = _parse_messages(spec["input"], where(path, "input"))
        self.low, self.high = _parse_range(spec.get("range", [0, 1]), where(path, "range"))
        self.sampling = _parse_sampling(spec.get("sampling_params") or {}, where(path, "sampling_params"))

    def item_fields(self) -> set[str]:
        return set().union(*(t.item_fields() for _, t in self.messages))

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        start = time.perf_counter()
        prompts: list[list | Unresolved] = []
        for s in samples:
            ns = s.namespace()
            try:
                prompts.append([(role, t.render(ns, s.item)) for role, t in self.messages])
            except Unresolved as e:
                prompts.append(e)
        good = [k for k, p in enumerate(prompts) if not isinstance(p, Unresolved)]
        try:
            replies = self._ask([prompts[k] for k in good]) if good else []
        except Exception as e:  # noqa: BLE001 (a judge that cannot run fails its samples, not the run)
            return [self.failed("model_grader_server_error", f"the judge {self.model_ref} failed: {e}")
                    for _ in samples]
        each = (time.perf_counter() - start) / max(1, len(samples))
        answers = dict(zip(good, replies, strict=True))
        return [self.failed(p.flag, str(p), each) if isinstance(p, Unresolved) else self._score(*answers[k], each)
                for k, p in enumerate(prompts)]

    def _ask(self, prompts: list[list[tuple[str, str]]]) -> list[tuple[str, int, int]]:
        """(reply, prompt tokens, completion tokens) for each prompt."""
        from honing.data.conversation import Message
        from honing.evaluate.generation import generate

        model, tok = load_judge(self.model_ref)
        conversations = [[Message(role, text) for role, text in p] for p in prompts]
        if not self.sampling["temperature"]:
            out = generate(model, tok, conversations, self.sampling["max_completions_tokens"])
            return list(zip(out.texts, out.prompt_tokens, out.new_tokens, strict=True))
        return [self._sample(model, tok, c) for c in conversations]

    def _sample(self, model, tok, conversation) -> tuple[str, int, int]:
        import torch

        from honing.data.render import render_prompt
        from honing.evaluate.generation import stop_token_ids

        ids = render_prompt(tok, conversation)
        if self.sampling["seed"] is not None:
            torch.manual_seed(self.sampling["seed"])
        stops = stop_token_ids(tok)
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=True, temperature=self.sampling["temperature"],
                                 top_p=self.sampling["top_p"], top_k=0, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                 max_new_tokens=self.sampling["max_completions_tokens"])
        new = out[0, len(ids):].tolist()
        cut = next((k for k, t in enumerate(new) if t in stops), len(new))
        return tok.decode(new[:cut], skip_special_tokens=True).strip(), len(ids), cut

    def _score(self, reply: str, prompt_tokens: int, new_tokens: int, seconds: float) -> GradeResult:
        usage = {self.model_ref: {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                                  "total_tokens": prompt_tokens + new_tokens}}
        extra = {"token_usage": prompt_tokens + new_tokens, "sampled_model_name": self.model_ref}
        value = parse_score(reply)
        if value is None:
            result = self.failed("model_grader_parse_error", f"no score in the judge's reply {reply[:200]!r}",
                                 seconds, **extra)
        else:
            result = self.ok(min(self.high, max(self.low, value)), seconds, **extra)
        result.token_usage_per_model = usage
        return result


def parse_score(reply: str) -> float | None:
    """The score in a judge's reply by the rules of the module doc, or None."""
    for text in [*_FENCE.findall(reply), reply]:
        value = _json_score(text.strip())
        if value is not None:
            return value
    labelled = _LABELLED.findall(reply)
    found = labelled[-1] if labelled else (_ANY.findall(reply) or [None])[0]
    if found is None:
        return None
    value = float(found)
    return value if math.isfinite(value) else None


def _json_score(text: str) -> float | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        data = data.get("score", data.get("result"))
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        return None
    return float(data)


@functools.lru_cache(maxsize=2)
def load_judge(reference: str):
    """(model, tokenizer) of a judge, loaded once per process."""
    from honing.models.loading import load_for_inference

    model, tok, _ = load_for_inference(reference)
    return model, tok


def _checked_model(ref: object, path: str) -> str:
    """A reference Honing can load, checked without loading it (converting a GGUF takes a while)."""
    from honing.models.catalog import EMBEDDED, cache_root

    if not isinstance(ref, str) or not ref.strip():
        raise GraderError(f"{path}: must be a model reference")
    if ref in EMBEDDED or Path(ref).expanduser().exists():
        return ref
    if "/" not in ref and (cache_root() / "models" / ref / "honing-conversion.json").is_file():
        return ref
    raise GraderError(f"{path}: {ref!r} is not a model Honing can load: give a catalog name "
                      f"({', '.join(sorted(EMBEDDED))}, or one in `hone models list`), a model directory, a .gguf "
                      "file or a training run directory (Honing never calls a hosted model)")


def _parse_messages(messages: object, path: str) -> list[tuple[str, Template]]:
    if not isinstance(messages, list) or not messages:
        raise GraderError(f"{path}: must be a non-empty list of messages")
    out = []
    for k, m in enumerate(messages):
        here = where(path, k)
        if not isinstance(m, dict):
            raise GraderError(f"{here}: must be an object with role and content")
        unknown = sorted(set(m) - {"role", "content", "type"})
        if unknown:
            raise GraderError(f"{where(here, unknown[0])}: unknown key (allowed: content, role, type)")
        if m.get("type", "message") != "message":
            raise GraderError(f"{where(here, 'type')}: must be 'message'")
        if m.get("role") not in ROLES:
            raise GraderError(f"{where(here, 'role')}: {m.get('role')!r} is not one of {', '.join(ROLES)}")
        out.append((ROLES[m["role"]], parse_template(_content_text(m.get("content"), where(here, "content")),
                                                     where(here, "content"))))
    return out


def _content_text(content: object, path: str) -> str:
    """A message's text: a string, a text part, or a list of them (joined by newlines)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for k, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise GraderError(f"{where(path, k) if isinstance(content, list) else path}: content of type "
                              f"{kind!r} is not supported (Honing's judges read text: input_text, output_text)")
    return "\n".join(texts)


def _parse_range(value: object, path: str) -> tuple[float, float]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or value[0] >= value[1]:
        raise GraderError(f"{path}: must be two finite numbers [low, high] with low < high, not {value!r}")
    return float(value[0]), float(value[1])


def _parse_sampling(params: object, path: str) -> dict:
    if not isinstance(params, dict):
        raise GraderError(f"{path}: must be an object")
    unknown = sorted(set(params) - set(SAMPLING_KEYS))
    if unknown:
        raise GraderError(f"{where(path, unknown[0])}: unknown key (allowed: {', '.join(SAMPLING_KEYS)})")
    out = {"temperature": params.get("temperature"), "top_p": params.get("top_p", 1.0),
           "max_completions_tokens": params.get("max_completions_tokens", DEFAULT_MAX_TOKENS),
           "seed": params.get("seed")}
    checks = {
        "temperature": lambda v: v is None or (_number(v) and 0 <= v <= 2),
        "top_p": lambda v: _number(v) and 0 < v <= 1,
        "max_completions_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096,
        "seed": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    }
    wanted = {"temperature": "a number from 0 to 2", "top_p": "a number in (0, 1]",
              "max_completions_tokens": "an integer from 1 to 4096", "seed": "an integer"}
    for key, check in checks.items():
        if not check(out[key]):
            raise GraderError(f"{where(path, key)}: must be {wanted[key]}, not {out[key]!r}")
    return out


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
