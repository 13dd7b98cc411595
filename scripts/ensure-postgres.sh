#!/usr/bin/env bash
# The ops store's tests run against a real PostgreSQL server, which the fixtures start on
# loopback from Debian's package (tests/ops/postgres.py). Install it when we may (root with
# apt-get); otherwise say how. The package's own cluster service is not used.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL not found: installing it (Debian package) for the ops store tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
The ops store tests need PostgreSQL's server programs (/usr/lib/postgresql/<version>/bin).
  Debian/Ubuntu:  sudo apt-get install -y postgresql
Then run `make test` again.
MSG
exit 1
