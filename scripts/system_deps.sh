#!/bin/sh
# System packages the test suite uses beyond Python: PostgreSQL (tests/test_serve_postgres.py starts a
# throwaway cluster), Chromium + its driver (the dashboard's browser test) and bubblewrap (the sandbox
# that python graders run in: src/honing/graders/sandbox.py). Idempotent: installs only
# what is missing, and only as root with apt-get; otherwise says so and exits 0 (those tests then skip
# with a message naming this script).
set -u
missing=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
if [ -z "$missing" ]; then
    echo "system_deps: postgresql, chromium, chromium-driver and bubblewrap are installed"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: missing:$missing; cannot install (needs root and apt-get); the tests that need them will skip"
    exit 0
fi
echo "system_deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update -q && apt-get install -y --no-install-recommends $missing \
        || echo "system_deps: could not install$missing; the tests that need them will skip"
fi
exit 0
