# The worker image: `docker compose up -d` runs ten of these (docker-compose.yml, README "Docker compose").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the distribution is built from (pyproject names README.md as its readme).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shardstats/ shardstats/
COPY protocol/ protocol/
COPY worker/ worker/
COPY coordinator/ coordinator/
COPY cluster/ cluster/
# The s3 and parquet extras: workers on other hosts read shards from object storage (s3://).
RUN pip install ".[s3,parquet,fast]" && rm -rf /src

# A numeric, non-root user: `USER 10001` is verifiably not root (Kubernetes runAsNonRoot) and
# needs no name lookup.  /data is where relative input paths resolve (`--root /data`);
# compose mounts the host's ./shards read-only at /data/shards.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data cluster \
 && mkdir -p /data/shards
WORKDIR /data
USER 10001:10001

# TLS is optional and comes from outside the image: docker-compose.tls.yml mounts each worker's
# certificate, key and the cluster CA as secrets under /run/secrets and points CLUSTER_TLS_* at them
# (Kubernetes: a Secret volume).  The worker needs only Python's ssl module for it.
EXPOSE 7000 8000
ENTRYPOINT ["cluster"]
CMD ["worker", "--help"]
