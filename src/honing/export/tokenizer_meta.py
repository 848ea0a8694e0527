"""The tokenizer as GGUF metadata: what llama.cpp needs to tokenize and chat exactly as training did.

Written: ``tokenizer.ggml.model`` (``gpt2`` = byte-level BPE), ``tokenizer.ggml.pre`` (which
pre-tokenizer regex llama.cpp runs before BPE), the tokens in id order with their types (normal,
control = special, user-defined = added but not special), the merges, the special token ids (BOS, EOS,
UNK, PAD), the add-BOS/add-EOS flags as the tokenizer actually behaves, and the chat template.

SentencePiece BPE tokenizers (Llama 2, Mistral 7B, Phi-3, Gemma; transformers keeps them as a
``tokenizer.json`` BPE with ``byte_fallback`` and the ``▁`` space marker) are written as llama.cpp's
``llama`` tokenizer: the pieces, their scores and types (``<0xNN>`` byte pieces as BYTE) and whether a
``▁`` is put before the text (``add_space_prefix``: Llama/Mistral yes, Gemma no). llama.cpp merges the
pair whose merged piece scores highest; transformers the pair of lowest merge rank; so a piece's score is
minus the rank of the first merge that makes it.

Merges and special ids come from the ``gguf`` package's ``SpecialVocab`` reader; the token list, the
types and the pre-tokenizer name are decided here from the tokenizer that training used (the run's
``final/`` tokenizer), not from the model's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from honing.errors import ModelError
from honing.export.tool_template import named_templates

# llama.cpp's pre-tokenizer names and the tokenizers.json pre-tokenizer that means the same split.
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass
class TokenizerMeta:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    special: object  # gguf.SpecialVocab (merges + special ids)
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # SentencePiece only

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.chat_template = None  # written below from the tokenizer object itself
        self.special.add_special_token = {}
        self.special.add_to_gguf(writer, quiet=True)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            # The model's template, plus a tool_use template when it cannot render tools itself (the
            # fallback format Honing trained tool calls in; honing.export.tool_template).
            writer.add_chat_template(named_templates(self.chat_template))


def _pre_tokenizer_name(tokenizer_json: dict, declared: str | None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, from its tokenizers.json structure.

    ``declared`` is the name the base model's own GGUF gave (when the base came from one): kept when the
    structure is the plain byte-level split it would also fit, because transformers drops names it has
    no regex for (SmolLM2's ``smollm`` digit split reads back as plain byte-level).
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return declared if declared in ("smollm", "gpt-2") else "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == QWEN2_SPLIT:
            return "qwen2"
    raise ModelError(
        f"GGUF export: the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp names "
        "(known: gpt-2, smollm, llama-bpe, qwen2)"
    )


def _is_sentencepiece_bpe(data: dict) -> bool:
    """A SentencePiece BPE model as transformers converts it: BPE with byte fallback and ``▁`` for spaces."""
    model = data.get("model", {})
    marks = json.dumps([data.get("normalizer"), data.get("pre_tokenizer"), data.get("decoder")])
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "\\u2581" in marks


def _adds_space_prefix(data: dict) -> bool:
    """Whether a ``▁`` goes before the text: a Metaspace pre-tokenizer that prepends (Llama 2, Mistral) or
    a normalizer that prepends it (older conversions); Gemma's only replaces spaces."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never"
    return '"Prepend"' in json.dumps(data.get("normalizer"))


def _is_byte_piece(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def _piece_scores(model: dict, tokens: list[str]) -> list[float]:
    """Minus the rank of the first merge that makes each piece (0 for pieces no merge makes)."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(a + b, i)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _token_types(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            # The model's embedding is larger than the vocabulary (padded for speed): llama.cpp wants a
            # token for every row.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _special_vocab(tokenizer_dir: Path, **kwargs):
    """gguf's SpecialVocab (merges, special ids), its warnings kept from the user: they are about the
    add-BOS/EOS/SEP flags it guesses from the post-processor (e.g. "Unknown separator token
    '<|begin_of_text|>' in TemplateProcessing<pair>" for Llama 3's own tokenizer.json), which Honing does not
    use: it writes the flags from how the tokenizer behaves (``tokenizer_meta``)."""
    import logging

    import gguf

    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        return gguf.SpecialVocab(tokenizer_dir, **kwargs)
    finally:
        vocab_logger.setLevel(level)


def tokenizer_meta(tokenizer, tokenizer_dir: str | Path, n_vocab: int, declared_pre: str | None = None) -> TokenizerMeta:
    """Everything about ``tokenizer`` (saved in ``tokenizer_dir``) that goes into the GGUF."""
    import gguf

    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"GGUF export needs a fast tokenizer (tokenizer.json) in {tokenizer_dir}")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    byte_level = "ByteLevel" in json.dumps(data.get("pre_tokenizer")) and model.get("type") == "BPE"
    piece = _is_sentencepiece_bpe(data)
    if not byte_level and not piece:
        raise ModelError(
            f"GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2/3) and SentencePiece "
            f"BPE with byte fallback (Llama 2, Mistral 7B, Phi-3, Gemma); {path} is {model.get('type')} with "
            f"pre-tokenizer {(data.get('pre_tokenizer') or {}).get('type')}"
        )
    if len(tokenizer) > n_vocab:
        raise ModelError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {n_vocab} rows")
    tokens, types = _token_types(tokenizer, n_vocab)
    special = _special_vocab(tokenizer_dir, load_merges=not piece, n_vocab=n_vocab)
    if not piece and not special.merges:
        raise ModelError(f"GGUF export: no BPE merges found in {path}")
    # The flags as the tokenizer behaves, not as its config files happen to spell them.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and full[:1] == [tokenizer.bos_token_id] and plain[:1] != full[:1]
    add_eos = tokenizer.eos_token_id is not None and full[-1:] == [tokenizer.eos_token_id] and plain[-1:] != full[-1:]
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is not None:
            special.special_token_ids[kind] = int(tid)  # the loaded tokenizer's ids win over file guesses
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if piece:
        scores = _piece_scores(model, tokens)
        types = [int(gguf.TokenType.BYTE) if t == gguf.TokenType.NORMAL and _is_byte_piece(tok) else int(t)
                 for tok, t in zip(tokens, types)]
        if tokenizer.unk_token_id is not None:
            types[tokenizer.unk_token_id] = int(gguf.TokenType.UNKNOWN)
        return TokenizerMeta(model="llama", pre="default", tokens=tokens, types=types, add_bos=add_bos,
                             add_eos=add_eos, chat_template=template, special=special, scores=scores,
                             add_space_prefix=_adds_space_prefix(data))
    return TokenizerMeta(
        model="gpt2",
        pre=_pre_tokenizer_name(data, declared_pre),
        tokens=tokens,
        types=[int(t) for t in types],
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template,
        special=special,
    )


def declared_pre_tokenizer(gguf_path: str | Path | None) -> str | None:
    """``tokenizer.ggml.pre`` of a GGUF file (the base model's, when it came from one), else ``None``."""
    if not gguf_path or not Path(gguf_path).is_file() or Path(gguf_path).suffix.lower() != ".gguf":
        return None
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
