#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the distributed-Optuna tests and print
# its URL. Installs Debian's postgresql package when no server binaries are present.
set -euo pipefail
port=${PGPORT_CI:-5433}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
data=/tmp/optuna-ci-pgdata
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! run "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  rm -rf "$data" && mkdir -p "$data" && chown postgres "$data" 2>/dev/null || true
  run "$bin/initdb" -D "$data" -A trust -U postgres >&2
  run "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data" start >&2
fi
run "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='optuna_ci'" \
  | grep -q 1 || run "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna_ci
echo "postgresql://postgres@127.0.0.1:$port/optuna_ci"
