# The CDP in one image: the stream, the API, the deliverer and Dagster are its commands.
#   docker build -t telecom-cdp .            (needs a Docker engine; docs/operations.md)
#   docker compose up                        (compose.yaml: with PostgreSQL and Kafka)
# Stage 1 installs with the project's own `make install`: Python packages into .venv (uv, from
# uv.lock), the pinned JVM jars into .jvm (Maven) and the data docs' assets into .vendor.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends make maven openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml uv.lock Makefile workspace.yaml README.md ./
COPY scripts scripts
COPY jvm jvm
COPY pipelines pipelines
COPY assets assets
COPY expectations expectations
COPY api api
COPY conf conf
RUN make install \
    && rm -rf .uv /root/.m2 /root/.cache

# Stage 2: a Java runtime, the installed tree and nothing else; runs as a user without rights.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 cdp \
    && mkdir /data && chown cdp /data
WORKDIR /app
COPY --from=build /app /app
USER cdp
ENV PATH=/app/.venv/bin:$PATH \
    CDP_DATA_ROOT=/data \
    DAGSTER_HOME=/data/dagster
VOLUME /data
# API, stream metrics, Dagster
EXPOSE 8000 9464 3000
ENTRYPOINT ["cdp"]
CMD ["serve", "--host", "0.0.0.0"]
