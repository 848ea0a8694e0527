"""Tiny random-weight models of the families people fine-tune, built from each family's own transformers
configuration class with its distinguishing features switched on (Llama 3's llama3 RoPE scaling, Qwen3's
q/k norms, Gemma's soft-capping, sliding window, per-layer sliding/global pattern and norm offset, Phi-3's
fused qkv/gate_up projections), and each family's real chat template (tests/fixtures/chat_templates).

The tokenizer is SmolLM2's byte-level BPE for every family (no package we may install ships Gemma's or
Phi-3's SentencePiece models; the released ones built below are too large for every row), cut to its first 2,048 tokens and the
merges among them (a valid, smaller BPE: any text still tokenizes, through the byte alphabet; GGUF readers
then parse 2k tokens, not 49k), with the family's chat special tokens added as special tokens so its
template renders to single control tokens. What the tokenizer kind changes
(SentencePiece in the GGUF writer) is therefore not covered by these models; docs/training.md says so.

Llama 3's real tokenizer is built too (``llama3_real_tokenizer``): Meta's llama-models package ships its
tiktoken file, which transformers' TikTokenConverter turns into the tokenizer.json Hugging Face ships
(checked once against tiktoken itself: the same ids on this repository's docs, 62k tokens). So is Qwen2.5's
(``qwen25_real_tokenizer``, from the qwen.tiktoken file Alibaba's dashscope package ships).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # transformers configuration class
    template: str  # file in TEMPLATES
    specials: tuple[str, ...]  # the template's control tokens, added to the tokenizer
    end_of_turn: str  # the token that ends an assistant turn (trained, a stop token)
    bos: str | None  # the template's bos_token (None: the template does not write one)
    eos: str | None = None  # the tokenizer's eos_token when it is not end_of_turn (Phi-3.5: <|endoftext|>)
    extra: tuple[tuple[str, object], ...] = ()  # config overrides that switch on the family's features


# Llama 3's scaling with original_max_position_embeddings=16 rescales most of the 16-dim head's frequencies,
# so a wrong rope_freqs tensor shows within a 30-token prompt (the real value, 8192, would hide it).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}

FAMILIES = {
    "llama3": Family("llama3", "LlamaConfig", "llama3.jinja",
                     ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     "<|eot_id|>", "<|begin_of_text|>",
                     extra=(("rope_parameters", LLAMA3_ROPE), ("tie_word_embeddings", True))),
    "mistral": Family("mistral", "MistralConfig", "mistral.jinja", ("<s>", "</s>", "[INST]", "[/INST]"),
                      "</s>", "<s>", extra=(("tie_word_embeddings", False),)),
    "qwen2": Family("qwen2", "Qwen2Config", "qwen2.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>", None,
                    extra=(("tie_word_embeddings", True),)),
    "qwen3": Family("qwen3", "Qwen3Config", "qwen3.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>", None,
                    extra=(("head_dim", 32), ("tie_word_embeddings", True))),
    "gemma2": Family("gemma2", "Gemma2Config", "gemma2.jinja", ("<bos>", "<start_of_turn>", "<end_of_turn>"),
                     "<end_of_turn>", "<bos>",
                     extra=(("head_dim", 16), ("query_pre_attn_scalar", 16), ("sliding_window", 4))),
    "gemma3": Family("gemma3", "Gemma3TextConfig", "gemma3.jinja", ("<bos>", "<start_of_turn>", "<end_of_turn>"),
                     "<end_of_turn>", "<bos>",
                     extra=(("head_dim", 16), ("query_pre_attn_scalar", 16), ("sliding_window", 4), ("num_hidden_layers", 3),
                      ("layer_types", ["sliding_attention", "full_attention", "sliding_attention"]))),
    "phi3": Family("phi3", "Phi3Config", "phi3.jinja", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                   "<|end|>", None, "<|endoftext|>", extra=(("tie_word_embeddings", False), ("original_max_position_embeddings", 4096))),
}


SMALL_VOCAB = 2048


def small_bpe(base, n: int = SMALL_VOCAB):
    """``base`` (a byte-level BPE whose ids follow its merge order, as SmolLM2's do) cut to ids < ``n``."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(base.backend_tokenizer.to_str())
    vocab = {t: i for t, i in data["model"]["vocab"].items() if i < n}
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    data["added_tokens"] = [a for a in data["added_tokens"] if a["id"] < n]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                   bos_token=base.bos_token, eos_token=base.eos_token,
                                   pad_token=base.pad_token, unk_token=base.unk_token)


def family_tokenizer(family: Family, base):
    """SmolLM2's tokenizer (cut to ``SMALL_VOCAB``) with the family's control tokens and chat template;
    EOS = its end of turn (or its own eos)."""
    tok = small_bpe(base)
    tok.add_special_tokens({"additional_special_tokens": list(family.specials)})
    tok.chat_template = (TEMPLATES / family.template).read_text()
    tok.eos_token = family.eos or family.end_of_turn
    if family.bos:
        tok.bos_token = family.bos
    return tok


def family_model(family: Family, vocab_size: int, seed: int = 0, sharpen: bool = True):
    """The seeded tiny model. ``sharpen`` scales q/k projections (and perturbs norm weights) so attention
    depends on positions and norms visibly: a wrong RoPE layout, scaling or norm offset shows in logits."""
    import torch
    import transformers

    config_class = getattr(transformers, family.config_class)
    values = {"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    values.update(dict(family.extra))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**values)).eval()
    if sharpen:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")):
                    p.mul_(20)
                elif name.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * 0.3)
    return model


