"""Chat serving: many fine-tuned adapters on one base model in memory.

A :class:`ModelPool` keeps each base model loaded once (``honing.models.loading.load_model``) and wraps
it in a ``PeftModel`` on the first adapter; adapters are loaded on first use with ``load_adapter`` and
the least recently used one leaves (``delete_adapter``) when more than ``adapter_cache`` are loaded or
when its model is deleted. A checkpoint is served as its job's adapter with the checkpoint's tensors.
Generation on one base is serialized by a lock (one model, one set of active adapters at a time).

Prompts are rendered by ``honing.data.render.render_prompt`` — the code that rendered the training
examples — and decoding stops at the model's end-of-turn tokens (``honing.evaluate.generation``).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from honing.serve.errors import APIError

# Most greedy requests one generate() call takes together.
MAX_BATCH = 16


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a base, optionally with an adapter (a job's result or checkpoint)."""

    base: str
    adapter_key: str | None = None  # unique per adapter (job id, checkpoint id)
    adapter_dir: Path | None = None  # a PEFT adapter directory (the job's final/)
    weights: Path | None = None  # checkpoint tensors to put into that adapter


@dataclass
class Params:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int


class _Slot:
    def __init__(self, base_ref: str):
        from honing.models.loading import load_model

        self.base, self.tok, _ = load_model(base_ref)
        self.base.eval()
        self.model = self.base  # becomes a PeftModel with the first adapter
        self.adapters: OrderedDict[str, str] = OrderedDict()  # adapter key -> PEFT adapter name
        self.lock = threading.Lock()  # one generate() at a time on this model
        self.pending: list[_Pending] = []  # greedy requests waiting: the next generate() takes them all
        self.pending_lock = threading.Lock()


@dataclass
class _Pending:
    target: Target
    prompt_ids: list[int]
    params: Params
    result: list[Choice] | None = None
    error: BaseException | None = None


def _adapter_name(key: str) -> str:
    # PEFT keeps adapters in ModuleDicts: names must not contain dots.
    return "a_" + "".join(c if c.isalnum() else "_" for c in key)


