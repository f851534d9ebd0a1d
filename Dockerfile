# The vectune image used by every Ray pod and job submitter in k8s/.
#
#   CPU:  docker build -t ghcr.io/vectune/vectune:0.1.0 .
#   CUDA: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#           -t ghcr.io/vectune/vectune:0.1.0-cuda .
#
# The PyTorch CUDA wheels bundle the CUDA runtime, so the slim base is enough; the GPU nodes need
# only the NVIDIA driver and device plugin.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# KubeRay's default Ray probes run `bash -c "wget ... | grep success"`
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# uid/gid 1000: the runAsUser of every pod in k8s/
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray

# torch first, from the index that matches the image flavour (CPU or CUDA); requirements.lock
# leaves torch out for this reason (.ci/lock)
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# every other dependency, pinned by requirements.lock (`bash .ci/lock`), before any source is
# copied: a code change rebuilds only the layers below, never Ray or torch. --no-deps: the lock
# is the whole environment, so nothing is resolved at build time; `pip check` proves it complete.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . && pip check && rm -rf build src/*.egg-info

# the Ray job entrypoints (python pipelines/<name>.py, run from /app) and example specs
COPY pipelines ./pipelines
COPY specs ./specs

USER 1000:1000
ENV HOME=/home/ray
CMD ["vectune", "--help"]
