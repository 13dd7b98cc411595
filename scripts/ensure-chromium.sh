#!/usr/bin/env bash
# The browser tests (Dagster UI, data docs) drive Debian's Chromium through Playwright.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
exec "$(dirname "$0")/apt-install.sh" chromium "The browser tests need Chromium and chromium is not on the PATH"
