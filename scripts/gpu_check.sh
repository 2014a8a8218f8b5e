#!/usr/bin/env bash
# The GPU check in one call: scripts/gpu_check.sh OUTDIR [--cpu-dry-run] [--budget S] [--parts a,b]
# Writes OUTDIR/report.json and OUTDIR/log.txt; see benchmarks/gpu_check.py for the parts.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR [--cpu-dry-run] [--budget SECONDS] [--parts a,b,...]" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"  # the parts run the repository's tests and its bundled model
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" -m pagedserve.benchmarks.gpu_check "$@"
