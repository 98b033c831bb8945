# avatar-server with the Ditto renderer on an NVIDIA GPU. Build from the repository root:
#   docker build -f deploy/docker/server-gpu.Dockerfile -t avatar-server-gpu:0.1.0 .
# PyTorch's wheels from PyPI carry their CUDA libraries, so the base image
# needs no CUDA toolkit; the node's NVIDIA container toolkit mounts the driver.
# Ditto's checkpoints are not baked in: mount them at /models (see
# deploy/kubernetes/gpu/) or fetch them with `avatar-checkpoints`.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY server server
COPY web_bridge web_bridge
COPY clients/python clients/python
RUN pip install "grpcio-tools==1.62.3" \
 && mkdir -p gen/python \
 && python -m grpc_tools.protoc -I proto --python_out=gen/python --pyi_out=gen/python \
      --grpc_python_out=gen/python proto/avatar/v1/avatar.proto \
 && pip install ".[ditto]" \
 && pip uninstall -y grpcio-tools

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home avatar \
 && mkdir -p /var/lib/avatar /models && chown avatar /var/lib/avatar
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    AVATAR_DATA_DIR=/var/lib/avatar \
    AVATAR_RENDERER=ditto \
    AVATAR_DITTO_DEVICE=cuda \
    AVATAR_CHECKPOINTS=/models \
    AVATAR_METRICS_PORT=9090
USER 10001
WORKDIR /var/lib/avatar
EXPOSE 50051 9090
ENTRYPOINT ["avatar-server"]
