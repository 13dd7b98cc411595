#!/usr/bin/env bash
# Spark needs Java 17+. Install it when we may (root with apt-get); otherwise say how.
set -euo pipefail
if command -v java >/dev/null 2>&1 && java -version >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "java not found: installing openjdk-17-jre-headless (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
Spark needs a Java 17+ runtime and `java` is not on the PATH.
  Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless
  macOS:          brew install openjdk@17
Then run the make target again.
MSG
exit 1
