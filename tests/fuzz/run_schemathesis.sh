#!/usr/bin/env bash
# Fuzz the whole REST API with schemathesis (its CLI) against /openapi.json of a live local
# control plane, as an operator admin token: zero 5xx, zero schema violations.
#
#   tests/fuzz/run_schemathesis.sh [MAX_SECONDS [SCHEMATHESIS OPTIONS...]]   (default 120 s)
#
# filter_too_much is suppressed: volume file paths (parts of at most 255 characters) are a
# pattern that path-parameter generation often misses; those operations are still tested.
# Excluded, and only it: revoking the token the run itself uses (tests/fuzz/hooks.py sends
# such a DELETE /api/v1/tokens/{name} for another, absent token: revoking its own token
# would turn every later call into a 401).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
ST="${SCHEMATHESIS:-.venv/bin/schemathesis}"
MAX_SECONDS="${1:-120}"
shift || true
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PY" tests/fuzz/serve.py --home "$WORK/home" --ready-file "$WORK/ready" \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  [ -f "$WORK/ready" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log" >&2; exit 1; fi
  sleep 0.1
done
[ -f "$WORK/ready" ] || { echo "the control plane did not start" >&2; exit 1; }
read -r URL TOKEN TOKEN_NAME <"$WORK/ready"

status=0
NEOCLOUD_FUZZ_TOKEN_NAME="$TOKEN_NAME" NEOCLOUD_FUZZ_URL="$URL" NEOCLOUD_FUZZ_TOKEN="$TOKEN" \
SCHEMATHESIS_HOOKS=tests.fuzz.hooks PYTHONPATH=. \
"$ST" run "$URL/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --max-time "$MAX_SECONDS" \
  --max-examples "${MAX_EXAMPLES:-25}" \
  --request-timeout 30 \
  --workers 1 \
  --suppress-health-check filter_too_much \
  --seed "${SEED:-1}" \
  --no-color "$@" || status=$?
if grep -q "Traceback" "$WORK/server.log"; then
  echo "--- the control plane logged errors:" >&2
  cat "$WORK/server.log" >&2
  status=1
fi
exit "$status"
