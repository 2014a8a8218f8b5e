"""The GPU check: everything about the GPU path that needs a GPU, in one call.

    scripts/gpu_check.sh OUTDIR                 # on a CUDA/ROCm machine, about 5-8 minutes
    scripts/gpu_check.sh OUTDIR --cpu-dry-run   # every part on CPU at the smallest shapes

Writes OUTDIR/report.json (rewritten after every part, so a killed run leaves what it had)
and OUTDIR/log.txt (every part's output). Each part runs in its own process group under its
own time limit, cut to what is left of --budget; a part that fails, times out or no longer
fits is recorded as such and the next one runs. The parts are in benchmarks/gpu_check_parts.py.
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback

# (part, seconds it may take on a GPU), most important first: later parts are the ones a
# tight budget drops
PARTS = [("env", 30), ("gpu_tests", 150), ("model", 90), ("parity", 90), ("kv_sizing", 100),
         ("graphs", 120), ("throughput", 150), ("kernels", 90), ("serve", 60),
         ("throughput_eager", 90)]
DEFAULT_BUDGET_S = 540  # the device allows 10 minutes a command; leave room to copy results
MIN_PART_S = 10


def run_part(name: str, out: str, dry_run: bool) -> None:
    """In the part's own process: run it and write OUTDIR/parts/NAME.json."""
    from pagedserve.benchmarks import gpu_check_parts as parts
    shape = parts.Shape.cpu() if dry_run else parts.Shape.gpu()
    try:
        record = {"status": "ok", "result": getattr(parts, f"part_{name}")(shape, out)}
    except parts.Skip as e:
        record = {"status": "skipped", "error": str(e)}
    except Exception as e:  # recorded, not raised: the check goes on with the next part
        traceback.print_exc()
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    with open(os.path.join(out, "parts", f"{name}.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)


def spawn_part(name: str, out: str, dry_run: bool, timeout: float, log) -> dict:
    """Run one part in a new process group; kill the whole group if it overruns."""
    cmd = [sys.executable, "-m", "pagedserve.benchmarks.gpu_check", out, "--part", name]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry_run:
        cmd.append("--cpu-dry-run")
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on CPU even on a GPU machine
    log.write(f"\n===== part {name} (limit {timeout:.0f} s) =====\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"status": "timeout", "error": f"killed after {timeout:.0f} s",
                "seconds": time.monotonic() - start}
    return {**_read_record(out, name, proc.returncode), "seconds": time.monotonic() - start}


def _read_record(out: str, name: str, code: int) -> dict:
    path = os.path.join(out, "parts", f"{name}.json")
    if not os.path.exists(path):
        return {"status": "failed", "error": f"the part's process exited with code {code} "
                                             f"and wrote no result (see log.txt)"}
    with open(path) as f:
        return json.load(f)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", help="folder for report.json and log.txt (created)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run every part on CPU at the smallest shapes (a test runs this)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help="seconds for the whole check; parts that no longer fit are skipped")
    p.add_argument("--parts", default=",".join(n for n, _ in PARTS),
                   help="comma-separated subset of: " + ", ".join(n for n, _ in PARTS))
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = os.path.abspath(args.outdir)
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    if args.part:
        run_part(args.part, out, args.cpu_dry_run)
        return 0
    wanted = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = set(wanted) - {n for n, _ in PARTS}
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(sorted(unknown))}")
    report = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "mode": "cpu-dry-run" if args.cpu_dry_run else "gpu", "budget_s": args.budget,
              "parts": {}}
    deadline = time.monotonic() + args.budget
    with open(os.path.join(out, "log.txt"), "a") as log:
        for name, limit in PARTS:
            if name not in wanted:
                continue
            left = deadline - time.monotonic()
            report["parts"][name] = (
                spawn_part(name, out, args.cpu_dry_run, min(limit, left), log)
                if left >= MIN_PART_S else
                {"status": "skipped", "error": f"out of time ({left:.0f} s of the budget left)"})
            report["summary"] = summarize(report["parts"])
            _write(os.path.join(out, "report.json"), report)
            print(f"{name}: {report['parts'][name]['status']}", flush=True)
    print(json.dumps(report["summary"], indent=2))
    bad = [n for n, p in report["parts"].items() if p["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def _write(path: str, report: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def summarize(parts: dict) -> dict:
    """The headline figures of the parts that ran (what the issue's note reports)."""
    def result(name: str) -> dict:
        part = parts.get(name, {})
        return part.get("result", {}) if part.get("status") == "ok" else {}
    s = {"status": {n: p["status"] for n, p in parts.items()}}
    tests = result("gpu_tests")
    if tests:
        s["gpu_tests"] = {k: tests.get(k) for k in ("tests", "failures", "errors", "skipped")}
    s["parity"] = {k: v["text"] for k, v in result("parity").items() if "text" in v}
    s["kv_blocks"] = {k: v.get("num_blocks") for k, v in result("kv_sizing").items()}
    rows = result("throughput").get("rows", [])
    ours = next((r for r in rows if r["backend"] == "pagedserve"), {})
    s["throughput_vs_hf"] = ours.get("vs_hf")
    eager = result("throughput_eager").get("rows", [{}])[0].get("output_tokens_per_s")
    if eager and ours:
        s["throughput_graphs_vs_eager"] = ours["output_tokens_per_s"] / eager
    s["decode_attention_best_of_copy"] = result("kernels").get("best_of_copy")
    s["graphs_vs_eager"] = {k: v.get("graphs_vs_eager") for k, v in result("graphs").items()
                            if k.startswith("batch")}
    return s


if __name__ == "__main__":
    raise SystemExit(main())
