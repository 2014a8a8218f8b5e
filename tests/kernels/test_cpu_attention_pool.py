"""The CPU attention kernel's helper pool: used when torch runs on fewer threads than the
kernel may use (a server's core), it must give the reference's results however the helpers
are scheduled, never keep the caller waiting for one, and keep inputs alive for a helper that
is still inside a finished call."""
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pagedserve.kernels import cpu, reference

pytestmark = pytest.mark.skipif(shutil.which(cpu.COMPILER) is None, reason="no C compiler")
TOL = 1e-5


@pytest.fixture
def pooled(monkeypatch):
    """torch on one thread, the kernel allowed three: the caller and two helpers."""
    assert cpu.available()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cpu.set_attention_threads(3)
    yield
    cpu.set_attention_threads(None)
    cpu.release_inputs()


def _decode_and_prefill(cpu_kit, head: int, kv_heads: int, group: int, cache_dtype) -> float:
    """The largest difference from the reference over one decode and one prefill call."""
    seq_lens = [1, 300, 16, 17, 64, 5, 129, 40]
    c = cpu_kit.make_paged(seq_lens, 16, kv_heads, head, cache_dtype)
    q = torch.randn(len(seq_lens), kv_heads * group, head)
    args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, head ** -0.5)
    err = (cpu.paged_attention_decode(*args) - reference.paged_attention_decode(*args)).abs()
    q_lens = [1, 7, 16, 17, 60, 5, 100, 40]
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens).cumsum(0)
    q = torch.randn(sum(q_lens), kv_heads * group, head)
    args = (q, c.k_cache, c.v_cache, c.block_tables, qsl, c.seq_lens, head ** -0.5)
    err2 = (cpu.paged_prefill_attention(*args) - reference.paged_prefill_attention(*args)).abs()
    return max(err.max().item(), err2.max().item())


@pytest.mark.parametrize("head,kv_heads,group", [(8, 4, 2), (64, 2, 4), (128, 1, 8)])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_helpers_share_the_work_and_match_the_reference(cpu_kit, pooled, head, kv_heads, group,
                                                        cache_dtype):
    errors = [_decode_and_prefill(cpu_kit, head, kv_heads, group, cache_dtype) for _ in range(10)]
    assert max(errors) <= TOL, errors
    if sys.platform.startswith("linux"):
        assert _helper_threads() >= 2  # the helpers exist: the pool path ran


def test_torch_on_every_allowed_thread_keeps_openmp(cpu_kit, monkeypatch):
    # no CPU is left to helpers: the kernel splits over torch's own (OpenMP) threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu.set_attention_threads(2)
    try:
        assert _decode_and_prefill(cpu_kit, 64, 2, 4, torch.float32) <= TOL
    finally:
        cpu.set_attention_threads(None)


STARVED = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[1])
    import conftest
    from pagedserve.kernels import cpu, reference
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # helpers get no CPU of their own
    torch.set_num_threads(1)
    cpu.set_attention_threads(4)
    c = conftest.make_paged([300, 17, 64, 129] * 4, 16, 2, 64, device=torch.device("cpu"))
    worst = 0.0
    for i in range(300):
        q = torch.randn(16, 8, 64)
        args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.125)
        out = cpu.paged_attention_decode(*args)
        worst = max(worst, (out - reference.paged_attention_decode(*args)).abs().max().item())
    names = [open(f"/proc/self/task/{t}/comm").read().strip()
             for t in os.listdir("/proc/self/task")]
    print(names.count("pagedserve-attn"), worst)
""")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_helpers_with_no_cpu_never_stall_the_caller():
    # on one CPU the helpers run only when the scheduler preempts the caller for them, often
    # in the middle of an item: the caller takes over whatever they took and does not wait
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", STARVED, here], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    threads, worst = done.stdout.split()
    assert int(threads) == 3 and float(worst) <= TOL


def _child(conn, args) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP team
    err = (cpu.paged_attention_decode(*args) - reference.paged_attention_decode(*args)).abs()
    conn.send((_helper_threads(), err.max().item()))


def _helper_threads() -> int:
    """The pool's threads alive in this process (they carry a name of their own)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as f:
            names.append(f.read().strip())
    return names.count("pagedserve-attn")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc")
def test_a_forked_child_starts_helpers_of_its_own(cpu_kit, pooled):
    # a fork (tensor-parallel workers may be forked) copies the pool but not its threads
    assert _decode_and_prefill(cpu_kit, 64, 2, 4, torch.float32) <= TOL
    c = cpu_kit.make_paged([300, 17, 64], 16, 2, 64)
    args = (torch.randn(3, 8, 64), c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.125)
    ours, theirs = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(theirs, args))
    proc.start()
    assert ours.poll(60), "the forked child did not answer"
    threads, err = ours.recv()
    proc.join(10)
    assert proc.exitcode == 0 and threads == 2 and err <= TOL


