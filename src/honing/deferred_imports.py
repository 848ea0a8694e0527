"""Defer a vetted list of heavy library modules that ``hone train`` imports but a one-process, non-QLoRA run
never uses, so that it starts sooner (docs/performance.md, "Time to first step", fourth round).

Importing transformers' Llama model imports ``torch.distributed.tensor`` and FSDP (``core_model_loading`` ->
``distributed.sharding_utils`` / ``distributed.fsdp``; ``generation.utils`` -> ``distributed.tensor_parallel``,
whose module code builds tensor-parallel plans with ``Replicate()`` / ``Shard()``), ``torch._dynamo``
(``masking_utils`` imports one class from it; transformers' kernels apply ``torch.compiler.disable`` /
``torch._dynamo.allow_in_graph`` at import) and ``scipy.optimize`` (the object-detection losses' matching);
PEFT imports bitsandbytes, which calls ``torch.compile`` at import (torch._dynamo again). A run of one process
calls none of them; on the 2-core EPYC they were ~2 of transformers' ~3 CPU s of import.

transformers imports them with ``from M import NAME``, which reads NAME from M and so defeats
``importlib.util.LazyLoader`` (any attribute access loads the module). Here each module of ``DEFERRED`` is put
in ``sys.modules`` as a *deferred* module: the same module object that its real code will later run in (as
LazyLoader does, so identity is kept), whose listed NAMEs are stand-ins, by kind:

* ``CALL``, a function or a class that is only called: runs the module's code at its first call, then calls the
  real one;
* ``CLASS``, a class also tested with ``isinstance`` (``DTensor``, ``FSDPModule``): ``isinstance`` /
  ``issubclass`` answer False while the module's code has not run (no instance can exist before its class
  does) and ask the real class afterwards; a call or any attribute read loads it;
* torch._dynamo's decorators applied at import, which matter only while compiling (and nothing can compile
  before torch._dynamo's code has run): ``disable`` returns a wrapper that calls the function directly until
  then and through the real ``disable`` after; ``allow_in_graph`` returns the function and is applied for real
  when the module loads; ``assume_constant_result`` sets the same mark as the real one; ``graph_break``
  (``torch.optim`` calls it at every step) does nothing until then.

Any other use of a deferred module (another attribute, a submodule not deferred itself, ``dir``) runs its real
code at once, transparently: a wrong or outdated list can cost the saving, not a failure (the test checks that
every listed name exists in the installed versions). Stand-ins bound by importers stay stand-ins after the load
and forward to the real objects; only an identity test (``type(x) is DTensor``) would tell them apart, and the
code that binds them makes none. Deferring ``distributed.tensor_parallel`` / ``expert_parallel`` also defers
their registrations into transformers' ``ALL_PARALLEL_STYLES``, read only when a tensor- or expert-parallel
plan is set or applied (several processes); a torch built without torch.distributed runs transformers without
them too. bitsandbytes is hidden (``HIDDEN``), not deferred: PEFT would load it at LoRA setup otherwise.

Installed by ``hone train`` (``honing.startup.prepare_imports``, before torch's import) for runs that need none
of these: not QLoRA (bitsandbytes), not under torchrun (``WORLD_SIZE`` > 1: DTensor, FSDP), not with
``HONING_DEFER_IMPORTS=0``. ``HONING_DEFER_IMPORTS=trace`` prints what loads a deferred module. The same finder,
installed for every ``hone train`` run (QLoRA and torchrun included, where it defers nothing), reads
transformers' index of its model folders from a cache (``AFTER_IMPORT``, honing.transformers_index).
Measured: with these, a LoRA run on the embedded model loads none of the deferred modules up to its exit (sympy
still loads during the model's construction on the meta device, through torch._refs).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types

CALL = "call"  # a function, or a class only ever called
CLASS = "class"  # a class that importers also test with isinstance / issubclass
DECORATOR = "decorator"  # torch._dynamo.disable, applied at import (torch.compiler.disable)
REPLAY = "replay"  # a registering decorator (allow_in_graph, at import in transformers' kernels): returns the
# function as it is, and is applied for real when the module's code runs (it only matters while compiling)
NO_OP = "no_op"  # torch._dynamo.graph_break: does nothing outside compilation (torch.optim calls it every step)
MARK_CONSTANT = "mark_constant"  # torch._dynamo.assume_constant_result, applied at import (transformers' deepgemm)

# module -> {name: kind}: what the importers on the Llama path bind with `from module import name` (torch 2.13,
# transformers 5.24, PEFT 0.21; found with HONING_DEFER_IMPORTS=trace). Packages in between
# (torch.distributed._composable, torch.distributed.checkpoint) are deferred too, with no names.
DEFERRED: dict[str, dict[str, str]] = {
    "torch._dynamo": {"disable": DECORATOR, "assume_constant_result": MARK_CONSTANT, "allow_in_graph": REPLAY,
                      "graph_break": NO_OP},
    "torch._dynamo._trace_wrapped_higher_order_op": {"TransformGetItemToIndex": CALL},
    "torch.distributed.tensor": {"DTensor": CLASS, "Partial": CLASS, "Replicate": CLASS, "Shard": CLASS,
                                 "distribute_tensor": CALL},
    "torch.distributed.tensor._utils": {"compute_local_shape_and_global_offset": CALL},
    "torch.distributed.tensor.placement_types": {"Shard": CLASS, "_StridedShard": CLASS},
    "torch.distributed._composable": {},
    "torch.distributed._composable.fsdp": {"fully_shard": CALL},
    "torch.distributed.fsdp": {"CPUOffloadPolicy": CALL, "MixedPrecisionPolicy": CALL,
                               "FullyShardedDataParallel": CLASS, "FSDPModule": CLASS},
    "scipy.optimize": {"linear_sum_assignment": CALL},
    # Its module code decorates kernels with torch._dynamo.allow_in_graph; CUDA-only FP8/MoE kernels.
    "transformers.integrations.deepgemm": {name: CALL for name in (
        "deepgemm_bf16_experts_forward", "deepgemm_fp8_fp4_experts_forward", "deepgemm_fp8_fp4_linear",
        "deepgemm_fp8_fp4_megamoe_experts_forward", "is_deepgemm_loadable", "is_sm100")},
    "transformers.integrations.sonicmoe": {"sonicmoe_experts_forward": CALL},
    # Registers expert-parallel styles (Shard(0) ...), which needs torch.distributed.tensor.
    "transformers.distributed.expert_parallel": {"apply_expert_parallelism": CALL, "MoEParamShard": CALL},
    # Distributed checkpoints (transformers.distributed.checkpoint binds the Hugging Face storage classes).
    "torch.distributed.checkpoint": {},
    "torch.distributed.checkpoint.hf_storage": {"HuggingFaceStorageReader": CLASS, "HuggingFaceStorageWriter": CLASS},
    # Its module code builds tensor-parallel plans (Replicate(), Shard(...)), which needs torch.distributed.tensor.
    "transformers.distributed.tensor_parallel": {"get_kv_heads_per_rank": CALL, "verify_tp_plan": CALL,
                                                 "apply_tensor_parallelism": CALL, "gather_state_dict_for_save": CALL},
}

# Attributes the import system reads from a module without using its contents.
_IMPORT_ATTRIBUTES = frozenset({
    "__name__", "__spec__", "__loader__", "__package__", "__path__", "__file__", "__cached__", "__dict__",
    "__class__", "__setattr__", "__getattribute__", "__repr__",
})
_lock = threading.RLock()
_replays: dict[str, list] = {}  # module -> [(name, args)] of REPLAY stand-ins called before its code ran
_loaded: list[str] = []  # deferred modules whose code has run, in order (for tests and the trace)


class _DeferredModule(types.ModuleType):
    def __getattribute__(self, attr):
        if attr in _IMPORT_ATTRIBUTES:
            return object.__getattribute__(self, attr)
        name = object.__getattribute__(self, "__name__")
        standin = _STANDINS.get(name, {}).get(attr)
        if standin is not None:
            return standin
        _run_real_code(self)
        return getattr(self, attr)

    def __dir__(self):
        _run_real_code(self)
        return dir(self)


def _run_real_code(module: types.ModuleType) -> None:
    """Turn a deferred module into the real one, in place (the same object stays in sys.modules)."""
    with _lock:
        if type(module) is not _DeferredModule:
            return  # already run (by another thread, or re-entered from its own code)
        real_spec = object.__getattribute__(module, "__spec__").loader_state
        module.__class__ = types.ModuleType
        module.__spec__ = real_spec
        module.__loader__ = real_spec.loader
        _loaded.append(real_spec.name)
        if os.environ.get("HONING_DEFER_IMPORTS") == "trace":
            print(f"[deferred import] {real_spec.name} loaded by {_first_user()}", file=sys.stderr)
        real_spec.loader.exec_module(module)
        for attr, args in _replays.pop(real_spec.name, []):
            getattr(module, attr)(*args)


def _first_user() -> str:
    """The innermost frame outside this module and the import system: what used the deferred module."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename in (__file__,) or "importlib" in frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "?"
    import linecache

    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}: {line}"


