#!/usr/bin/env bash
# The issue-8 targets, one after another (they share the CPU, so never in parallel):
#   benchmarks/targets.sh [OUT_DIR]          (default OUT_DIR: bench-results/)
# Needs `pagedserve` on PATH (e.g. `. .venv/bin/activate` after `make test`). Each step
# prints its table and writes OUT_DIR/<name>.json. Takes ~30 minutes on 2 CPU cores, most of it
# the transformers baseline on the 20M model; SKIP_20M=1 skips that step.
set -euo pipefail
out=${1:-bench-results}
mkdir -p "$out"
port=${PORT:-8011}
small=(--num-prompts 256 --input-len 32-256 --output-len 16-256)  # stories260K: 512 positions

echo "== offline, stories260K: pagedserve vs transformers"
pagedserve bench throughput --backend pagedserve,hf "${small[@]}" --output-json "$out/throughput-stories260k.json"

echo "== offline, stories260K, at most 64 sequences at once (the server run's concurrency)"
pagedserve bench throughput --backend pagedserve --max-num-seqs 64 "${small[@]}" \
    --output-json "$out/throughput-stories260k-64seqs.json"

echo "== server, stories260K, request rate inf, 64 concurrent streams"
pagedserve serve --port "$port" --uvicorn-log-level warning &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 $server || { echo "the server exited" >&2; exit 1; }
    sleep 1
done
pagedserve bench serve --base-url "http://127.0.0.1:$port" --max-concurrency 64 "${small[@]}" \
    --output-json "$out/serve-stories260k.json"
kill -TERM $server && wait $server || true
trap - EXIT

echo "== roofline: ~100M random Llama, batch 64, decode"
pagedserve bench roofline --output-json "$out/roofline-100m.json"

if [ "${SKIP_20M:-0}" != 1 ]; then
    echo "== offline, ~20M random Llama: pagedserve vs transformers"
    pagedserve bench throughput --model random:20M --backend pagedserve,hf --num-prompts 256 \
        --input-len 32-512 --output-len 16-256 --output-json "$out/throughput-20m.json"
fi
