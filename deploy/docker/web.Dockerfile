# avatar-web, the browser bridge (WebSocket + player page -> gRPC). Build from the repository root:
#   docker build -f deploy/docker/web.Dockerfile -t avatar-web:0.1.0 .
# It installs the same Python distribution as the server but runs only the
# bridge, which talks to the service through the balancer (AVATAR_WEB_GRPC_TARGET).

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
 && pip install . \
 && pip uninstall -y grpcio-tools

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home avatar \
 && mkdir -p /var/lib/avatar-web && chown avatar /var/lib/avatar-web
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AVATAR_WEB_VIDEOS_DIR=/var/lib/avatar-web/videos \
    AVATAR_WEB_GRPC_TARGET=avatar-balancer:50051 \
    AVATAR_WEB_HOST=0.0.0.0
# Listening on all interfaces of the container, the bridge starts only with an access token
# (AVATAR_WEB_ACCESS_TOKEN) or AVATAR_WEB_PUBLIC=true; give it the service's key too:
#   docker run -e AVATAR_WEB_ACCESS_TOKEN=... -e AVATAR_WEB_GRPC_API_KEY=... avatar-web:0.1.0
USER 10001
WORKDIR /var/lib/avatar-web
EXPOSE 7135
ENTRYPOINT ["avatar-web"]