def _module_if_run(module_name: str) -> types.ModuleType | None:
    module = sys.modules.get(module_name)
    return None if module is None or type(module) is _DeferredModule else module


def _real(module_name: str, attr: str):
    module = sys.modules.get(module_name)
    if module is None:  # removed from sys.modules by someone: import it afresh
        import importlib

        module = importlib.import_module(module_name)
    _run_real_code(module)
    return getattr(module, attr)


def _call_standin(module_name: str, attr: str):
    def standin(*args, **kwargs):
        return _real(module_name, attr)(*args, **kwargs)

    standin.__name__ = standin.__qualname__ = attr
    standin.__module__ = module_name
    standin.__doc__ = f"Stand-in for {module_name}.{attr}: loads that module at the first call (honing.deferred_imports)."
    return standin


class _DeferredClassMeta(type):
    def __instancecheck__(cls, obj):
        module = _module_if_run(cls._deferred_module)
        return module is not None and isinstance(obj, getattr(module, cls._deferred_name))

    def __subclasscheck__(cls, sub):
        module = _module_if_run(cls._deferred_module)
        return module is not None and issubclass(sub, getattr(module, cls._deferred_name))

    def __call__(cls, *args, **kwargs):
        return _real(cls._deferred_module, cls._deferred_name)(*args, **kwargs)

    def __getattr__(cls, attr):  # only for attributes the stand-in itself lacks
        if attr.startswith("_deferred_"):
            raise AttributeError(attr)
        return getattr(_real(cls._deferred_module, cls._deferred_name), attr)


