"""`pagedserve bench latency`: one batch (default: one request) at a time, prefill and decode.

Each iteration times a prefill (max_tokens=1) and a full generation of fresh random prompts
(fresh, so the prefix cache cannot answer); decode latency per token is the difference over
the output_len - 1 tokens after the first. Both backends decode greedily.
"""
import time

from pagedserve.benchmarks.stats import summarize
from pagedserve.benchmarks.throughput import _hf_generate, hf_device_dtype, set_threads
from pagedserve.benchmarks.workload import BenchRequest, model_facts, random_requests


def _pagedserve_runner(model: str, engine_kwargs: dict):
    from pagedserve.engine.llm import LLM
    from pagedserve.engine.sampling_params import SamplingParams
    llm = LLM(model, **engine_kwargs)

    def run(batch: list[BenchRequest]) -> None:
        llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in batch],
                     [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True)
                      for r in batch],
                     use_tqdm=False)
    return run


def _hf_runner(model: str, engine_kwargs: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from pagedserve.engine.loader import resolve_model_path
    device, dtype = hf_device_dtype(engine_kwargs)
    hf = AutoModelForCausalLM.from_pretrained(resolve_model_path(model),
                                              dtype=getattr(torch, dtype)).to(device).eval()
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    return lambda batch: _hf_generate(hf, batch, pad, 0.0, device)


def measure(run, batches: list[list[BenchRequest]], warmup: int) -> dict:
    """Per batch: seconds to the first token and to the last; decode seconds per token."""
    prefill, e2e, per_token = [], [], []
    for i, batch in enumerate(batches):
        first = [BenchRequest(r.prompt_token_ids, 1) for r in batch]
        t0 = time.perf_counter()
        run(first)
        t1 = time.perf_counter()
        # reversed, so the prefix cache holds nothing of this prompt from the prefill run
        run([BenchRequest(r.prompt_token_ids[::-1], r.output_len) for r in batch])
        t2 = time.perf_counter()
        if i < warmup:
            continue
        prefill.append(t1 - t0)
        e2e.append(t2 - t1)
        per_token.append((t2 - t1 - (t1 - t0)) / max(1, batch[0].output_len - 1))
    return {"prefill_s": summarize(prefill), "e2e_s": summarize(e2e),
            "decode_per_token_s": summarize(per_token)}


def main(args) -> int:
    from pagedserve.benchmarks import report
    from pagedserve.benchmarks.models import resolve_model
    from pagedserve.engine.arg_utils import engine_kwargs_from_args
    from pagedserve.engine.loader import default_model, resolve_model_path
    set_threads(args.num_threads)
    model = resolve_model(args.model) or default_model()
    vocab, _, special = model_facts(resolve_model_path(model))
    n = args.num_iters + args.num_iters_warmup
    reqs = random_requests(n * args.batch_size, (args.input_len,) * 2, (args.output_len,) * 2,
                           vocab, args.seed, special)
    batches = [reqs[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n)]
    kwargs = engine_kwargs_from_args(args)
    rows = []
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        runner = {"pagedserve": _pagedserve_runner, "hf": _hf_runner}.get(backend)
        if runner is None:
            raise SystemExit(f"--backend must be pagedserve, hf or both, got {backend!r}")
        r = measure(runner(model, kwargs), batches, args.num_iters_warmup)
        rows.append({"backend": backend, **{f"{k}_{s}": v * 1e3 for k, d in r.items()
                                            for s, v in d.items()}})
    print(f"model {model}: batch {args.batch_size}, {args.input_len} prompt + "
          f"{args.output_len} output tokens, {args.num_iters} iterations; "
          f"load {report.machine()['load_avg_1_5_15']}")
    report.print_table(rows, [("backend", "backend", "s")] + [
        (f"{k}_{s}", f"{k[:-2].replace('_', ' ')} {s} ms", ".2f")
        for k in ("prefill_s", "e2e_s", "decode_per_token_s") for s in ("median", "p99")])
    report.write_json(args.output_json, "latency", args, rows)
    return 0
