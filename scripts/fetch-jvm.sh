#!/usr/bin/env bash
# Fetch the pinned JVM artifacts (jvm/pom.xml) with Maven into .jvm/jars, once per change of the
# pin list. Jars PySpark already ships (Hadoop, Parquet, Jackson, Scala, ...) are left out so the
# session never has two versions of a library on its class path. Run at install time only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.jvm/jars
stamp=.jvm/.fetched
if [ -f "$stamp" ] && [ "$stamp" -nt jvm/pom.xml ] && ls "$out"/delta-spark_*.jar >/dev/null 2>&1; then
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mvn not found: installing maven (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
  else
    echo "The JVM artifacts are fetched with Maven and \`mvn\` is not on the PATH." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y maven" >&2
    exit 1
  fi
fi
spark_jars=$(.venv/bin/python -c "import pathlib, pyspark; print(pathlib.Path(pyspark.__file__).parent / 'jars')")
staging=.jvm/staging
rm -rf "$staging"
echo "fetching the pinned JVM artifacts (jvm/pom.xml) with Maven"
mvn -q -B -Dstyle.color=never -f jvm/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$(pwd)/$staging"
rm -rf "$out" && mkdir -p "$out"
for jar in "$staging"/*.jar; do
  name=$(basename "$jar" .jar)
  artifact=${name%-*}
  if compgen -G "$spark_jars/$artifact-[0-9]*.jar" >/dev/null; then
    continue  # PySpark ships its own version of this library
  fi
  mv "$jar" "$out/"
done
rm -rf "$staging"
touch "$stamp"
echo "JVM artifacts in $out: $(ls "$out" | wc -l) jars"
