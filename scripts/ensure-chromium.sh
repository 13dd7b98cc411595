#!/usr/bin/env bash
# The browser tests (Dagster UI, data docs) drive Debian's Chromium through Playwright.
# Install it when we may (root with apt-get); otherwise say how.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found: installing it (Debian package) for the browser tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
The browser tests need Chromium and `chromium` is not on the PATH.
  Debian/Ubuntu:  sudo apt-get install -y chromium
Then run `make test` again.
MSG
exit 1
