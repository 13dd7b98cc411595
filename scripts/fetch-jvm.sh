#!/usr/bin/env bash
# Fetch pinned JVM artifacts with Maven, once per change of their pin list. Run at install time
# only; nothing is downloaded at run time.
#   scripts/fetch-jvm.sh         jvm/pom.xml (Delta, Spark's Kafka connector) into .jvm/jars, the
#                                Spark session's class path; jars PySpark already ships (Hadoop,
#                                Parquet, Jackson, Scala, ...) are left out so the session never
#                                has two versions of a library on its class path.
#   scripts/fetch-jvm.sh kafka   jvm/kafka/pom.xml (a Kafka broker for the tests) into .jvm/kafka,
#                                whole: the broker runs in a JVM of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=${1:-spark}
case "$set_name" in
  spark) pom=jvm/pom.xml; out=.jvm/jars; stamp=.jvm/.fetched; probe="delta-spark_*.jar" ;;
  kafka) pom=jvm/kafka/pom.xml; out=.jvm/kafka; stamp=.jvm/.kafka-fetched; probe="kafka_2.13-*.jar" ;;
  *) echo "usage: $0 [spark|kafka]" >&2; exit 2 ;;
esac
if [ -f "$stamp" ] && [ "$stamp" -nt "$pom" ] && compgen -G "$out/$probe" >/dev/null; then
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
staging=.jvm/staging-$set_name
rm -rf "$staging"
echo "fetching the pinned JVM artifacts ($pom) with Maven"
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$(pwd)/$staging"
rm -rf "$out" && mkdir -p "$out"
if [ "$set_name" = spark ]; then
  spark_jars=$(.venv/bin/python -c "import pathlib, pyspark; print(pathlib.Path(pyspark.__file__).parent / 'jars')")
  for jar in "$staging"/*.jar; do
    name=$(basename "$jar" .jar)
    artifact=${name%-*}
    if compgen -G "$spark_jars/$artifact-[0-9]*.jar" >/dev/null; then
      continue  # PySpark ships its own version of this library
    fi
    mv "$jar" "$out/"
  done
else
  mv "$staging"/*.jar "$out/"
fi
rm -rf "$staging"
touch "$stamp"
echo "JVM artifacts in $out: $(ls "$out" | wc -l) jars"
