# syntax=docker/dockerfile:1
# tokenyard on NVIDIA GPUs: vLLM (CUDA build) in-process, the embedded default models baked in.
#   docker build -t tokenyard:0.1.0-cuda .
#   docker run --gpus all -p 8000:8000 tokenyard:0.1.0-cuda
# For CPU-only machines use Dockerfile.cpu.
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-base-ubuntu24.04
FROM ${CUDA_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# TOKENYARD_* names hold no secret; DL3064 only sees "TOKEN" in them.
# hadolint ignore=DL3064
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TOKENYARD_CACHE_DIR=/opt/tokenyard/models \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# Triton compiles small launchers at run time, so the compiler and Python headers stay in the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a code or README change does not reinstall vLLM.
# pip's cache lives in a BuildKit cache mount: kept between builds, never in a layer.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["cuda"] + p["optional-dependencies"]["ray"] + p["optional-dependencies"]["otel"]))' > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY gateway ./gateway
COPY engine_adapters ./engine_adapters
# The project itself, from this directory: nothing to pin.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[cuda,ray,otel]" \
    && python -c "import vllm; print('vllm', vllm.__version__)"

# Prepare the embedded default models once, at build time, into TOKENYARD_CACHE_DIR (readable by all).
RUN python -m gateway.model_store \
    && chmod -R a+rX "$TOKENYARD_CACHE_DIR"

RUN groupadd --system --gid 10001 tokenyard \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/tokenyard --shell /usr/sbin/nologin tokenyard \
    && mkdir -p /etc/tokenyard
USER 10001:10001
WORKDIR /home/tokenyard

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["tokenyard", "serve", "--host", "0.0.0.0"]
