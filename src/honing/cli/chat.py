"""`hone chat`: talk to a base model or a fine-tuned run, one-shot or interactively, tokens streamed.

The prompt is built by ``honing.data.render.render_prompt`` — the very code that rendered the training
examples — so the model sees the same chat template at inference as in training."""

from __future__ import annotations

import sys

import typer


def stream_reply(model, tokenizer, messages, max_new_tokens: int, temperature: float, out=None) -> str:
    """Generate the assistant's reply to ``messages`` (list of Message), printing tokens as they come.
    Returns the reply text. temperature 0 = greedy (deterministic)."""
    import torch
    from transformers import TextStreamer

    from honing.data.render import render_prompt

    ids = torch.tensor([render_prompt(tokenizer, messages)])
    out = out or sys.stdout

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, streamer=streamer,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id, **sampling,
        )
    return tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)


def chat_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="A run directory, model directory, .gguf or catalog name."),
    prompt: str = typer.Option(None, "--prompt", help="Answer this one message and exit (default: interactive)."),
    system: str = typer.Option(None, "--system", help="A system message to put first."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 only where it is fast here), fp32 or bf16."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
) -> None:
    """Chat with a base model or a fine-tuned run (same chat template as training)."""
    from honing.data.conversation import Message
    from honing.errors import ConfigError
    from honing.models.loading import load_for_inference
    from honing.precision import auto_dtype

    if dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"--dtype: expected auto, fp32 or bf16, got {dtype!r}")
    from honing.train.runtime import resolve_device

    dev = resolve_device(device)
    m, tok, info = load_for_inference(model, dtype=auto_dtype(dtype, dev.type), device=dev)
    history: list[Message] = [Message("system", system)] if system else []
    if prompt is not None:
        stream_reply(m, tok, [*history, Message("user", prompt)], max_new_tokens, temperature)
        return
    print(f"chatting with {info.get('run_dir') or info.get('reference')} ({info['kind']}); "
          "an empty line or Ctrl-D ends, /reset forgets the conversation", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if not line.strip():
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append(Message("user", line))
        sys.stdout.write("assistant> ")
        reply = stream_reply(m, tok, history, max_new_tokens, temperature)
        history.append(Message("assistant", reply))


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
