#!/usr/bin/env bash
# Run B (issue 19, whole service) on the GPU machine: full-size Ditto stand-ins generated
# there (avatar-checkpoints standin --size full --no-onnx; random weights, official shapes),
# one avatar-server --renderer ditto, 16 sessions speaking at once over gRPC
# (bench/service_realtime.py). Installs first (bench/device/install.sh). Writes into $OUT
# (default ./out/device): install.log, standin.log, service_realtime.json / .md / .log and
# service_realtime_server.log. STANDIN_SIZE=tiny makes tiny stand-ins (a CPU check).
#
#   bash bench/device/run_ditto_service.sh                        # 16 sessions, cuda
#   bash bench/device/run_ditto_service.sh --compile              # torch.compile + CUDA graphs
#   STANDIN_SIZE=tiny bash bench/device/run_ditto_service.sh --sessions 2 --set ditto_device=cpu
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$repo/out/device}
size=${STANDIN_SIZE:-full}
mkdir -p "$out"
bash "$repo/bench/device/install.sh" 2>&1 | tee "$out/install.log"
# shellcheck source=/dev/null
. "${AVATAR_DEVICE_DIR:-/tmp/avatar-device}/env.sh"

checkpoints=/tmp/ditto-standin-$size
rm -rf "$checkpoints"
began=$SECONDS
avatar-checkpoints standin --size "$size" --no-onnx "$checkpoints" 2>&1 | tee "$out/standin.log"
echo "standin: $size stand-ins in $((SECONDS - began)) s, $(du -sh "$checkpoints" | cut -f1)" | tee -a "$out/standin.log"

cd "$repo"
status=0
python3 bench/service_realtime.py --renderer ditto --checkpoints "$checkpoints" --sessions 16 "$@" \
  --json "$out/service_realtime.json" --markdown "$out/service_realtime.md" \
  --server-log "$out/service_realtime_server.log" 2>&1 | tee "$out/service_realtime.log" || status=$?
echo "run_ditto_service: exit $status; $(ls "$out")"
exit "$status"
