"""`pagedserve bench roofline`: achieved decode FLOP/s against torch's matmul peak, both
measured in the same run, for one batch of sequences decoding together."""
import json
import time

from pagedserve.benchmarks.throughput import set_threads
from pagedserve.benchmarks.workload import model_facts, random_requests


def decode_flops(config: dict, context_len: int) -> float:
    """FLOPs to decode one token at context_len: 2 per weight of every matmul (the LM head
    included, embeddings not) plus QK^T and PV over the context in every layer."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    per_layer = (h * heads * head_dim * 2 + h * kv * head_dim * 2
                 + 3 * h * config["intermediate_size"])
    weights = layers * per_layer + h * config["vocab_size"]
    attention = layers * 2 * 2 * context_len * heads * head_dim
    return 2.0 * weights + attention


def matmul_peak(n: int = 1024, seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n fp32 matmul over repeated runs (the machine's practical peak),
    through torch's BLAS and through the engine's CPU linear (oneDNN), whichever is faster:
    on CPUs where MKL is slow the first alone would understate the peak."""
    import torch

    from pagedserve.kernels import onednn
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for matmul in (torch.mm, onednn.linear):
        matmul(a, b)
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            matmul(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def decode_rate(model: str, engine_kwargs: dict, batch: int, context_len: int,
                steps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of `steps` engine steps in which all `batch` sequences decode."""
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.loader import resolve_model_path
    from pagedserve.engine.sampling_params import SamplingParams
    path = resolve_model_path(model)
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    vocab, _, special = model_facts(path)
    kwargs = {**engine_kwargs, "max_num_seqs": max(batch, engine_kwargs.get("max_num_seqs", 1))}
    engine = LLM(model, **kwargs).llm_engine
    reqs = random_requests(batch, (context_len,) * 2, (steps + 2,) * 2, vocab, 0, special)
    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
    children = [engine.parents[engine.add_request(None, r.prompt_token_ids, params)].children[0]
                for r in reqs]
    while any(not c.output_token_ids for c in children):  # prefill, maybe in chunks
        engine.step()
    if engine.scheduler.waiting:
        raise SystemExit("not every sequence fits at once; raise --kv-cache-memory")
    flops = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        flops += sum(decode_flops(config, c.num_tokens) for c in children)
        engine.step()
    elapsed = time.perf_counter() - start
    engine.shutdown()
    return flops, elapsed


def llama_cpp_rate(model: str, batch: int, context_len: int, steps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of llama-batched-bench's decode phase on the same shape."""
    from pagedserve.benchmarks import llama_cpp
    from pagedserve.engine.loader import resolve_model_path
    path = resolve_model_path(model)
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    row = llama_cpp.batched_bench(path, batch, context_len, steps)
    flops = batch * sum(decode_flops(config, context_len + i) for i in range(steps))
    return flops, row["t_tg"]


def one_run(backend: str, model: str, args, engine_kwargs: dict) -> dict:
    shape = (args.batch_size, args.context_len, args.decode_steps)
    if backend == "llama.cpp":
        flops, elapsed = llama_cpp_rate(model, *shape)
    else:
        flops, elapsed = decode_rate(model, engine_kwargs, *shape)
    return {"backend": backend, "model": model, "batch_size": args.batch_size,
            "context_len": args.context_len, "decode_steps": args.decode_steps,
            "decode_tokens_per_s": args.batch_size * args.decode_steps / elapsed,
            "decode_gflops": flops / elapsed / 1e9}


COLUMNS = [("backend", "backend", "s"), ("batch_size", "batch", "d"), ("kv_cache", "KV cache", "s"),
           ("decode_tokens_per_s", "decode tok/s", ".1f"),
           ("decode_gflops", "decode GFLOP/s", ".2f"),
           ("matmul_peak_gflops", "matmul peak GFLOP/s", ".2f"),
           ("fraction_of_peak", "of peak", ".1%")]


def kv_cache_of(backend: str, args) -> str:
    """What each side keeps its KV cache in: the ratio means little without it."""
    if backend == "llama.cpp":
        return "f16 (its default)"
    dtype = getattr(args, "kv_cache_dtype", "auto")
    return "model dtype" if dtype == "auto" else dtype


def main(args) -> int:
    """Each backend in turn, --repeats rounds (order alternating); medians against the best
    matmul peak measured before and after every run."""
    import statistics

    from pagedserve.benchmarks import report
    from pagedserve.benchmarks.models import resolve_model
    from pagedserve.engine.arg_utils import engine_kwargs_from_args
    if args.repeats < 1:  # no runs would leave no median to report
        raise SystemExit(f"--repeats must be a positive integer, got {args.repeats}")
    set_threads(args.num_threads)
    backends = report.parse_backends(args.backend, ("pagedserve", "llama.cpp"))
    model = resolve_model(args.model)
    kwargs, runs, peak = engine_kwargs_from_args(args), [], matmul_peak()
    for i in range(args.repeats):
        for b in backends if i % 2 == 0 else backends[::-1]:
            runs.append(one_run(b, model, args, kwargs))
            peak = max(peak, matmul_peak())
            print(f"[{i}] {b}: {runs[-1]['decode_tokens_per_s']:.1f} decode tok/s", flush=True)
    rows = []
    for b in backends:
        mine = [r for r in runs if r["backend"] == b]
        row = {**mine[0], "decode_tokens_per_s": statistics.median(
            r["decode_tokens_per_s"] for r in mine), "decode_gflops": statistics.median(
            r["decode_gflops"] for r in mine), "matmul_peak_gflops": peak / 1e9}
        rows.append({**row, "fraction_of_peak": row["decode_gflops"] * 1e9 / peak,
                     "kv_cache": kv_cache_of(b, args)})
    print(f"load {report.machine()['load_avg_1_5_15']}, "
          f"torch threads {report.machine().get('torch_threads')}")
    report.print_table(rows, COLUMNS)
    rates = {r["backend"]: r["decode_tokens_per_s"] for r in rows}
    if len(rates) == 2:
        print(f"pagedserve / llama.cpp decode tokens/s: "
              f"{rates['pagedserve'] / rates['llama.cpp']:.2f}x")
    report.write_json(args.output_json, "roofline", args, {"runs": runs, "summary": rows})
    return 0
