# Inference image: nginx + gunicorn + the FHE circuit server (inference/). Build from the
# repository root:
#   docker build -f Dockerfile.inference -t concrete-inference:1.9.0 .
# SageMaker runs `docker run IMAGE serve`; the model (server.zip, client.zip, manifest.json) is
# unpacked by SageMaker into /opt/ml/model. No credentials are baked in: the endpoint's execution
# role supplies them at run time.
#
# Python: 3.11 by default, the version requirements/lock.txt was resolved on; concrete-ml refuses
# artefacts made under another major.minor, so keep it equal to the training image's.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

# Only what serving needs, every version taken from the lock (-c): no SageMaker SDK, no test or
# training tools.
COPY requirements/lock.txt /opt/kit/requirements/lock.txt
RUN pip install -c /opt/kit/requirements/lock.txt \
        concrete-ml concrete-python flask gunicorn boto3 botocore requests

# The serving code, the artefact reader it shares with training, and the `serve` entry point.
COPY inference /opt/kit/inference
COPY training/__init__.py training/artifact.py /opt/kit/training/
RUN printf '#!/bin/sh\nexec python -m inference.serve "$@"\n' > /usr/local/bin/serve \
    && chmod 0755 /usr/local/bin/serve \
    && useradd --system --uid 10001 --create-home --home-dir /home/fhe fhe \
    && mkdir -p /opt/ml/model /tmp/fhe-key-cache \
    && chown fhe:fhe /tmp/fhe-key-cache

ENV PYTHONPATH=/opt/kit \
    FHE_MODEL_DIR=/opt/ml/model \
    FHE_KEY_CACHE_DIR=/tmp/fhe-key-cache \
    SAGEMAKER_BIND_TO_PORT=8080

USER fhe
WORKDIR /home/fhe
EXPOSE 8080
CMD ["serve"]