def _helper_states() -> list[str]:
    """The scheduler state (R running, S sleeping, ...) of each of the pool's threads."""
    states = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as f:
            head, _, tail = f.read().rpartition(")")
        if head.partition("(")[2] == "pagedserve-attn":
            states.append(tail.split()[0])
    return states


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_helpers_sleep_once_calls_stop_coming(cpu_kit, monkeypatch):
    # an idle engine's helpers must not keep a CPU busy (nor use up a cgroup's CPU quota)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cpu.set_attention_threads(3)
    try:
        assert _decode_and_prefill(cpu_kit, 64, 2, 4, torch.float32) <= TOL
    finally:
        cpu.set_attention_threads(None)
    deadline = time.monotonic() + 30  # generous: asserts they sleep, not how soon
    while time.monotonic() < deadline and "R" in _helper_states():
        time.sleep(0.01)
    assert _helper_states() and set(_helper_states()) == {"S"}


PRIORITY = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, sys.argv[1])
    import conftest
    from pagedserve.kernels import cpu
    os.nice(3)  # a user's `nice pagedserve serve`: the helpers must keep it
    torch.set_num_threads(1)
    cpu.set_attention_threads(2)
    c = conftest.make_paged([300, 17, 64], 16, 2, 64, device=torch.device("cpu"))
    cpu.paged_attention_decode(torch.randn(3, 8, 64), c.k_cache, c.v_cache, c.block_tables,
                               c.seq_lens, 0.125)
    granted = granted_slice()

    def name(task):  # a thread that just ended (the probe's) may leave as we list it
        try:
            return open(f"/proc/self/task/{task}/comm").read().strip()
        except FileNotFoundError:
            return None
    (t,) = [t for t in os.listdir("/proc/self/task") if name(t) == "pagedserve-attn"]

    def slice_ns():
        return [line.split()[-1] for line in open(f"/proc/self/task/{t}/sched")
                if line.startswith("se.slice")]
    deadline = time.monotonic() + 30  # the helper asks for it once it runs: not how soon
    while granted and slice_ns() != [granted] and time.monotonic() < deadline:
        time.sleep(0.01)
    print("helper", os.sched_getscheduler(int(t)), os.getpriority(os.PRIO_PROCESS, int(t)),
          *slice_ns())
    print("granted", granted)
""")

# Whether this kernel (and sandbox) grants a thread of ours a 0.1 ms slice: the same request
# the helpers make, from a thread of the test's own, so the slice is checked where it exists.
SLICE_PROBE = textwrap.dedent("""
    import ctypes, os, platform, struct, threading

    def granted_slice():
        number = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
        if number is None:
            return None
        found = []
        def probe():
            attr = struct.pack("IIQiIQQQ", 48, 0, 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
                               100_000, 0, 0)
            buf = ctypes.create_string_buffer(attr, len(attr))
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(number, 0, buf, 0) == 0:
                found.extend(line.split()[-1] for line in open("/proc/thread-self/sched")
                             if line.startswith("se.slice"))
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return found[0] if found else None
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_helpers_run_at_the_callers_priority_with_a_short_slice():
    # at SCHED_IDLE they came to a busy server's calls too late to help; at the caller's
    # priority with a 0.1 ms slice a woken helper preempts whatever else has the CPU
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", SLICE_PROBE + PRIORITY, here],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    (helper,) = [line[1:] for line in lines if line[0] == "helper"]
    (granted,) = [line[1] for line in lines if line[0] == "granted"]
    assert int(helper[0]) == os.SCHED_OTHER and int(helper[1]) == 3
    if granted == "100000":  # Linux 6.12 on, where sched_setattr is allowed
        assert helper[2:] == ["100000"]


class _FakePool:
    def __init__(self, inside: list[int]) -> None:
        self.inside = inside

    def pool_inside(self) -> int:
        return self.inside.pop(0) if len(self.inside) > 1 else self.inside[0]


def test_inputs_stay_alive_while_a_helper_is_inside(monkeypatch):
    monkeypatch.setattr(cpu, "_held", [])
    monkeypatch.setattr(cpu, "_lib", _FakePool([1, 1, 0]))
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    cpu._hold(a, None)
    cpu._hold(b, None)
    assert [t[0] for t in cpu._held] == [a, b]  # a helper may still read either call's
    cpu._hold(c, None)
    assert cpu._held == []  # none inside: nothing to keep


def test_releasing_inputs_waits_for_the_helpers_to_leave(monkeypatch):
    monkeypatch.setattr(cpu, "_held", [(torch.zeros(1),)])
    monkeypatch.setattr(cpu, "_lib", _FakePool([1, 1, 1, 0]))
    cpu.release_inputs(timeout_s=10)
    assert cpu._held == []


def test_attention_threads_must_be_positive():
    with pytest.raises(ValueError, match="attention threads must be >= 1, got 0"):
        cpu.set_attention_threads(0)
