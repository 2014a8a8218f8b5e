#!/usr/bin/env bash
# `make demo`: start the OpenAI-compatible server on the bundled model, ask it for one
# completion with curl (the README's example), print the answer, and stop the server the way
# Kubernetes does (SIGTERM: it drains, then exits 0).
#
# PORT picks the port; a taken PORT is an error. Unset, 8000 is used if free, else a free one.
# The server is also served under a name of its own, so an answer can only count if it came
# from this server, not from another process that holds the port.
set -euo pipefail
BIN=${BIN:-.venv/bin}

port_free() {
    "$BIN/python" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

if [ -n "${PORT:-}" ]; then
    if ! port_free "$PORT"; then
        echo "make demo: port $PORT is already in use by another process; free it or pick another (PORT=...)" >&2
        exit 1
    fi
elif port_free 8000; then
    PORT=8000
else
    PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "port 8000 is in use; using $PORT"
fi
URL="http://127.0.0.1:$PORT"
TOKEN="demo-$$-$RANDOM"

"$BIN/pagedserve" serve --host 127.0.0.1 --port "$PORT" --uvicorn-log-level warning \
    --served-model-name stories260K "$TOKEN" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT

echo "waiting for $URL/health ..."
until curl -sf "$URL/health" >/dev/null; do
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "make demo: the server exited before it was ready" >&2
        exit 1
    fi
    sleep 0.5
done
if ! curl -sf "$URL/v1/models" | grep -q "\"$TOKEN\""; then
    echo "make demo: $URL is answered by another process, not the server this demo started" >&2
    exit 1
fi

BODY='{"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}'
echo "\$ curl $URL/v1/completions -H 'Content-Type: application/json' -d '$BODY'"
RESPONSE=$(curl -sf "$URL/v1/completions" -H "Content-Type: application/json" -d "$BODY")
echo "$RESPONSE"
echo
echo "Once upon a time$(echo "$RESPONSE" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')"
echo

kill -TERM "$SERVER"
wait "$SERVER" && echo "server stopped cleanly"
trap - EXIT
