#!/usr/bin/env bash
# Run A (issue 20) on the GPU machine: bench/scaleout.py load through real nginx and Redis,
# 1 then 3 lip-sync instances, every part pinned to cores of its own (--pin: on 16 cores the
# load generator 0-1, nginx 2, Redis 3, the instances 4-7, 8-11, 12-15). Installs first
# (bench/device/install.sh). Writes into $OUT (default ./out/device): install.log,
# scaleout_load.json, scaleout_load.md, scaleout_load.log and, if the run failed,
# scaleout_logs.tar.gz (the instances' and nginx's logs).
#
#   bash bench/device/run_scaleout.sh                    # the issue's run: 12 sessions, 60 s
#   bash bench/device/run_scaleout.sh --sessions 3 --seconds 10 --warmup 5   # a quick check
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-$repo/out/device}
mkdir -p "$out"
bash "$repo/bench/device/install.sh" 2>&1 | tee "$out/install.log"
# shellcheck source=/dev/null
. "${AVATAR_DEVICE_DIR:-/tmp/avatar-device}/env.sh"

cd "$repo"
workdirs_before=$(ls -d /tmp/avatar-scaleout-* 2> /dev/null || true)
status=0
python3 bench/scaleout.py load --instances 1 3 --sessions 12 --seconds 60 --warmup 10 --timeout 420 \
  --pin "$@" --json "$out/scaleout_load.json" --markdown "$out/scaleout_load.md" \
  2>&1 | tee "$out/scaleout_load.log" || status=$?
if [ "$status" != 0 ]; then
  new=$(comm -13 <(echo "$workdirs_before") <(ls -d /tmp/avatar-scaleout-* 2> /dev/null || true))
  # shellcheck disable=SC2086
  [ -n "$new" ] && tar -czf "$out/scaleout_logs.tar.gz" $(find $new -name '*.log') 2> /dev/null || true
fi
echo "run_scaleout: exit $status; $(ls "$out")"
exit "$status"
