"""honing.deferred_imports: `hone train` defers torch._dynamo, torch.distributed's DTensor/FSDP, scipy.optimize
and a few transformers modules that a one-process run never uses (docs/performance.md, "Time to first step",
fourth round). Checked in a fresh interpreter (the finder changes the process's import state)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# In a fresh process: defer, import what `hone train` imports, train a tiny Llama with PEFT's LoRA for a step,
# generate; then use every deferred module for real and check the stand-ins against the real objects.
_SCRIPT = r"""
import importlib, json, sys
from honing.startup import defer_unused_imports
assert defer_unused_imports("lora", {})
import torch, transformers.models.llama.modeling_llama, peft
from honing import deferred_imports as d
from transformers import LlamaConfig, LlamaForCausalLM
out = {"after_imports": d.loaded(), "sympy_loaded": "sympy" in sys.modules}
torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
model = peft.get_peft_model(LlamaForCausalLM(config), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
ids = torch.arange(3, 19).unsqueeze(0)
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
out["after_step"] = d.loaded()
out["generated"] = model.generate(input_ids=ids[:, :4], max_new_tokens=2, do_sample=False).shape[1]

from torch.distributed.tensor import DTensor as standin
out["isinstance_before_load"] = isinstance(torch.zeros(1), standin)
import torch._dynamo  # a real use: the module's code runs, transparently
out["dynamo_config"] = torch._dynamo.config.__name__
missing = []
for module_name, names in d.DEFERRED.items():
    module = importlib.import_module(module_name)
    dir(module)  # any use but the stand-ins' runs the module's code
    assert type(module) is type(sys), module_name
    missing += [f"{module_name}.{n}" for n in names if not hasattr(module, n)]
out["missing"] = missing
import torch.distributed.tensor as real
out["isinstance_after_load"] = isinstance(torch.zeros(1), standin) or issubclass(real.DTensor, standin)
out["graph_break_is_no_op"] = torch._dynamo.graph_break() is None
marked = torch._dynamo.assume_constant_result(lambda: 1)
out["real_marks_like_standin"] = getattr(marked, "_dynamo_marked_constant", False)
import scipy.optimize
out["scipy_real"] = scipy.optimize.linear_sum_assignment([[1, 0], [0, 1]])[1].tolist()
print("RESULT" + json.dumps(out))
"""


def test_deferred_modules_stay_unloaded_through_a_lora_step_and_load_when_used():
    env = {k: v for k, v in os.environ.items() if k not in ("HONING_DEFER_IMPORTS", "WORLD_SIZE")}
    env["TORCHDYNAMO_DISABLE"] = "1"  # as `hone train` sets it (honing.startup.skip_compiler_imports)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], check=False, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["after_imports"] == [] and not out["sympy_loaded"]
    assert out["after_step"] == []  # nothing deferred was needed by a LoRA step
    assert out["generated"] == 6
    assert out["isinstance_before_load"] is False
    assert out["dynamo_config"] == "torch._dynamo.config"
    assert out["missing"] == []  # every stand-in names a real object (fails on a torch/transformers rename)
    assert out["isinstance_after_load"] is True  # issubclass(real DTensor, stand-in) once loaded
    assert out["graph_break_is_no_op"] and out["real_marks_like_standin"] is True
    assert out["scipy_real"] == [1, 0]


def test_only_one_process_non_qlora_runs_defer():
    from honing.deferred_imports import wanted

    assert wanted("lora", {}) and wanted("full", {"WORLD_SIZE": "1"})
    assert not wanted("qlora", {})  # bitsandbytes' compiled kernels need torch._dynamo
    assert not wanted("lora", {"WORLD_SIZE": "2"})  # torchrun: DTensor, FSDP
    assert not wanted("lora", {"HONING_DEFER_IMPORTS": "0"})


def test_transformers_model_index_cache_gives_transformers_own_answer(tmp_path, monkeypatch):
    """honing.transformers_index: the cached index of transformers' model folders equals the one transformers
    builds; it is read back while the files are unchanged and rebuilt when one changes."""
    from transformers.utils import import_utils

    from honing import transformers_index

    monkeypatch.setenv("HONING_CACHE_DIR", str(tmp_path / "cache"))
    build = import_utils.create_import_structure_from_path  # (transformers' lru_cache: one walk in this test)
    root = os.path.join(os.path.dirname(import_utils.__file__), "..", "models")
    root = os.path.normpath(root)
    calls = []

    def counted(path):
        calls.append(path)
        return build(path)

    first = transformers_index.cached(counted, root, "test")
    again = transformers_index.cached(counted, root, "test")
    assert len(calls) == 1 and again == first == build(root)
    assert frozenset({"torch"}) in first["llama"] and "modeling_llama" in first["llama"][frozenset({"torch"})]

    tree = tmp_path / "models"  # a changed file invalidates the cache
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.py").write_text("__all__ = ['X']\n")
    fake = [{"a": {frozenset(): {"x": {"X"}}}}, {"a": {frozenset(): {"x": {"X", "Y"}}}}]
    assert transformers_index.cached(lambda _p: fake[0], str(tree), "test") == fake[0]
    assert transformers_index.cached(lambda _p: fake[1], str(tree), "test") == fake[0]  # unchanged: cached
    (tree / "a" / "x.py").write_text("__all__ = ['X', 'Y']\n")
    assert transformers_index.cached(lambda _p: fake[1], str(tree), "test") == fake[1]


def test_a_qlora_run_gets_the_index_cache_but_defers_nothing():
    import scipy
    import transformers.utils

    from honing import deferred_imports

    finder = deferred_imports._Finder()  # as install(defer=False) leaves it
    assert finder.find_spec("scipy.optimize", scipy.__path__) is None
    spec = finder.find_spec("transformers.utils.import_utils", transformers.utils.__path__)
    assert spec is not None and isinstance(spec.loader, deferred_imports._ThenPatch)
    finder.defer = True  # as install(defer=True) leaves it
    assert isinstance(finder.find_spec("scipy.optimize", scipy.__path__).loader, deferred_imports._Loader)
