#!/usr/bin/env bash
# Install everything Stella's demo, tests and benchmarks need on a fresh Debian machine:
# system packages (when missing), a virtual environment with the core and its plugins.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
if [ "${STELLA_SETUP_MINIMAL:-0}" != 1 ]; then
    [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
    command -v skopeo >/dev/null || need_apt+=(skopeo)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing system packages: ${need_apt[*]} (run as root, or: sudo apt-get install ${need_apt[*]})" >&2
        exit 2
    fi
    echo "setup: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=23" >/dev/null
echo "setup: installing stella-reconciler and plugins into $VENV"
plugins=()
for p in plugins/*/; do plugins+=(-e "$p"); done
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" "${plugins[@]}"

# The independent Sigstore verifier the tests use (tests/js: @sigstore/verify, pinned by its
# package-lock.json). Node 20.17 or newer is what that version supports.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing nodejs/npm (run as root, or: sudo apt-get install nodejs npm)" >&2
        exit 2
    fi
    echo "setup: apt-get install nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "setup: warning: node $(node --version) is older than the 20.17 that tests/js supports" >&2
fi
if [ ! -d tests/js/node_modules ]; then
    echo "setup: npm ci in tests/js"
    npm ci --no-audit --no-fund --prefix tests/js
fi

touch "$VENV/.installed"
