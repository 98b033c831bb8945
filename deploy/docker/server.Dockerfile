# avatar-server, CPU renderer (lipsync). Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t avatar-server:0.1.0 .
# Nothing in this repository's CI can pull a base image, so this file is
# checked (tests/test_deploy_manifests.py) but not built there.

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
# The generated stubs are not in git: make them with the pinned generator, then install.
RUN pip install "grpcio-tools==1.62.3" \
 && mkdir -p gen/python \
 && python -m grpc_tools.protoc -I proto --python_out=gen/python --pyi_out=gen/python \
      --grpc_python_out=gen/python proto/avatar/v1/avatar.proto \
 && pip install . \
 && pip uninstall -y grpcio-tools

FROM python:3.11-slim-bookworm
# libGL and GLib: mediapipe's OpenCV dependency loads them even without a display.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home avatar \
 && mkdir -p /var/lib/avatar && chown avatar /var/lib/avatar
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AVATAR_DATA_DIR=/var/lib/avatar \
    AVATAR_RENDERER=lipsync \
    AVATAR_METRICS_PORT=9090
USER 10001
WORKDIR /var/lib/avatar
EXPOSE 50051 9090
# Exec form: avatar-server is PID 1 and gets SIGTERM itself, so it can drain.
ENTRYPOINT ["avatar-server"]
