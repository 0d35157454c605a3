# Worker image for Dataflow (--sdk_container_image) and Flink (--environment_type DOCKER):
# the Apache Beam Python SDK image of the pinned Beam version, with tripleminer installed.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

# Pin torch before anything else so no other package drags in a different build. For a CPU-only
# image, pass the PyTorch CPU wheel index: --build-arg TORCH_INDEX_URL=<index url>.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

WORKDIR /opt/tripleminer
COPY requirements.txt requirements-train.txt requirements-dev.txt setup.py README.md ./
COPY tripleminer ./tripleminer
RUN pip install --no-cache-dir ".[train,aws,gcp]" \
    && python -c "import tripleminer.pipelines.mine, bm25s, faiss, sentence_transformers"

ENV HF_HUB_OFFLINE=1
# The Beam SDK harness stays the entrypoint (inherited from the base image).
