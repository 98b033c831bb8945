#!/usr/bin/env bash
# Installs the service on the bare GPU machine from .device-carry/ (made here by
# bench/device/prepare.py) and checks that it starts. Run from the repository copy there:
#
#   bash bench/device/install.sh && . /tmp/avatar-device/env.sh
#
# It installs the carried wheels with pip (no index, no dependencies) into
# /tmp/avatar-device/site, unpacks nginx and redis-server with their libraries, writes
# env.sh (PYTHONPATH: this repository's sources, the carried stubs, the wheels; PATH: the
# programs and avatar-server / avatar-checkpoints commands), and checks: every module the
# service imports, the programs' libraries (ldd), `avatar-server --help`, and a real
# server start on embedded defaults answering the gRPC health check. AVATAR_DEVICE_DIR
# moves /tmp/avatar-device; `python3` is the interpreter used (the machine's own).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
carry=$repo/.device-carry
state=${AVATAR_DEVICE_DIR:-/tmp/avatar-device}
started=$SECONDS

if [ ! -f "$carry/manifest.json" ]; then
  echo "install: $carry/manifest.json is missing: run bench/device/prepare.py before the call" \
       "and name .device-carry in its carry list" >&2
  exit 2
fi
rm -rf "$state" && mkdir -p "$state/bin" "$state/programs"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$state/site" "$carry"/wheels/*.whl
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$carry/programs.tar.xz" "$state/programs"

cat > "$state/bin/avatar-server" <<'EOF'
#!/bin/sh
exec python3 -m avatar_server "$@"
EOF
cat > "$state/bin/avatar-checkpoints" <<'EOF'
#!/bin/sh
exec python3 -m avatar_server.renderers.ditto.checkpoints_cli "$@"
EOF
chmod +x "$state/bin/avatar-server" "$state/bin/avatar-checkpoints"

cat > "$state/env.sh" <<EOF
# Made by bench/device/install.sh: the service from $repo on the carried packages.
export PYTHONPATH="$repo/server:$repo/clients/python:$repo/web_bridge:$repo/proto/python:$carry/gen/python:$state/site"
export PATH="$state/bin:$state/programs/bin:\$PATH"
export PYTHONUNBUFFERED=1
EOF
# shellcheck source=/dev/null
. "$state/env.sh"

echo "install: $(python3 --version) at $(command -v python3)"
python3 - <<'EOF'
import importlib

versions = {}
for name in ("numpy", "grpc", "google.protobuf", "av", "cv2", "scipy", "PIL", "pydantic",
             "pydantic_settings", "prometheus_client", "redis", "espeakng_loader", "grpc_health.v1.health",
             "grpc_reflection.v1alpha.reflection", "avatar.v1.avatar_pb2", "avatar_server.server"):
    module = importlib.import_module(name)
    versions[name] = getattr(module, "__version__", "ok")
for name in ("torch", "onnxruntime"):  # Ditto's; the lip-sync run does without them
    try:
        versions[name] = importlib.import_module(name).__version__
    except ImportError as error:
        versions[name] = f"absent ({error})"
print("install: imports", versions)
EOF

for program in nginx redis-server; do
  missing=$(LD_LIBRARY_PATH="$state/programs/lib" ldd "$state/programs/sbin/$program" | grep "not found" || true)
  if [ -n "$missing" ]; then
    echo "install: $program lacks libraries here: $missing" >&2
    exit 1
  fi
done
echo "install: $(nginx -v 2>&1); $(redis-server --version)"
avatar-server --help > /dev/null

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AVATAR_AUTH_DISABLED=true AVATAR_HOST=127.0.0.1 AVATAR_DATA_DIR="$state/smoke-data" AVATAR_LOG_LEVEL=WARNING \
  avatar-server --port "$port" --llm echo --tts espeak --renderer lipsync > "$state/smoke.log" 2>&1 &
server=$!
if ! python3 - "$port" "$server" <<'EOF'
import sys, time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
        sys.exit("install: the smoke server exited before serving")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            print(f"install: avatar-server SERVING on port {port}")
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.2)
sys.exit("install: the smoke server did not serve within 120 s")
EOF
then
  kill "$server" 2> /dev/null || true
  cat "$state/smoke.log" >&2
  exit 1
fi
kill -TERM "$server"
wait "$server" || true
echo "install: ready in $((SECONDS - started)) s; . $state/env.sh"