class ModelPool:
    name = "transformers"  # the chat engine's name (honing.serve.engines)

    def __init__(self, adapter_cache: int = 4):
        self.adapter_cache = max(1, adapter_cache)
        self.slots: dict[str, _Slot] = {}
        self.lock = threading.Lock()

    def slot(self, base: str) -> _Slot:
        with self.lock:
            if base not in self.slots:
                self.slots[base] = _Slot(base)
            return self.slots[base]

    def tokenizer(self, base: str):
        return self.slot(base).tok

    def unload(self, adapter_keys: list[str]) -> None:
        """Drop these adapters from memory (their model was deleted)."""
        for slot in list(self.slots.values()):
            with slot.lock:
                for key in adapter_keys:
                    if key in slot.adapters:
                        self._delete(slot, key)

    def loaded_adapters(self, base: str) -> list[str]:
        slot = self.slots.get(base)
        return list(slot.adapters) if slot else []

    # -- adapters -----------------------------------------------------------------------------
    def _delete(self, slot: _Slot, key: str) -> None:
        name = slot.adapters.pop(key)
        if not slot.adapters:  # PEFT needs one adapter left: go back to the bare base model
            slot.model = slot.model.unload() if hasattr(slot.model, "unload") else slot.base
            slot.base = slot.model
        else:
            slot.model.delete_adapter(name)

    def _activate(self, slot: _Slot, t: Target) -> None:
        """Make ``t``'s adapter active (loading it, evicting the least recently used). Under slot.lock."""
        if t.adapter_key is None:
            return
        self._ensure_loaded(slot, t, keep={t.adapter_key})
        slot.model.set_adapter(slot.adapters[t.adapter_key])

    def _ensure_loaded(self, slot: _Slot, t: Target, keep: set) -> None:
        """Load ``t``'s adapter if needed; evict least recently used ones, never those in ``keep``."""
        if t.adapter_key in slot.adapters:
            slot.adapters.move_to_end(t.adapter_key)
            return
        self._load(slot, t)
        for key in [k for k in slot.adapters if k not in keep][: max(0, len(slot.adapters) - self.adapter_cache)]:
            self._delete(slot, key)

    def _load(self, slot: _Slot, t: Target) -> None:
        with warnings.catch_warnings():
            # importing PEFT imports bitsandbytes, whose torch.compile decorators load a torch module that
            # uses the deprecated torch.jit.script_method: torch's notice about torch, not for our users
            warnings.filterwarnings("ignore", message=".*script_method.*", category=DeprecationWarning)
            from peft import PeftModel

        name = _adapter_name(t.adapter_key)
        if not (t.adapter_dir / "adapter_config.json").is_file():
            raise APIError(409, "This model's adapter is not available on the server (was its run removed?)",
                           code="model_not_ready")
        with warnings.catch_warnings():
            # PEFT asks transformers a deprecated question while wrapping (transformers 5): not our concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if isinstance(slot.model, PeftModel):
                slot.model.load_adapter(str(t.adapter_dir), adapter_name=name)
            else:
                slot.model = PeftModel.from_pretrained(slot.base, str(t.adapter_dir), adapter_name=name)
        slot.model.eval()
        if t.weights is not None:
            self._put_checkpoint(slot, name, t.weights)
        slot.adapters[t.adapter_key] = name

    @staticmethod
    def _put_checkpoint(slot: _Slot, name: str, weights: Path) -> None:
        """The checkpoint's trainable tensors (saved by the loop under the adapter name 'default')."""
        import torch
        from safetensors.torch import load_file

        saved = load_file(str(weights))
        params = dict(slot.model.named_parameters())
        with torch.no_grad():
            for n, tensor in saved.items():
                target = n.replace(".default.", f".{name}.")
                if target in params:
                    params[target].copy_(tensor)

    # -- generation ---------------------------------------------------------------------------
    def _context(self, slot: _Slot, t: Target):
        import contextlib

        if t.adapter_key is None and slot.model is not slot.base and hasattr(slot.model, "disable_adapter"):
            return slot.model.disable_adapter()
        return contextlib.nullcontext()

    def _gen_kwargs(self, slot: _Slot, p: Params) -> dict:
        from honing.evaluate.generation import stop_token_ids

        tok = slot.tok
        kw = {"max_new_tokens": p.max_new_tokens, "eos_token_id": stop_token_ids(tok),
              "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if p.temperature > 0:
            kw.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0,
                      num_return_sequences=p.n)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    @staticmethod
    def _stop_on_text(tok, prompt_len: int, stops: tuple[str, ...]):
        """Stop a row once its generated text (not the prompt: transformers' stop_strings also match across
        the prompt's end) contains a stop string."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopText(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                texts = tok.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
                return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

        return StoppingCriteriaList([_StopText()]) if stops else None

    def complete(self, t: Target, prompt_ids: list[int], p: Params) -> list[Choice]:
        """Greedy single-choice requests are batched: whoever gets the model next runs every such request
        waiting for it, across adapters (PEFT ``adapter_names``: one adapter per row). Sampled requests
        run alone (their seed must reproduce them)."""
        if p.temperature > 0 or p.n != 1:
            return self._complete_alone(t, prompt_ids, p)
        slot = self.slot(t.base)
        me = _Pending(t, prompt_ids, p)
        with slot.pending_lock:
            slot.pending.append(me)
        with slot.lock:
            if me.result is None and me.error is None:  # not already served by an earlier batch
                self._run_batch(slot, self._take_batch(slot, me))
        if me.error is not None:
            raise me.error
        return me.result

    def _take_batch(self, slot: _Slot, me: _Pending) -> list[_Pending]:
        with slot.pending_lock:
            batch, keys = [me], {me.target.adapter_key} - {None}
            for r in slot.pending:
                if r is me or len(batch) >= MAX_BATCH:
                    continue
                new_keys = keys | ({r.target.adapter_key} - {None})
                if len(new_keys) <= self.adapter_cache:  # every adapter of a batch must be loaded at once
                    batch.append(r)
                    keys = new_keys
            slot.pending = [r for r in slot.pending if r not in batch]
        return batch

    def _run_batch(self, slot: _Slot, batch: list[_Pending]) -> None:
        try:
            results = self._generate_batch(slot, batch)
            for r, choice in zip(batch, results, strict=True):
                r.result = [choice]
        except BaseException as e:  # noqa: BLE001 (each waiting request re-raises it)
            for r in batch:
                r.error = e

    def _generate_batch(self, slot: _Slot, batch: list[_Pending]) -> list[Choice]:
        import torch

        from honing.evaluate.generation import stop_token_ids

        keys = {r.target.adapter_key for r in batch} - {None}
        for r in batch:
            if r.target.adapter_key is not None:
                self._ensure_loaded(slot, r.target, keep=keys)
        pad = slot.tok.pad_token_id if slot.tok.pad_token_id is not None else slot.tok.eos_token_id
        width = max(len(r.prompt_ids) for r in batch)
        # left padding: every row's next token sits at the last position
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch])
        kwargs = self._gen_kwargs(slot, Params(max_new_tokens=max(r.params.max_new_tokens for r in batch),
                                               temperature=0))
        kwargs["stopping_criteria"] = self._stop_rows(slot.tok, width, [r.params for r in batch])
        targets = {(r.target.adapter_key) for r in batch}
        if len(targets) > 1:
            kwargs["adapter_names"] = [slot.adapters[r.target.adapter_key] if r.target.adapter_key else "__base__"
                                       for r in batch]
            context = _nullcontext()
        else:
            self._activate(slot, batch[0].target)
            context = self._context(slot, batch[0].target)
        with torch.no_grad(), context:
            out = slot.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        stops = set(stop_token_ids(slot.tok))
        return [self._choice(slot.tok, out[i, width:width + r.params.max_new_tokens].tolist(), stops, r.params)
                for i, r in enumerate(batch)]

    @staticmethod
    def _stop_rows(tok, prompt_width: int, params: list[Params]):
        """Per row: stop at its own max_new_tokens or once its generated text holds one of its stop strings."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopRows(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                n = input_ids.shape[1] - prompt_width
                done = [n >= p.max_new_tokens for p in params]
                if any(p.stop for p in params):
                    texts = tok.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
                    done = [d or any(s in t for s in p.stop) for d, t, p in zip(done, texts, params, strict=True)]
                return torch.tensor(done, device=input_ids.device)

        return StoppingCriteriaList([_StopRows()])

    def _complete_alone(self, t: Target, prompt_ids: list[int], p: Params) -> list[Choice]:
        import torch

        from honing.evaluate.generation import stop_token_ids

        slot = self.slot(t.base)
        ids = torch.tensor([prompt_ids])
        with slot.lock:
            self._activate(slot, t)
            if p.seed is not None:
                torch.manual_seed(p.seed)
            with torch.no_grad(), self._context(slot, t):
                out = slot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          stopping_criteria=self._stop_on_text(slot.tok, len(prompt_ids), p.stop),
                                          **self._gen_kwargs(slot, p))
        stops = set(stop_token_ids(slot.tok))
        rows = [out[i, len(prompt_ids):].tolist() for i in range(out.shape[0])]
        if len(rows) < p.n:  # greedy: every choice is the same
            rows = rows * p.n
        return [self._choice(slot.tok, row, stops, p) for row in rows[: p.n]]

    @staticmethod
    def _choice(tok, row: list[int], stops: set[int], p: Params) -> Choice:
        end = next((i for i, x in enumerate(row) if x in stops), None)
        finish = "stop" if end is not None else "length"
        used = row[: end + 1] if end is not None else row
        text = tok.decode(row[:end] if end is not None else row, skip_special_tokens=True)
        cut = _cut_at_stop(text, p.stop)
        if cut is not None:
            text, finish = cut, "stop"
        return Choice(text, finish, len(used))

    def stream(self, t: Target, prompt_ids: list[int], p: Params) -> Iterator[tuple[str, str | None, int]]:
        """Yield (text delta, finish_reason or None, completion tokens so far); the last has the reason."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        slot = self.slot(t.base)
        streamer = TextIteratorStreamer(slot.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        state = {"tokens": 0, "stop": False, "error": None, "eos": False}
        stops = set(self._gen_kwargs(slot, p)["eos_token_id"])

        class _Watch(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                state["tokens"] = input_ids.shape[1] - len(prompt_ids)
                state["eos"] = int(input_ids[0, -1]) in stops
                return torch.full((input_ids.shape[0],), state["stop"], dtype=torch.bool)

        ids = torch.tensor([prompt_ids])
        kwargs = self._gen_kwargs(slot, p)
        kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Watch()]),
                      num_return_sequences=1)

        def run():
            try:
                with slot.lock:
                    self._activate(slot, t)
                    if p.seed is not None:
                        torch.manual_seed(p.seed)
                    with torch.no_grad(), self._context(slot, t):
                        slot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            except BaseException as e:  # noqa: BLE001 (re-raised in the stream's reader)
                state["error"] = e
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text, sent, hold = "", 0, max((len(s) for s in p.stop), default=1) - 1
        try:
            for piece in streamer:
                text += piece
                cut = _cut_at_stop(text, p.stop)
                if cut is not None:
                    state["stop"] = True
                    if len(cut) > sent:
                        yield cut[sent:], None, state["tokens"]
                    sent = len(cut)
                    break
                safe = len(text) - hold  # text that cannot be the start of a stop string
                if safe > sent:
                    yield text[sent:safe], None, state["tokens"]
                    sent = safe
            else:
                if len(text) > sent:
                    yield text[sent:], None, state["tokens"]
        finally:
            state["stop"] = True  # also when the client went away: end generation early
            thread.join()
        if state["error"] is not None:
            raise state["error"]
        finish = "stop" if state["stop"] and _cut_at_stop(text, p.stop) is not None or state["eos"] else "length"
        yield "", finish, state["tokens"]


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str | None:
    idx = [text.find(s) for s in stops if s and s in text]
    return text[: min(idx)] if idx else None
