#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 900), one after another, at low priority.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in
# fuzz/artifacts/<target>/; turn each into a regression test.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-900}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(token path_host config sse ws_frames control_bodies)
mkdir -p corpus/config
cp ../config/*.yaml corpus/config/ 2>/dev/null || true
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${seconds}s"
  nice -n 19 cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=16384 2>&1 | tail -n 4
  echo "== $t: exit ${PIPESTATUS[0]}"
done
