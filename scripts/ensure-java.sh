#!/usr/bin/env bash
# Spark needs Java 17+ (macOS: brew install openjdk@17).
set -euo pipefail
if command -v java >/dev/null 2>&1 && java -version >/dev/null 2>&1; then
  exit 0
fi
exec "$(dirname "$0")/apt-install.sh" openjdk-17-jre-headless "Spark needs a Java 17+ runtime and java is not on the PATH"
