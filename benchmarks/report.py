"""Printing results as a table, and --output-json with the machine they were measured on."""
import json
import os
import platform
import time

from pagedserve.benchmarks.stats import json_safe


def machine() -> dict:
    """What the numbers depend on: CPU, threads, load (the machine may be shared)."""
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def parse_backends(text: str | None, allowed: tuple[str, ...]) -> list[str]:
    """--backend A,B: the names in order, each once; SystemExit names anything else."""
    backends = list(dict.fromkeys(b.strip() for b in (text or "").split(",") if b.strip()))
    if not backends or set(backends) - set(allowed):
        raise SystemExit(f"--backend must be one or more of {', '.join(allowed)} "
                         f"(comma-separated), got {text!r}")
    return backends


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec); a missing or None value prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], f) if row.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def write_json(path: str | None, command: str, args, results) -> None:
    if not path:
        return
    skip = {"run", "func"}
    payload = {"command": command, "args": {k: v for k, v in vars(args).items() if k not in skip},
               "machine": machine(), "results": results}
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
