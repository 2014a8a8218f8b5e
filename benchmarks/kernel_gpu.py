"""Kernel benchmark: each Triton kernel against the torch reference, on a GPU.

    pagedserve bench kernels gpu           # on a CUDA/ROCm GPU
    pagedserve bench kernels gpu --tiny    # CPU smoke run (interpreted, tiny shapes)

Decode attention is memory bound, so it is reported as achieved bandwidth (K and V bytes read
per second) and as a fraction of the device's measured copy bandwidth. Interpreted CPU times
say nothing about GPU speed; --tiny only checks that the script and kernels run.
"""
import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch


def timer(device: torch.device, reps: int) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of `fn` after a warm-up call (which also compiles Triton kernels)."""
    def run(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return run


def copy_bandwidth(device: torch.device, nbytes: int, time_ms) -> float:
    """Bytes moved per second (read + write) by a device-to-device tensor copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / (time_ms(lambda: dst.copy_(src)) * 1e-3)


def paged_cache(batch: int, ctx: int, page: int, kv_heads: int, head: int, dtype, device):
    """K/V caches holding `batch` contexts of `ctx` tokens in shuffled blocks."""
    per_seq = -(-ctx // page)
    shape = (batch * per_seq, page, kv_heads, head)
    k = torch.randn(shape, dtype=dtype, device=device)
    v = torch.randn(shape, dtype=dtype, device=device)
    table = torch.randperm(batch * per_seq, device=device).to(torch.int32).view(batch, per_seq)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    return k, v, table, lens


def max_error(impls, args) -> float:
    """Largest difference between the Triton result and the reference (a sanity column)."""
    return (impls[0](*args).float() - impls[1](*args).float()).abs().max().item()


def bench_decode(cases, shape, dtype, device, time_ms, copy_bw, impls) -> None:
    q_heads, kv_heads, head, page = shape
    print(f"\ndecode attention: Hq={q_heads} Hkv={kv_heads} D={head} block={page} {dtype}")
    print(f"{'batch':>6} {'context':>8} {'triton ms':>10} {'torch ms':>9} {'speedup':>8} "
          f"{'GB/s':>8} {'of copy':>8} {'max err':>8}")
    for batch, ctx in cases:
        k, v, table, lens = paged_cache(batch, ctx, page, kv_heads, head, dtype, device)
        q = torch.randn(batch, q_heads, head, dtype=dtype, device=device)
        args = (q, k, v, table, lens, head ** -0.5)
        times = [time_ms(lambda f=f, args=args: f(*args)) for f in impls]
        nbytes = 2 * batch * ctx * kv_heads * head * k.element_size() + 2 * q.nbytes
        bw = nbytes / (times[0] * 1e-3)
        print(f"{batch:>6} {ctx:>8} {times[0]:>10.3f} {times[1]:>9.3f} "
              f"{times[1] / times[0]:>7.2f}x {bw / 1e9:>8.1f} {bw / copy_bw:>7.1%} "
              f"{max_error(impls, args):>8.2g}")
        del k, v


def bench_prefill(cases, shape, dtype, device, time_ms, impls) -> None:
    q_heads, kv_heads, head, page = shape
    print(f"\nprefill attention (new tokens over cached prefix): Hq={q_heads} Hkv={kv_heads} "
          f"D={head} {dtype}")
    print(f"{'seqs':>5} {'prefix':>7} {'new':>6} {'triton ms':>10} {'torch ms':>9} "
          f"{'speedup':>8} {'max err':>8}")
    for seqs, prefix, new in cases:
        k, v, table, lens = paged_cache(seqs, prefix + new, page, kv_heads, head, dtype, device)
        q = torch.randn(seqs * new, q_heads, head, dtype=dtype, device=device)
        qsl = torch.arange(0, seqs * new + 1, new, dtype=torch.int32, device=device)
        args = (q, k, v, table, qsl, lens, head ** -0.5)
        times = [time_ms(lambda f=f, args=args: f(*args)) for f in impls]
        print(f"{seqs:>5} {prefix:>7} {new:>6} {times[0]:>10.3f} {times[1]:>9.3f} "
              f"{times[1] / times[0]:>7.2f}x {max_error(impls, args):>8.2g}")


def bench_pointwise(tokens: int, hidden: int, inter: int, shape, dtype, device, time_ms,
                    triton_ops, reference) -> None:
    q_heads, kv_heads, head, page = shape
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    res, w = torch.randn_like(x), torch.randn(hidden, dtype=dtype, device=device)
    gate_up = torch.randn(tokens, 2 * inter, dtype=dtype, device=device)
    q = torch.randn(tokens, q_heads, head, dtype=dtype, device=device)
    kk = torch.randn(tokens, kv_heads, head, dtype=dtype, device=device)
    cos_sin = torch.randn(max(tokens, 16), head, device=device)
    pos = torch.arange(tokens, device=device)
    num_blocks = -(-tokens // page)
    cache = torch.empty(2, num_blocks, page, kv_heads, head, dtype=dtype, device=device)
    slots = torch.randperm(num_blocks * page, device=device)[:tokens]
    cases = {
        "store_kv_cache": lambda m: m.store_kv_cache(kk, kk, cache[0], cache[1], slots),
        "rms_norm+residual": lambda m: m.rms_norm(x, w, 1e-5, res),
        "rotary_embedding": lambda m: m.rotary_embedding(pos, q, kk, cos_sin),
        "silu_and_mul": lambda m: m.silu_and_mul(gate_up),
    }
    print(f"\npointwise kernels: {tokens} tokens, hidden {hidden}, intermediate {inter} {dtype}")
    print(f"{'kernel':>18} {'triton ms':>10} {'torch ms':>9} {'speedup':>8}")
    for name, case in cases.items():
        t_tri = time_ms(lambda case=case: case(triton_ops))
        t_ref = time_ms(lambda case=case: case(reference))
        print(f"{name:>18} {t_tri:>10.3f} {t_ref:>9.3f} {t_ref / t_tri:>7.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagedserve bench kernels gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="without a GPU: run tiny shapes in Triton's CPU interpreter")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        print("no GPU (CUDA/ROCm) found: nothing to benchmark; --tiny runs a CPU smoke test")
        return 0
    if not gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules import triton
    from pagedserve.kernels import reference, triton_ops
    device = torch.device("cuda" if gpu else "cpu")
    dtype = getattr(torch, args.dtype) if gpu else torch.float32
    time_ms = timer(device, args.reps if gpu else 2)
    name = torch.cuda.get_device_name(device) if gpu else "CPU (Triton interpreter)"
    copy_bw = copy_bandwidth(device, 2**30 if gpu else 2**24, time_ms)
    print(f"device: {name}; copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write)")
    shape = (32, 8, 128, 16) if gpu else (4, 2, 64, 16)
    decode_cases = ([(1, 4096), (1, 32768), (8, 4096), (32, 4096), (64, 1024), (64, 4096),
                     (256, 1024)] if gpu else [(1, 100), (4, 40)])
    prefill_cases = [(1, 0, 2048), (4, 1024, 512), (8, 4096, 256)] if gpu else [(2, 17, 9)]
    decode = (triton_ops.paged_attention_decode, reference.paged_attention_decode)
    prefill = (triton_ops.paged_prefill_attention, reference.paged_prefill_attention)
    bench_decode(decode_cases, shape, dtype, device, time_ms, copy_bw, decode)
    bench_prefill(prefill_cases, shape, dtype, device, time_ms, prefill)
    sizes = (4096, 4096, 11008) if gpu else (8, 64, 96)
    bench_pointwise(*sizes, shape, dtype, device, time_ms, triton_ops, reference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
