"""The adapter as vLLM / LoRAX load it (``--lora-modules NAME=DIR``), plus the command that serves it.

A PEFT adapter directory is already the format: ``adapter_config.json`` + ``adapter_model.safetensors``
(+ the run's tokenizer, which vLLM uses for that adapter when present). What is checked here is what
vLLM refuses at load time: DoRA, fully trained extra modules, ranks above its largest supported one.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from honing.errors import ModelError

# vLLM's --max-lora-rank accepts these values; the serve command picks the smallest that fits.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def check_vllm_adapter(adapter_config: dict) -> None:
    if adapter_config.get("use_dora"):
        raise ModelError("vLLM cannot load DoRA adapters (adapter_config use_dora); export the merged model "
                         "(format 'hf') and serve that, or use format 'peft'")
    if adapter_config.get("modules_to_save"):
        raise ModelError("vLLM cannot load adapters with fully trained modules (adapter_config modules_to_save)")
    if int(adapter_config["r"]) > VLLM_RANKS[-1]:
        raise ModelError(f"vLLM supports LoRA ranks up to {VLLM_RANKS[-1]}; this adapter has r={adapter_config['r']}")


def copy_adapter(final_dir: Path, out: Path, base_path: str) -> dict:
    """The adapter files (and tokenizer) into ``out``; ``base_model_name_or_path`` names the base model."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES + TOKENIZER_FILES:
        if (final_dir / name).is_file():
            shutil.copy2(final_dir / name, out / name)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_path
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return config


def serve_script(base_path: str, name: str, adapter_rel: str, rank: int) -> str:
    max_rank = next(r for r in VLLM_RANKS if r >= rank)
    return (
        "#!/usr/bin/env bash\n"
        "# Serve the base model with this fine-tune as a LoRA adapter (OpenAI-compatible API on :8000).\n"
        f"# Then: curl localhost:8000/v1/chat/completions -d '{{\"model\": \"{name}\", \"messages\": [...]}}'\n"
        'cd "$(dirname "$0")"\n'
        f"exec vllm serve {shlex.quote(base_path)} --enable-lora --max-lora-rank {max_rank} \\\n"
        f"    --lora-modules {shlex.quote(name)}={shlex.quote(adapter_rel)} \"$@\"\n"
    )
