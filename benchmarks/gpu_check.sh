#!/usr/bin/env bash
# The GPU check in one call: what it runs and writes is in benchmarks/gpu_check.py's docstring and in
# docs/performance.md ("The GPU check"). On the lent GPU machine, from the repository root, with
# .gpu-carry/ (made here by `python benchmarks/gpu_check.py prepare`) carried along:
#     bash benchmarks/gpu_check.sh                  # results in $OUT, else benchmarks/results/gpu-check
# Extra arguments go to `gpu_check.py run`; the CPU rehearsal, in a venv like the GPU machine's:
#     PYTHON=/tmp/venv-gpusim/bin/python bash benchmarks/gpu_check.sh --device cpu --tiny --budget-s 3600 --out /tmp/gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CARRY=${HONING_GPU_CARRY:-.gpu-carry}
SITE=${HONING_GPU_SITE:-/tmp/honing-site}
if [ ! -d "$CARRY/wheels" ]; then
  echo "no $CARRY/wheels here: run 'python benchmarks/gpu_check.py prepare' where pip reaches the registry," \
       "and carry $CARRY along" >&2
  exit 2
fi
rm -rf "$SITE"
# The packages the machine lacks, as wheels; then Honing itself without its dependencies, so the machine's
# own torch, transformers and peft stay; built offline, with the carried setuptools.
# (One pip call: a second --target install into the same folder would leave its bin/ alone, hone included.)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links "$CARRY/build" \
  --target "$SITE" "$CARRY"/wheels/*.whl .
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
exec "$PY" benchmarks/gpu_check.py run --carry "$CARRY" "$@"
