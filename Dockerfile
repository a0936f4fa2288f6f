# syntax=docker/dockerfile:1
#
# pcb-inspect inference image.
#
#   docker build -t pcb-inspect:0.1.0 .                              # CPU
#   docker build --build-arg VARIANT=gpu -t pcb-inspect:0.1.0-gpu .   # GPU (tensorflow[and-cuda])
#
# The GPU variant needs no CUDA base image: tensorflow[and-cuda] brings the CUDA/cuDNN
# user-space libraries as pip wheels, and the NVIDIA container toolkit mounts the driver.

# --- build stage: resolve and install the package into a self-contained venv --------------------
FROM python:3.11-slim AS build

ARG VARIANT=cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv makes the runtime stage a single COPY, and keeps pip/setuptools/wheel used for the
# build out of the system site-packages of the final image.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# python-qpid-proton (the AMQP 1.0 client that publishes the CFX messages) ships no wheel: pip
# compiles it here, against OpenSSL for amqps://; the runtime stage's libssl3 runs it. Build
# tools stay in this stage. Unpinned: Debian's stable updates are security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what `pip install .` needs: metadata first, then the packages it ships.
COPY pyproject.toml README.md ./
COPY app ./app
COPY model_defs ./model_defs
COPY training ./training
COPY pcb_inspect ./pcb_inspect

# Fail early on a typo in VARIANT instead of silently building the CPU image. The "./" spelling
# (not ".") is what hadolint's DL3013 recognises as a local path rather than an unpinned package.
# The server extra is the service's dependencies (a bare install is only the line client). The
# postgres extra (psycopg's binary wheel, a few MB) lets PCB_DATABASE_URL name PostgreSQL,
# which several replicas need for their inspection records.
RUN case "$VARIANT" in \
        cpu) extras="[server,postgres]" ;; \
        gpu) extras="[server,gpu,postgres]" ;; \
        *) echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "./${extras}"

# --- runtime stage ---------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="pcb-inspect" \
      org.opencontainers.image.description="PCB defect inspection service (FastAPI + TensorFlow)" \
      org.opencontainers.image.licenses="MIT" \
      io.pcb-inspect.variant="${VARIANT}"

# A fixed numeric UID lets Kubernetes verify runAsNonRoot without resolving a user name.
# /data holds the golden boards (PCB_DATA_DIR): owned by that user, so a named volume mounted
# there (compose) starts writable; Kubernetes mounts a PVC there with fsGroup 10001.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The weights live outside site-packages (the package's default path resolves relative to
# its own install location), so the path is set explicitly below. Mount other weights over
# /app/weights or point PCB_WEIGHTS_PATH elsewhere to serve a different model. Root-owned so
# the service user cannot alter the model it serves. The whole folder, so the golden-board
# model (pcb_pair_unet.keras with pcb_pair_unet.card.json) comes along once it is shipped: the
# service looks for it beside PCB_WEIGHTS_PATH and serves single-image inspection without it.
COPY --chown=root:root weights ./weights

# KERAS_HOME: Keras writes its config dir on import, and /tmp is the one place that stays
# writable under a read-only root filesystem (an emptyDir in Kubernetes, a tmpfs in compose).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KERAS_HOME=/tmp/.keras \
    TF_CPP_MIN_LOG_LEVEL=1 \
    PCB_HOST=0.0.0.0 \
    PCB_PORT=8000 \
    PCB_WEIGHTS_PATH=/app/weights/pcb_defect_unet.keras \
    PCB_DATA_DIR=/data

USER 10001:10001

EXPOSE 8000

# Liveness only: /readyz stays 503 for the 30-60 s of model load and warm-up, and Docker's
# health state should not flap to unhealthy while the process is fine. Orchestrators probe
# readiness themselves (see docker-compose.yml and deploy/). Python, because slim has no curl;
# the port comes from the environment so an overridden PCB_PORT is still probed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PCB_PORT', '8000'), timeout=3)"]

# uvicorn turns SIGTERM into a graceful shutdown: readiness goes 503 and in-flight requests get
# PCB_SHUTDOWN_GRACE_S to finish.
STOPSIGNAL SIGTERM

# Exec form so the server is PID 1 and receives SIGTERM directly (a shell would swallow it).
CMD ["pcb-inspect", "serve"]
