#!/usr/bin/env bash
# The ops store's tests run against a real PostgreSQL server, which the fixtures start on
# loopback from Debian's server programs (tests/ops/postgres.py); the package's own cluster
# service is not used.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  exit 0
fi
exec "$(dirname "$0")/apt-install.sh" postgresql "The ops store tests need PostgreSQL's server programs (/usr/lib/postgresql/<version>/bin)"
