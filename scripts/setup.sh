#!/usr/bin/env bash
# Install what Stella needs on a fresh Debian machine. Idempotent: re-running installs only what is missing.
#   scripts/setup.sh          the virtual environment with the core and every plugin (enough for the demo)
#   scripts/setup.sh --test   also what the tests use: the CNCF registry, skopeo, Node.js (tests/js: an
#                             independent Sigstore verifier and a Sigstore stand-in), Chromium (report tests),
#                             a Docker Engine and a static busybox (the docker agent plugin's tests),
#                             Debian's PostgreSQL (the fleet's tests start a throwaway cluster of their own)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TEST=0
need_postgres=0
[ "${1:-}" = "--test" ] && TEST=1

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
if [ "$TEST" = 1 ]; then
    [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
    command -v skopeo >/dev/null || need_apt+=(skopeo)
    # A Docker Engine for the agent's end-to-end tests (any dockerd will do; Debian's is docker.io), and a
    # static busybox to build the tiny image they run (tests/support/busybox_image.py).
    { command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ]; } || need_apt+=(docker.io)
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || need_apt+=(busybox-static)
    command -v chromium >/dev/null || need_apt+=(chromium)
    { command -v node >/dev/null && command -v npm >/dev/null; } || need_apt+=(nodejs npm)
    # PostgreSQL's server binaries for the fleet's tests (tests/support/postgres.py runs initdb itself).
    # postgresql-common first, so that the package makes no cluster of its own (below): on a machine
    # without systemd that cluster could fail to start and fail the install, and the tests never use it.
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        need_postgres=1
        command -v pg_conftool >/dev/null || need_apt+=(postgresql-common)
    fi
fi
if [ ${#need_apt[@]} -gt 0 ] || [ "$need_postgres" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        missing="${need_apt[*]}"
        [ "$need_postgres" = 1 ] && missing="$missing postgresql"
        echo "setup: missing system packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#need_apt[@]} -gt 0 ]; then
        echo "setup: apt-get install ${need_apt[*]}"
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
fi
if [ "$need_postgres" = 1 ]; then
    # With create_main_cluster off, postgresql-NN's postinst makes no "main" cluster (configure_version
    # in postgresql-common's maintscripts-functions), so there is nothing to start and nothing on 5432.
    if [ -z "$(pg_conftool /etc/postgresql-common/createcluster.conf show -bs create_main_cluster 2>/dev/null)" ]; then
        pg_conftool /etc/postgresql-common/createcluster.conf set create_main_cluster false
    fi
    echo "setup: apt-get install postgresql"
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
        echo "setup: postgresql was installed but no /usr/lib/postgresql/*/bin/initdb exists" >&2
        exit 2
    }
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=23" >/dev/null
echo "setup: installing stella-reconciler and its plugins into $VENV"
plugins=()
for p in plugins/*/; do plugins+=(-e "$p"); done
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" "${plugins[@]}"
touch "$VENV/.installed"

if [ "$TEST" = 1 ]; then
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$node_major" -lt 20 ]; then
        echo "setup: warning: node $(node --version) is older than the 20.17 that tests/js supports" >&2
    fi
    if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
        echo "setup: npm ci in tests/js"
        npm ci --no-audit --no-fund --prefix tests/js >/dev/null
    fi
    touch "$VENV/.installed-test"
fi
