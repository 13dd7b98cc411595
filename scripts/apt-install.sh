#!/usr/bin/env bash
# apt-install.sh PACKAGE WHY: install a Debian package when we may (root with apt-get);
# otherwise say how, and fail. The ensure-*.sh scripts call it when their program is missing.
set -euo pipefail
package=$1 why=$2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "$why: installing the Debian package $package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
  exit 0
fi
cat >&2 <<MSG
$why, and this is not a root shell with apt-get.
  Debian/Ubuntu:  sudo apt-get install -y $package
Then run the make target again.
MSG
exit 1
