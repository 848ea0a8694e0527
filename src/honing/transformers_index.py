"""A cache of transformers' index of its model folders, for ``hone train``'s start (docs/performance.md, "Time
to first step", fourth round).

``import transformers`` builds the lazy import table of ``transformers.models`` by reading every file of its
~560 model folders for their ``__all__`` and ``@requires`` lines
(``transformers.utils.import_utils.create_import_structure_from_path``): ~0.27 CPU s on the 2-core EPYC, at
every start, for the same answer. The answer depends on nothing but those files, so it is kept in
``$HONING_CACHE_DIR/imports/`` with a fingerprint of them (every ``.py`` file's path, size and mtime, ~0.02 s
to take) and read back when the fingerprint matches; otherwise transformers reads the files as usual and the
cache is rewritten. Only the ``models`` folder's index is cached; any other path goes to transformers' own
function. ``patch(module)`` is applied by honing.deferred_imports's finder right after
``transformers.utils.import_utils`` has run, before transformers' ``__init__`` calls it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT = 1


def _fingerprint(root: str) -> str:
    digest = hashlib.sha256(f"{FORMAT}:{root}".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                digest.update(f"{dirpath[len(root):]}/{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def _encode(structure: dict) -> dict:
    """JSON form: sub-folders by name, backends (frozensets) as sorted lists, exported names sorted."""
    folders, backends = {}, []
    for key, value in structure.items():
        if isinstance(key, frozenset):
            backends.append([sorted(key), {module: sorted(names) for module, names in value.items()}])
        else:
            folders[key] = _encode(value)
    return {"folders": folders, "backends": backends}


def _decode(data: dict) -> dict:
    structure: dict = {name: _decode(sub) for name, sub in data["folders"].items()}
    for backends, modules in data["backends"]:
        structure[frozenset(backends)] = {module: set(names) for module, names in modules.items()}
    return structure


def _cache_path(root: str, version: str) -> Path:
    from honing.models.catalog import cache_root

    tag = hashlib.sha256(root.encode()).hexdigest()[:12]
    return cache_root() / "imports" / f"transformers-{version}-{tag}.json"


def cached(build, root: str, version: str) -> dict:
    """``build(root)`` (transformers' own walk), or its cached result when the files are unchanged."""
    fingerprint = _fingerprint(root)
    path = _cache_path(root, version)
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") == fingerprint:
            return _decode(data["structure"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # absent, unreadable or of another format: build it
    structure = build(root)
    try:
        from honing.fileio import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"fingerprint": fingerprint, "structure": _encode(structure)})
    except OSError:  # a read-only cache dir: transformers builds it again next time
        pass
    return structure


def patch(import_utils) -> None:
    """Route transformers' index of its ``models`` folder through ``cached`` (same result, in-process memo as
    transformers' own ``lru_cache``). Leaves the module alone when its function is not the expected one."""
    original = getattr(import_utils, "create_import_structure_from_path", None)
    if original is None or not hasattr(original, "cache_clear"):
        return
    models_root = os.path.join(os.path.dirname(os.path.dirname(import_utils.__file__)), "models")
    version = _transformers_version(import_utils)
    memo: dict[str, dict] = {}

    def create_import_structure_from_path(module_path):
        path = os.fspath(module_path)
        if os.path.isfile(path):
            path = os.path.dirname(path)
        if os.path.normpath(path) != os.path.normpath(models_root) or version is None:
            return original(module_path)
        if path not in memo:
            memo[path] = cached(original, path, version)
        return memo[path]

    create_import_structure_from_path.__wrapped__ = original
    create_import_structure_from_path.cache_clear = lambda: (memo.clear(), original.cache_clear())
    import_utils.create_import_structure_from_path = create_import_structure_from_path


def _transformers_version(import_utils) -> str | None:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # noqa: BLE001 - no metadata (a source checkout): no cache
        return None