def save_family(family: Family, base_tokenizer, out: Path) -> Path:
    """A local model directory of the family (config, weights, tokenizer, template): what a user points
    Honing at."""
    tok = family_tokenizer(family, base_tokenizer)
    model = family_model(family, vocab_size=len(tok))
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# -- Llama 3's real tokenizer (shipped by Meta's llama-models package) ------------------------------------
# llama-models' llama3/tokenizer.py: the special tokens after the 128,000 BPE ranks, in this order, then
# reserved tokens up to 256 in all (128,256 ids: Llama 3.x's vocab_size).
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                   "<|image|>")
LLAMA3_N_SPECIAL = 256


def llama3_tokenizer_model() -> Path | None:
    """llama-models' Llama 3 tiktoken file (``None`` when the package is not installed). Found without
    importing the package, whose imports need tiktoken and more (the Makefile installs it --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    return path if path.is_file() else None


def _tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one ``base64(token bytes) rank`` per line (what tiktoken.load reads; parsed
    here so the tests need no tiktoken)."""
    import base64

    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _tiktoken_backend(path: Path, pattern: str, specials: list[str]):
    """The tokenizers backend transformers' TikTokenConverter makes of a tiktoken file, with ``pattern`` as
    its split regex and ``specials`` added after the ranks (read here, so the tests need no tiktoken)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _tiktoken_ranks(path)

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_url):
            return ranks

    return Converter(str(path), pattern=pattern, extra_special_tokens=specials).converted()


def llama3_real_tokenizer(path: Path):
    """Llama 3's tokenizer as Hugging Face ships it (tokenizer.json), converted from Meta's tiktoken file by
    transformers' own TikTokenConverter: the byte-level BPE with Llama 3's split regex, the 256 special
    tokens, BOS added by the post-processor, EOS = <|eot_id|> (the Instruct models'), and Llama 3.1's chat
    template (the matrix's)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = list(LLAMA3_SPECIALS) + [f"<|reserved_special_token_{2 + i}|>"
                                        for i in range(LLAMA3_N_SPECIAL - len(LLAMA3_SPECIALS))]
    # The converter's default pattern is Llama 3's (llama-models' Tokenizer.pat_str); passed explicitly so a
    # change of transformers' default cannot change the tokenizer silently.
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    backend = _tiktoken_backend(path, pattern, specials)
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, backend.token_to_id(bos))]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token="<|eot_id|>")
    tok.chat_template = (TEMPLATES / FAMILIES["llama3"].template).read_text()
    return tok


# -- Qwen2.5's real vocabulary (shipped by Alibaba's dashscope package as qwen.tiktoken) ---------------
# Qwen2.5's added tokens after the 151,643 BPE ranks, in id order: the first 14 special (control) tokens,
# the rest plain added tokens, as the released tokenizer.json declares them.
QWEN25_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN25_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>")
QWEN25_VOCAB_SIZE = 151936  # the models' embedding rows: the tokenizer's 151,665 ids padded


def qwen_tokenizer_model() -> Path | None:
    """dashscope's qwen.tiktoken (Qwen's 151,643 byte-level BPE ranks, the vocabulary Qwen2, Qwen2.5 and
    Qwen3 share), ``None`` when the package is not installed. Found without importing the package, whose
    imports need its network client dependencies (the Makefile installs it --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def qwen25_real_tokenizer(path: Path):
    """Qwen2.5's tokenizer as Hugging Face ships it (tokenizer.json), converted from the tiktoken ranks by
    transformers' TikTokenConverter: Qwen2's split regex (single digits), NFC normalization, no BOS,
    EOS = <|im_end|>, pad = <|endoftext|>, the 22 added tokens at their released ids, and the matrix's
    Qwen2.5 chat template."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    # dashscope's QwenTokenizer.PAT_STR (= Qwen2's tokenizer.json Split regex), passed explicitly.
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    backend = _tiktoken_backend(path, pattern, list(QWEN25_SPECIALS))
    backend.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(list(QWEN25_ADDED), special_tokens=False)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|file_sep|>"]) == [151643, 151664]
    tok.chat_template = (TEMPLATES / FAMILIES["qwen2"].template).read_text()
    return tok


# -- Mistral 7B v0.3's real SentencePiece model (shipped by Mistral's mistral-common package) --------------
def mistral_v3_tokenizer_model() -> Path | None:
    """mistral-common's v3 SentencePiece model (Mistral 7B v0.3: 32,768 pieces, 771 control pieces such as
    [INST], byte fallback): the file $HONING_MISTRAL_V3_MODEL names, else the one `make setup` took out of
    mistral-common's wheel (scripts/test_assets.py, into the venv's share/honing-tests), else the installed
    package's, else ``None``. The package is not installed --no-deps: with mistral-common importable but its
    tiktoken missing, transformers' AutoTokenizer fails on every Mistral model directory."""
    import importlib.util
    import os
    import sys

    name = "mistral_instruct_tokenizer_240323.model.v3"
    if os.environ.get("HONING_MISTRAL_V3_MODEL"):
        return Path(os.environ["HONING_MISTRAL_V3_MODEL"])
    fetched = Path(sys.prefix) / "share" / "honing-tests" / name
    if fetched.is_file():
        return fetched
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    return path if path.is_file() else None


def mistral_v3_tokenizer(model_file: Path, root: Path):
    """The tokenizer transformers makes of Mistral's tokenizer.model (as for a model directory that has only
    tokenizer.model), saved and loaded back as a run's ``final/`` holds it, with the matrix's Mistral chat
    template. Returns (tokenizer, its directory)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    src, saved = root / "mistral-src", root / "mistral-saved"
    src.mkdir(parents=True)
    shutil.copy(model_file, src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True}))
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.chat_template = (TEMPLATES / FAMILIES["mistral"].template).read_text()
    tok.save_pretrained(saved)
    return AutoTokenizer.from_pretrained(str(saved)), saved