def _class_standin(module_name: str, attr: str):
    return _DeferredClassMeta(attr, (), {"_deferred_module": module_name, "_deferred_name": attr,
                                         "__module__": module_name})


def _dynamo_disable_standin(module_name: str, attr: str):
    """``torch._dynamo.disable`` as ``@torch.compiler.disable`` applies it at import (transformers' continuous
    batching cache): the decorated function runs as it is while torch._dynamo's code has not run (nothing can
    be compiling then), and through the real ``disable`` wrapper, made at its first call, afterwards. Any
    other form (no function, a class) loads torch._dynamo at once."""

    def disable(fn=None, recursive=True, **kwargs):
        if fn is None and recursive is False:  # @torch.compiler.disable(recursive=False): a decorator
            return lambda f: disable(f, recursive, **kwargs)
        if fn is None or isinstance(fn, type) or not callable(fn):
            return _real(module_name, attr)(fn, recursive, **kwargs)
        disabled = []

        @functools.wraps(fn)
        def deferred_disable(*args, **kw):
            if _module_if_run(module_name) is None:
                return fn(*args, **kw)
            if not disabled:
                disabled.append(_real(module_name, attr)(fn, recursive, **kwargs))
            return disabled[0](*args, **kw)

        return deferred_disable

    disable.__module__ = module_name
    return disable


def _assume_constant_result_standin(module_name: str, attr: str):
    """``torch._dynamo.assume_constant_result`` marks the function and returns it (torch 2.6-2.13, checked by
    tests/test_deferred_imports.py); the mark is only read while compiling, by the real module."""

    def assume_constant_result(fn):
        fn._dynamo_marked_constant = True
        return fn

    assume_constant_result.__module__ = module_name
    return assume_constant_result


def _replay_standin(module_name: str, attr: str):
    def register(fn):
        with _lock:
            module = _module_if_run(module_name)
            if module is not None:
                return getattr(module, attr)(fn)
            _replays.setdefault(module_name, []).append((attr, (fn,)))
        return fn

    register.__name__ = register.__qualname__ = attr
    register.__module__ = module_name
    return register


def _no_op_standin(module_name: str, attr: str):
    """A function that does something only while compiling: nothing while the module's code has not run."""

    def no_op(*args, **kwargs):
        module = _module_if_run(module_name)
        return None if module is None else getattr(module, attr)(*args, **kwargs)

    no_op.__name__ = no_op.__qualname__ = attr
    no_op.__module__ = module_name
    return no_op


_MAKERS = {CALL: _call_standin, CLASS: _class_standin, DECORATOR: _dynamo_disable_standin, REPLAY: _replay_standin,
           NO_OP: _no_op_standin, MARK_CONSTANT: _assume_constant_result_standin}
