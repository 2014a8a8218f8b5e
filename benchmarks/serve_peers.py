"""`pagedserve bench serve --backend pagedserve,llama.cpp`: start each server, check they
answer a greedy prompt alike, then load them with the same workload in alternating rounds.

Rounds go A B, B A, A B ... so a drift in the machine's load (it may be shared) falls on both
sides; each round's ratio compares runs minutes apart, and the medians are reported.
"""
import asyncio
import statistics

from pagedserve.benchmarks.report import parse_backends
from pagedserve.benchmarks.serve import run_load, served_model, summarize_results
from pagedserve.benchmarks.servers import Server, start_llama_server, start_pagedserve
from pagedserve.benchmarks.workload import BenchRequest

BACKENDS = ("pagedserve", "llama.cpp")


def start(backend: str, model_path: str, requests: list[BenchRequest], slots: int) -> Server:
    if backend == "pagedserve":
        return start_pagedserve(model_path)
    longest = max(r.prompt_len + r.output_len for r in requests)
    return start_llama_server(model_path, slots, ctx_per_slot=-(-longest // 256) * 256)


def greedy_text(server: Server, model: str, prompt: list[int], max_tokens: int = 16) -> str:
    import httpx
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    resp = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    resp.raise_for_status()
    return resp.json()["choices"][0]["text"]


def check_parity(servers: list[Server], models: dict, prompt: list[int]) -> bool:
    """Both engines run the same weights on the same token ids: greedy text should match."""
    texts = {s.backend: greedy_text(s, models[s.backend], prompt) for s in servers}
    same = len(set(texts.values())) == 1
    print(f"greedy parity on one prompt ({len(prompt)} tokens, 16 out): "
          + ("same text" if same else f"DIFFERENT: {texts}"))
    return same


def one_round(server: Server, model: str, requests: list[BenchRequest], args) -> dict:
    results, duration = asyncio.run(run_load(server.url, model, requests, args.request_rate,
                                             args.max_concurrency, args.temperature,
                                             None, args.seed))
    return {"backend": server.backend, "duration_s": duration,
            **summarize_results(results, duration)}


def _round_order(servers: list[Server], i: int) -> list[Server]:
    return servers if i % 2 == 0 else servers[::-1]


def _print_round(i: int, rows: list[dict]) -> None:
    rates = {r["backend"]: r["output_tokens_per_s"] for r in rows}
    line = ", ".join(f"{b} {v:.1f} out tok/s (failed {r['failed']})"
                     for r, (b, v) in zip(rows, rates.items()))
    ratio = (f"; pagedserve/llama.cpp {rates['pagedserve'] / rates['llama.cpp']:.2f}x"
             if len(rates) == 2 else "")
    print(f"  round {i + 1}: {line}{ratio}", flush=True)
    for r in rows:
        for e in r["errors"]:
            print(f"    {r['backend']} error: {e}")


def summarize_rounds(runs: list[dict], backends: list[str]) -> list[dict]:
    """Per backend: the median over rounds of throughput and of median TTFT/TPOT."""
    rows = []
    for b in backends:
        mine = [r for r in runs if r["backend"] == b]
        rows.append({"backend": b, "rounds": len(mine),
                     "output_tokens_per_s": statistics.median(r["output_tokens_per_s"]
                                                              for r in mine),
                     "ttft_ms": statistics.median(r["ttft_ms"]["median"] for r in mine),
                     "tpot_ms": statistics.median(r["tpot_ms"]["median"] for r in mine),
                     "failed": sum(r["failed"] for r in mine)})
    return rows


def compare(args, model_path: str, workloads: list[list[BenchRequest]]) -> dict:
    """Start every backend, check parity, run the alternating rounds (round i loads
    workloads[i]); stop them all."""
    requests = workloads[0]
    backends = parse_backends(args.backend, BACKENDS)
    servers: list[Server] = []
    try:
        for b in backends:
            servers.append(start(b, model_path, requests, args.max_concurrency or len(requests)))
        models = {s.backend: served_model(s.url, None) for s in servers}
        parity = check_parity(servers, models, requests[0].prompt_token_ids)
        for s in servers:  # one short request each: nothing is first-touch in round 1
            greedy_text(s, models[s.backend], requests[1 % len(requests)].prompt_token_ids, 4)
        runs = []
        for i in range(args.rounds):
            rows = [one_round(s, models[s.backend], workloads[i], args)
                    for s in _round_order(servers, i)]
            rows.sort(key=lambda r: backends.index(r["backend"]))
            _print_round(i, rows)
            runs += rows
    finally:
        for s in servers:
            s.stop()
    return {"greedy_parity": parity, "rounds": runs,
            "summary": summarize_rounds(runs, backends)}


COLUMNS = [("backend", "backend", "s"), ("rounds", "rounds", "d"),
           ("output_tokens_per_s", "out tok/s (median)", ".1f"),
           ("ttft_ms", "TTFT ms", ".1f"), ("tpot_ms", "TPOT ms", ".2f"), ("failed", "failed", "d")]


def main(args, model_path: str, workloads: list[list[BenchRequest]]) -> int:
    """One workload per round, each drawn with its own seed: a round that repeated the
    previous one's prompts would be served from the prefix caches (both engines keep one)."""
    from pagedserve.benchmarks import report
    requests = workloads[0]
    print(f"{len(requests)} requests, max concurrency {args.max_concurrency}, rate "
          f"{args.request_rate}, temperature {args.temperature}, {args.rounds} rounds; "
          f"model {model_path}; load {report.machine()['load_avg_1_5_15']}", flush=True)
    result = compare(args, model_path, workloads)
    report.print_table(result["summary"], COLUMNS)
    rates = {r["backend"]: r["output_tokens_per_s"] for r in result["summary"]}
    if len(rates) == 2:
        print(f"pagedserve / llama.cpp output tokens/s: "
              f"{rates['pagedserve'] / rates['llama.cpp']:.2f}x")
    report.write_json(args.output_json, "serve", args, result)
    return 1 if any(r["failed"] for r in result["summary"]) else 0
