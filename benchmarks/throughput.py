"""Offline throughput: pagedserve's LLM.generate against transformers' padded `generate`.

Both backends get the same requests as token ids and produce exactly each request's
output_len tokens (pagedserve with ignore_eos; transformers with EOS masked until the batch's
longest output is done), sampling at temperature 1 as vLLM's benchmark does.
"""
import time

from pagedserve.benchmarks.stats import throughput
from pagedserve.benchmarks.workload import BenchRequest, token_counts


def run_pagedserve(model: str, requests: list[BenchRequest], engine_kwargs: dict,
                   temperature: float = 1.0) -> float:
    """Seconds for LLM.generate over all requests (engine start-up excluded)."""
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.sampling_params import SamplingParams
    llm = LLM(model, **engine_kwargs)
    llm.generate([{"prompt_token_ids": requests[0].prompt_token_ids[:8]}],
                 SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)  # warm-up
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=temperature, top_p=1.0, ignore_eos=True,
                             max_tokens=r.output_len) for r in requests]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    got = [len(o.outputs[0].token_ids) for o in outs]
    if got != [r.output_len for r in requests]:
        raise RuntimeError("pagedserve produced other output lengths than requested")
    llm.llm_engine.shutdown()
    return elapsed


def hf_batches(requests: list[BenchRequest], max_batch_size: int,
               max_len: int = 2048) -> list[list[BenchRequest]]:
    """Consecutive requests grouped as vLLM's HF baseline does: at most max_batch_size per
    batch, and the padded prompt plus the longest output within max_len."""
    batches: list[list[BenchRequest]] = []
    batch: list[BenchRequest] = []
    for r in requests:
        longest_in = max([x.prompt_len for x in batch] + [r.prompt_len])
        longest_out = max([x.output_len for x in batch] + [r.output_len])
        if batch and (len(batch) == max_batch_size or longest_in + longest_out > max_len):
            batches.append(batch)
            batch = []
        batch.append(r)
    if batch:
        batches.append(batch)
    return batches


def run_hf(model: str, requests: list[BenchRequest], max_batch_size: int,
           temperature: float = 1.0, device: str = "cpu", dtype: str = "float32") -> float:
    """Seconds for transformers `generate` over left-padded batches (model load excluded)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pagedserve.engine.loader import resolve_model_path
    path = resolve_model_path(model)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    _hf_generate(hf, [BenchRequest(requests[0].prompt_token_ids[:8], 2)], pad, temperature, device)
    start = time.perf_counter()
    for batch in hf_batches(requests, max_batch_size):
        _hf_generate(hf, batch, pad, temperature, device)
    return time.perf_counter() - start


def _hf_generate(hf, batch: list[BenchRequest], pad: int, temperature: float,
                 device: str) -> None:
    import torch
    width = max(r.prompt_len for r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):  # left padding, as decoder-only generation needs
        ids[i, width - r.prompt_len:] = torch.tensor(r.prompt_token_ids)
        mask[i, width - r.prompt_len:] = 1
    new = max(r.output_len for r in batch)
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) \
        if temperature > 0 else dict(do_sample=False)
    with torch.inference_mode():
        out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                          max_new_tokens=new, min_new_tokens=new, pad_token_id=pad,
                          use_cache=True, **sampling)
    if out.shape[1] != width + new:
        raise RuntimeError("transformers stopped before max_new_tokens")


def bench_throughput(backend: str, model: str, requests: list[BenchRequest],
                     engine_kwargs: dict, hf_max_batch_size: int,
                     temperature: float = 1.0) -> dict:
    """One backend's run over the workload: throughput numbers plus what was measured."""
    if backend == "pagedserve":
        elapsed = run_pagedserve(model, requests, engine_kwargs, temperature)
    elif backend == "hf":
        device, dtype = hf_device_dtype(engine_kwargs)
        elapsed = run_hf(model, requests, hf_max_batch_size, temperature, device, dtype)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose pagedserve or hf")
    prompt_tokens, output_tokens = token_counts(requests)
    return {"backend": backend, **throughput(len(requests), prompt_tokens, output_tokens, elapsed)}


def hf_device_dtype(engine_kwargs: dict) -> tuple[str, str]:
    """transformers runs where the engine would, in the dtype the engine would pick."""
    import torch
    device = engine_kwargs.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = engine_kwargs.get("dtype", "auto")
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return device, {"float": "float32", "half": "float16"}.get(dtype, dtype)


COLUMNS = [("backend", "backend", "s"), ("requests_per_s", "req/s", ".2f"),
           ("output_tokens_per_s", "output tok/s", ".1f"),
           ("total_tokens_per_s", "total tok/s", ".1f"), ("elapsed_s", "elapsed s", ".1f"),
           ("vs_hf", "vs hf", ".2f")]


def main(args) -> int:
    """`pagedserve bench throughput`: each backend in turn, --repeats times; medians printed."""
    from pagedserve.benchmarks import report, stats
    from pagedserve.benchmarks.models import resolve_model
    from pagedserve.engine.arg_utils import engine_kwargs_from_args
    from pagedserve.engine.loader import default_model, resolve_model_path
    backends = report.parse_backends(args.backend, ("pagedserve", "hf"))
    set_threads(args.num_threads)
    model = resolve_model(args.model) or default_model()
    requests = load_workload_for(args, resolve_model_path(model))
    kwargs = engine_kwargs_from_args(args)
    runs = []
    for rep in range(args.repeats):
        for backend in backends:
            r = bench_throughput(backend, model, requests, kwargs, args.hf_max_batch_size,
                                 args.temperature)
            r["repeat"] = rep
            runs.append(r)
            print(f"[{rep}] {backend}: {r['output_tokens_per_s']:.1f} output tok/s "
                  f"({r['elapsed_s']:.1f} s)", flush=True)
    rows = []
    for backend in backends:
        mine = [r for r in runs if r["backend"] == backend]
        elapsed = stats.percentile([r["elapsed_s"] for r in mine], 50)
        rows.append({**mine[0], **stats.throughput(len(requests), mine[0]["prompt_tokens"],
                                                   mine[0]["output_tokens"], elapsed)})
    hf = next((r for r in rows if r["backend"] == "hf"), None)
    for row in rows:
        row["vs_hf"] = row["output_tokens_per_s"] / hf["output_tokens_per_s"] if hf else None
    p_tok, o_tok = rows[0]["prompt_tokens"], rows[0]["output_tokens"]
    print(f"model {model}: {len(requests)} requests, {p_tok} prompt + {o_tok} output tokens, "
          f"torch threads {report.machine().get('torch_threads')}, "
          f"load {report.machine()['load_avg_1_5_15']}")
    report.print_table(rows, COLUMNS)
    report.write_json(args.output_json, "throughput", args, {"summary": rows, "runs": runs})
    return 0


def load_workload_for(args, model_path: str) -> list[BenchRequest]:
    from pagedserve.benchmarks.workload import load_workload
    try:
        return load_workload(args, model_path, getattr(args, "max_model_len", None))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def set_threads(n: int | None) -> None:
    if n is not None:
        import torch
        torch.set_num_threads(n)