_STANDINS: dict[str, dict[str, object]] = {
    module: {attr: _MAKERS[kind](module, attr) for attr, kind in names.items()} for module, names in DEFERRED.items()
}


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _DeferredModule(spec.name)

    def exec_module(self, module):
        pass  # the real code runs at the first use (_run_real_code)


# module -> function(module) applied right after the module's own code has run (and before its importer
# continues): transformers' index of its model folders, read from a cache (honing.transformers_index).
AFTER_IMPORT = {"transformers.utils.import_utils": ("honing.transformers_index", "patch")}


class _ThenPatch(importlib.abc.Loader):
    """The real loader, then the AFTER_IMPORT function; the module keeps its real loader afterwards."""

    def __init__(self, real_loader):
        self.real_loader = real_loader

    def create_module(self, spec):
        return self.real_loader.create_module(spec)

    def exec_module(self, module):
        real_loader = self.real_loader
        module.__spec__.loader = module.__loader__ = real_loader
        real_loader.exec_module(module)
        where, name = AFTER_IMPORT[module.__name__]
        with contextlib.suppress(Exception):  # a speed-up only: never a reason for an import to fail
            getattr(importlib.import_module(where), name)(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.defer = False  # DEFERRED applies (install(defer=True)); AFTER_IMPORT always does

    def find_spec(self, fullname, path, target=None):
        if fullname in AFTER_IMPORT:
            pass
        elif not self.defer:
            return None
        elif fullname not in DEFERRED:
            return self._after_deferred_parent(fullname)
        real = self._real_spec(fullname, path, target)
        if real is None or real.loader is None or not hasattr(real.loader, "exec_module"):
            return None  # not installed, a namespace package, or an old-style loader: import as usual
        if fullname in AFTER_IMPORT:
            real.loader = _ThenPatch(real.loader)  # (the spec is this import's own; exec_module puts the loader back)
            return real
        spec = importlib.machinery.ModuleSpec(fullname, _LOADER, origin=real.origin,
                                              loader_state=real, is_package=real.submodule_search_locations is not None)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec

    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            real = finder.find_spec(fullname, path, target)
            if real is not None:
                return real
        return None

    @staticmethod
    def _after_deferred_parent(fullname):
        """A module that is not deferred, inside a deferred package: the package's code runs first, as in an
        ordinary import (its submodules may depend on it, or import each other in its order)."""
        parent = sys.modules.get(fullname.rpartition(".")[0])
        if parent is None or type(parent) is not _DeferredModule:
            return None
        _run_real_code(parent)
        module = sys.modules.get(fullname)
        if module is None:
            return None  # the package did not import it: the usual finders do
        # The package's code imported it: hand that module back (the import system would otherwise run its
        # code a second time).
        return importlib.machinery.ModuleSpec(fullname, _AlreadyImported(), loader_state=module)


class _AlreadyImported(importlib.abc.Loader):
    def create_module(self, spec):
        module = spec.loader_state
        spec.loader_state = getattr(module, "__spec__", None)  # put back after the import system replaces it
        return module

    def exec_module(self, module):
        real_spec = module.__spec__.loader_state
        if real_spec is not None:
            module.__spec__ = real_spec


_LOADER = _Loader()
_FINDER = _Finder()


def wanted(method: str, environ=None) -> bool:
    """Whether a run defers these imports: one process, not QLoRA, and not switched off."""
    env = os.environ if environ is None else environ
    if env.get("HONING_DEFER_IMPORTS", "1") == "0" or method == "qlora":
        return False
    try:
        return int(env.get("WORLD_SIZE", "1")) <= 1
    except ValueError:
        return False


# Hidden (as if not installed) rather than deferred: PEFT imports bitsandbytes when it is installed, and
# bitsandbytes wraps its CPU kernels in torch.compile at import, which imports torch._dynamo (and through it
# torch.distributed's FSDP and DTensor, sympy): nothing above could stay deferred. PEFT only uses it for
# quantized base layers (QLoRA, where this module is not installed); PEFT and transformers ask
# importlib.util.find_spec, which answers None for a module that sys.modules holds as None.
HIDDEN = ("bitsandbytes",)


def install(defer: bool = True) -> bool:
    """Install the finder: AFTER_IMPORT always; with ``defer``, also defer the listed modules not imported yet
    and hide HIDDEN. Returns ``defer``."""
    if defer:
        for name in HIDDEN:
            if name not in sys.modules:
                sys.modules[name] = None
        _FINDER.defer = True
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return defer


def uninstall() -> None:
    """Stop deferring new imports (modules already deferred stay so until used)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def loaded() -> list[str]:
    """The deferred modules whose real code has run so far, in order."""
    return list(_loaded)
