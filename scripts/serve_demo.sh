#!/usr/bin/env bash
# `make demo`: start the OpenAI-compatible server on the bundled model, ask it for one
# completion with curl (the README's example), print the answer, and stop the server the way
# Kubernetes does (SIGTERM: it drains, then exits 0).
set -euo pipefail
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"

"$BIN/pagedserve" serve --host 127.0.0.1 --port "$PORT" --uvicorn-log-level warning &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT

echo "waiting for $URL/health ..."
until curl -sf "$URL/health" >/dev/null; do
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "the server exited before it was ready (is port $PORT free? PORT=... picks another)" >&2
        exit 1
    fi
    sleep 0.5
done

BODY='{"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}'
echo "\$ curl $URL/v1/completions -H 'Content-Type: application/json' -d '$BODY'"
RESPONSE=$(curl -s "$URL/v1/completions" -H "Content-Type: application/json" -d "$BODY")
echo "$RESPONSE"
echo
echo "Once upon a time$(echo "$RESPONSE" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')"
echo

kill -TERM "$SERVER"
wait "$SERVER" && echo "server stopped cleanly"
trap - EXIT
