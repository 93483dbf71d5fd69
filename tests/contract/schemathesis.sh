#!/usr/bin/env bash
# Property-based checks of the served API against its own OpenAPI document (schemathesis):
# no server errors, documented status codes, content types and response schemas. Runs the real
# binary in dev mode (embedded PostgreSQL in a throwaway directory) with limits high enough not
# to get in the way, logged in as the seeded dev admin. Deterministic: a fixed seed.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${KATAVEN_BIN:-target/debug/kataven-hub}
DATA=$(mktemp -d)
chmod 755 "$DATA"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

KATAVEN_DATA_DIR="$DATA/.kataven" KATAVEN_LISTEN="127.0.0.1:$PORT" \
KATAVEN_LIMIT_PER_MINUTE=1000000 KATAVEN_LIMIT_PER_HOUR=1000000 KATAVEN_LIMIT_PER_DAY=10000000 \
KATAVEN_PUBLIC_LIMIT_PER_MINUTE=1000000 KATAVEN_WIDGET_KEY_LIMIT_PER_MINUTE=1000000 \
KATAVEN_WIDGET_KEY_IP_LIMIT_PER_MINUTE=1000000 KATAVEN_AUTH_FAILURE_LIMIT_PER_MINUTE=1000000 \
KATAVEN_LOG_FORMAT=json "$BIN" dev >"$DATA/stdout" 2>"$DATA/stderr" &
PID=$!
cleanup() {
    kill -INT "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
PASSWORD=$(cat "$DATA/.kataven/dev-user-password")
TOKEN=$(curl -fsS "$URL/api/login" -H 'Content-Type: application/json' \
    -d "{\"account\":\"acme\",\"email\":\"admin@acme.test\",\"password\":\"$PASSWORD\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

# hooks.py: a fresh Idempotency-Key per generated request (see there).
PYTHONPATH="$PWD/tests/contract${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=hooks \
schemathesis run "$URL/api/v1/openapi.json" --url "$URL" \
    -H "Authorization: Bearer $TOKEN" -H "X-Account-ID: acme" -H "X-Admin: true" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples 25 --seed 1 --no-color

if grep -q '"internal error"' "$DATA/stderr"; then
    echo "the server logged internal errors:" >&2
    grep '"internal error"' "$DATA/stderr" >&2
    exit 1
fi
