# Glimpse inference service. Build with BuildKit (the default since Docker 23):
#   docker build -t glimpse:cpu .                                         # CPU PyTorch
#   docker build -t glimpse:cu128 --build-arg TORCH_VARIANT=cu128 .       # CUDA 12.8 PyTorch
# Behind a TLS-intercepting proxy, hand pip its CA bundle without baking it in:
#   docker build --secret id=pip_ca,src=/path/to/ca-bundle.crt ...

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# Which PyTorch build: "cpu", or a CUDA tag such as "cu128"; TORCH_INDEX_URL overrides the index itself
# (a mirror). The version matches pyproject's pin.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A login-less system user; the code and model stay owned by root, so the service cannot rewrite them.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin glimpse

WORKDIR /opt/glimpse

# Dependencies first, in their own layers, so editing the source does not reinstall ~700 MB of PyTorch.
# PyTorch comes from its own index (which also serves its dependencies) so the variant is the one asked
# for; PyPI's default torch wheel would pull in CUDA libraries even for the CPU image.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml ./
# The rest of the runtime dependencies, read from pyproject.toml (torch is already satisfied).
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source and the bundled default model (models/default/), readable by the service user.
COPY app/ app/
COPY models/ models/
RUN chmod -R a+rX /opt/glimpse

USER glimpse
EXPOSE 8000
# GLIMPSE_DEVICE=auto puts the model on the GPU when the container sees one (CUDA build only).
ENV GLIMPSE_DEVICE=auto

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

# app.serve is PID 1, so `docker stop`'s SIGTERM reaches it: with one worker it is uvicorn itself, with
# WEB_CONCURRENCY > 1 it passes the signal on to each worker. uvicorn stops accepting connections and
# lets in-flight requests finish (up to 20 s, inside compose's 30 s stop_grace_period) before exiting.
CMD ["python", "-m", "app.serve", "--host", "0.0.0.0", "--port", "8000", \
     "--timeout-graceful-shutdown", "20", "--no-server-header"]
