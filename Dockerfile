# stagechat images: pick one with the build target.
#
#   CPU (vLLM's CPU build, torch 2.13.0+cpu):  podman build --format docker --target cpu -t stagechat:cpu .
#   GPU (on vLLM's official CUDA image):        podman build --format docker --target gpu -t stagechat:gpu .
#
# (`--format docker` keeps the HEALTHCHECK, which the OCI format has no field for; docker build does that anyway.)
#
# Both carry the trained demo family (models/demo/family/, 17 MB) and serve it by default.
# Both run `stagechat serve` as a non-root user on port 8000, keep checkpoints, rounds and the SQLite
# store in the volume /data (STAGECHAT_DATA_DIR), and report healthy when GET /ready answers 200.
# Point STAGECHAT_DATABASE_URL at PostgreSQL to share the store between replicas (compose.yaml).
# Offline builds: BASE_IMAGE may be any Debian bookworm image (the tests import one made with
# debootstrap), and pip can read local wheels from a folder mounted at /wheels during the build
# (`podman build -v /opt/wheels:/wheels:ro`, where torch 2.13.0+cpu lies on these machines; with
# `--build-arg PIP_NO_INDEX=1` pip reads nothing else).

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
ARG GPU_BASE_IMAGE=docker.io/vllm/vllm-openai:v0.11.0

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS cpu

# Where pip finds torch 2.13.0+cpu besides /wheels: PyTorch's CPU index (empty: /wheels and PyPI only).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A CA bundle for pip, when the build reaches PyPI through a TLS-intercepting proxy (mount it in).
ARG PIP_CERT
# 1: install from the wheels mounted at /wheels only (an offline build, as in tests/test_container.py).
ARG PIP_NO_INDEX

# Debian's python3 is 3.11 on bookworm (the CPU torch wheel is cp311); libnuma1 for vLLM's CPU kernels;
# g++ because vLLM's CPU backend compiles its model with torch inductor at engine start.
# Versions are not pinned: the suite's Debian snapshot decides them, and pins would break on every
# point release of bookworm.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates libnuma1 g++ \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STAGECHAT_DATA_DIR=/data \
    STAGECHAT_DEMO_FAMILY=/app/models/demo/family \
    VLLM_CPU_KVCACHE_SPACE=4
RUN python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --find-links /wheels ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        "torch==2.13.0+cpu" "setuptools>=70" -r /tmp/requirements.txt \
    && pip uninstall -y -q torchvision torchaudio torchcodec \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY server server
COPY models models
COPY ui ui
COPY cli cli
# No build isolation: the build backend (setuptools) is already in the venv, so no index is needed.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --create-home --uid 1000 stagechat \
    && mkdir -p /data \
    && chown stagechat:stagechat /data

USER 1000:1000
VOLUME ["/data"]
EXPOSE 8000
# Engines take tens of seconds to warm up: /ready is 503 until then (and while a remote is missing).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
ENTRYPOINT ["stagechat"]
CMD ["serve", "--config", "/app/models/stages.yaml", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------------
FROM ${GPU_BASE_IMAGE} AS gpu

# vLLM's official image brings CUDA, torch and vLLM; stagechat adds its own dependencies beside them.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STAGECHAT_DATA_DIR=/data \
    STAGECHAT_DEMO_FAMILY=/app/models/demo/family

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server server
COPY models models
COPY ui ui
COPY cli cli
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 stagechat \
    && mkdir -p /data \
    && chown stagechat:stagechat /data

USER 1000:1000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
# The official image's entry point is vLLM's server; this image's is stagechat.
ENTRYPOINT ["stagechat"]
CMD ["serve", "--config", "/app/models/stages.yaml", "--host", "0.0.0.0", "--port", "8000"]
