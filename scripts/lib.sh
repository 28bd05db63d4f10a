# Shared helpers for scripts/demo.sh, scripts/test.sh and bench/bench.sh. Source it.
# Everything here installs only what is missing, so a second run is fast.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=/usr/bin/pg_config
PGRX_VERSION=0.18.1
APT_PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo pgbouncer)

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian starts a cluster on 5432 when the server package is installed; we never use it.
}

ensure_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        say "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

ensure_python() {
    local venv="$ROOT/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating Python venv for tests"
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "import psycopg, joserfc, pytest, sqlalchemy, django, strawberry_django" 2>/dev/null; then
        say "installing psycopg, joserfc, pytest, SQLAlchemy, Django, strawberry-django"
        "$venv/bin/pip" install -q -r "$ROOT/tests/requirements.txt"
    fi
    # the client package (clients/python), editable: the tests use the checkout's code
    if ! "$venv/bin/python" -c "import koherent_pg.sqlalchemy, koherent_pg.django" 2>/dev/null || [ "$ROOT/clients/python/pyproject.toml" -nt "$venv/.koherent-pg" ]; then
        say "installing koherent-pg (clients/python)"
        "$venv/bin/pip" install -q -e "$ROOT/clients/python[sqlalchemy,django,strawberry]"
        touch "$venv/.koherent-pg"
    fi
}

# The reference verifier (authentikate, Python >= 3.12) for tests/test_verifier_differential.py,
# in its own venv: the project venv's Python is too old for it.
ensure_authentikate_venv() {
    local venv="$ROOT/.venv-authentikate"
    local python=${KOHERENT_PYTHON312:-/root/.pyenv/versions/3.12.1/bin/python3}
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import authentikate.provenance.decode" 2>/dev/null; then
        return 0
    fi
    if [ ! -x "$python" ]; then
        python=$(command -v python3.12 || true)
    fi
    if [ -z "$python" ] || [ ! -x "$python" ]; then
        echo "ensure_authentikate_venv: Python 3.12 not found (set KOHERENT_PYTHON312)" >&2
        return 1
    fi
    say "creating the authentikate venv for the differential test"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --no-deps -r "$ROOT/tests/requirements-differential.txt"
    # settings are configured by the helper; this only checks that the closure imports
    "$venv/bin/python" -c "from django.conf import settings; settings.configure(); import authentikate.provenance.decode" >/dev/null
}

ensure_node() {
    if [ ! -d "$ROOT/graphql/node_modules/postgraphile" ] || [ ! -d "$ROOT/graphql/node_modules/pg" ]; then
        say "installing PostGraphile 4 and node-postgres (npm ci)"
        (cd "$ROOT/graphql" && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Build the extension (release) and install it into the server's directories.
install_extension() {
    say "building and installing the koherent extension"
    (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
}

build_cli() {
    (cd "$ROOT" && cargo build --release -q -p koherent-cli)
    KOHERENT="$ROOT/target/release/koherent"
}

# start_cluster DIR PORT [extra postgres -c options...]: a throwaway cluster owned by postgres.
start_cluster() {
    local dir=$1 port=$2
    shift 2
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_root install -d -o postgres -g postgres "$dir"
        as_root runuser -u postgres -- "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "port = $port"
            echo "unix_socket_directories = '$dir'"
            echo "fsync = on"
            for o in "$@"; do echo "$o"; done
        } | as_root tee -a "$dir/postgresql.conf" >/dev/null
    fi
    if ! as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is in use by another server; stop it first" >&2
            return 1
        fi
        as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    fi
}

stop_cluster() {
    local dir=$1
    if [ -f "$dir/postmaster.pid" ]; then
        as_root runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
