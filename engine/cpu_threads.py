"""How many CPU threads torch should use: the cores this process may really run on.

torch sizes its thread pool from the CPUs it can see. In a container with a CPU limit that is
the node's whole core count, while the cgroup quota lets the pod run on only a few: the extra
threads then time-slice against each other, and a 2-thread matmul on an oversubscribed core
was measured 10-20x slower than the same matmul on one thread. The quota is the truth.
"""
import logging
import math
import os
import time
from dataclasses import dataclass

import torch

from pagedserve.kernels import cpu as cpu_kernels

CGROUP_ROOT = "/sys/fs/cgroup"
log = logging.getLogger(__name__)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | None = None) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None."""
    root = root or CGROUP_ROOT
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus(root: str | None = None) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota rounded up."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def set_cpu_threads(n: int) -> None:
    """This process's compute threads on the CPU: torch's intra-op ones and the attention
    kernel's; the thread governor later moves torch's count alone, below this."""
    torch.set_num_threads(n)
    cpu_kernels.set_attention_threads(n)


def reset_cpu_threads(torch_threads: int) -> None:
    """The engine is done: torch back to `torch_threads` (the next engine in this process
    starts from there), the attention kernel following torch's count again, and the last
    inputs it kept for its helpers let go (they hold the KV cache)."""
    torch.set_num_threads(torch_threads)
    cpu_kernels.set_attention_threads(None)
    cpu_kernels.release_inputs()


def limit_torch_threads(share: int = 1) -> int:
    """Lower torch's intra-op threads to usable_cpus() // share (never raise them), unless
    the user chose with OMP_NUM_THREADS. Returns the thread count now in use."""
    if not os.environ.get("OMP_NUM_THREADS"):
        wanted = max(1, usable_cpus() // share)
        if wanted < torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def _run_delay_ns() -> int:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        stat = _read(f"/proc/self/task/{task}/schedstat")
        if stat:
            total += int(stat.split()[1])
    return total


def _idle_cpus_ticks(stat: str | None = None) -> tuple[int, int]:
    """(idle + iowait ticks, all ticks) over the CPUs this process may run on, from the
    per-CPU lines of /proc/stat (on a big shared host the rest of the machine is not ours)."""
    mine = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    idle = total = 0
    for line in (stat if stat is not None else _read("/proc/stat") or "").splitlines():
        name, *fields = line.split()
        if name in mine:
            ticks = [int(x) for x in fields]
            idle, total = idle + sum(ticks[3:5]), total + sum(ticks)
    return idle, total


@dataclass(slots=True)
class ThreadSample:
    wall_s: float
    run_delay_ns: int
    idle_ticks: int
    all_ticks: int


def take_sample() -> ThreadSample:
    return ThreadSample(time.monotonic(), _run_delay_ns(), *_idle_cpus_ticks())


def decide_threads(before: ThreadSample, after: ThreadSample, threads: int, most: int,
                   cpus: int) -> int:
    """The thread count for the next interval. Waiting for a CPU a quarter of the time means
    another process holds one of our cores: a thread fewer stops the team's barriers from
    waiting on a descheduled member (what made 2-thread steps 3-10x slower on a busy host).
    A core's worth of idle time on our `cpus` while below `most` gives a thread back."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return threads
    waiting = (after.run_delay_ns - before.run_delay_ns) / 1e9 / (wall * threads)
    ticks = after.all_ticks - before.all_ticks
    idle_cpus = cpus * (after.idle_ticks - before.idle_ticks) / ticks if ticks else 0
    if threads > 1 and waiting > 0.25:
        return threads - 1
    if threads < most and idle_cpus > 0.9 and waiting < 0.05:
        return threads + 1
    return threads


# the A/B probe: busy windows at the chosen count between probes, the probe's windows
# (alternative, current, alternative, current: a drift in the load hits both arms alike), how
# much faster the alternative must be to win, and the fewest steps of shared shapes that
# make a verdict
WARMUP_WINDOWS = 10
HOLD_WINDOWS = 30
RECHECK_WINDOWS = 3  # after the run-queue rule dropped a thread: was it worth it?
SERVER_WARMUP_WINDOWS = 1  # a server's core: the first probe after one busy window
# A probe's window ends after PROBE_WINDOW_S once it has PROBE_STEPS steps (at most
# interval_s): 1 s windows kept a fresh server's core 3 s on an unmeasured count and 4 s in
# the probe, most of a benchmark's first round (stories260K: 5,935 out tok/s in round 1 vs
# 7,294-7,895 in the next two; 7,201 with one thread from the start).
PROBE_WINDOW_S = 0.25
PROBE_STEPS = 4
MARGIN = 0.05
MIN_STEPS = 8


def step_shape(rows: int, tokens: int) -> tuple[int, int]:
    """Steps alike enough to compare their times: rows and tokens to the power of two."""
    return rows.bit_length(), tokens.bit_length()


def faster_count(times: dict[tuple[int, tuple[int, int]], list[float]], current: int,
                 other: int, margin: float = MARGIN) -> int:
    """`other` if its steps took less time than `current`'s by more than `margin`, over the
    step shapes both ran (a window of prefills must not look slower than one of decodes);
    `current` otherwise, or when they shared too few steps to tell. `times` maps (threads,
    shape) to [steps, seconds]."""
    mine = {shape: t for (n, shape), t in times.items() if n == current}
    theirs = {shape: t for (n, shape), t in times.items() if n == other}
    spent_mine = spent_theirs = steps = 0.0
    for shape in mine.keys() & theirs.keys():
        (a, sa), (b, sb) = mine[shape], theirs[shape]
        k = min(a, b)  # as many steps of this shape on each side
        spent_mine += k * sa / a
        spent_theirs += k * sb / b
        steps += k
    if steps < MIN_STEPS:
        return current
    return other if spent_theirs * (1 + margin) < spent_mine else current


class ThreadGovernor:
    """Adapts torch's CPU threads to the cores this process really gets, in two ways.

    What a thread buys: now and then it runs a few windows with one thread fewer (or more)
    and keeps as its ceiling the count whose steps took less time, step shapes alike. A
    server's core shares the cores with the HTTP frontend, whose work comes in bursts too
    short to show as waiting: on 2 cores one core thread served stories260K 47 % faster,
    while a ~20M model served 35 % faster with two. A step's time runs from the end of the
    one before, so what the engine does between steps (sending outputs) counts too, and a
    step after the engine ran out of work is not timed. Between probes, every `interval_s`,
    the scheduler's own accounting (/proc schedstat and stat) reacts at once: waiting for a
    CPU drops a thread (and brings the next probe close), an idle core gives one back up to
    the ceiling (in windows where the engine never ran out of work). Off when the user chose
    OMP_NUM_THREADS, or where /proc has no schedstat."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.most = self.ceiling = torch.get_num_threads()
        self.interval_s = interval_s
        self.enabled = (self.most > 1 and not os.environ.get("OMP_NUM_THREADS")
                        and os.path.exists("/proc/self/schedstat"))
        self.last = take_sample() if self.enabled else None
        self.last_step, self.step_busy, self.window_busy = time.monotonic(), True, True
        self.held = HOLD_WINDOWS - WARMUP_WINDOWS  # the first probe comes soon after start
        self.plan: list[int] = []  # the probe's counts, window by window: other, base, ...
        self.done = 0  # windows of the plan behind us
        self.window_steps = 0  # steps in the window now running
        self.times: dict[tuple[int, tuple[int, int]], list[float]] = {}

    def share_cores(self) -> None:
        """This engine serves a frontend whose HTTP work shares the cores (a server's core):
        the first probe comes after SERVER_WARMUP_WINDOWS busy windows instead of
        WARMUP_WINDOWS, so a server's first seconds do not run on a thread count nobody
        measured."""
        self._probe_within(SERVER_WARMUP_WINDOWS)

    def _probe_within(self, windows: int) -> None:
        """Start the next probe after at most `windows` more busy windows."""
        self.held = max(self.held, HOLD_WINDOWS - windows)

    def pause(self) -> None:
        """The engine ran out of work: time until the next step measures idleness."""
        self.step_busy = self.window_busy = False

    def tick(self, rows: int, tokens: int) -> None:
        """Call at the end of every step with its sequence rows and tokens."""
        if not self.enabled:
            return
        now_s, threads = time.monotonic(), torch.get_num_threads()
        if self.plan and self.step_busy:
            t = self.times.setdefault((threads, step_shape(rows, tokens)), [0, 0.0])
            t[0], t[1] = t[0] + 1, t[1] + now_s - self.last_step
        self.last_step, self.step_busy = now_s, True
        self.window_steps += 1
        if not self._window_over(now_s - self.last.wall_s):
            return
        self.window_steps = 0
        now = take_sample()
        before, self.last = self.last, now
        busy, self.window_busy = self.window_busy, True
        if self.plan:
            return self._probe(threads)
        if not busy:  # it measured idleness, not contention
            return
        wanted = decide_threads(before, now, threads, self.ceiling, len(os.sched_getaffinity(0)))
        if wanted < threads:  # a burst (e.g. requests arriving) can look like a busy host
            self._probe_within(RECHECK_WINDOWS)
            self._set(threads, wanted, "cores busy elsewhere")
        elif wanted > threads:
            self._set(threads, wanted, "cores free again")
        else:
            self._probe(threads)

    def _window_over(self, seconds: float) -> bool:
        if seconds >= self.interval_s:
            return True
        return (bool(self.plan) and seconds >= PROBE_WINDOW_S
                and self.window_steps >= PROBE_STEPS)

    def _probe(self, threads: int) -> None:
        """Advance the A/B probe by one window, or start one when it is time."""
        if self.plan:
            self.done += 1
            if self.done < len(self.plan):
                return self._set(threads, self.plan[self.done], "probe")
            other, base = self.plan[:2]
            self.ceiling = best = faster_count(self.times, base, other)
            self.plan, self.times, self.held = [], {}, 0
            return self._set(threads, best, "measured faster")
        self.held += 1
        other = threads - 1 if threads > 1 else threads + 1
        if self.held >= HOLD_WINDOWS and other <= self.most:
            self.plan, self.done = [other, threads, other, threads], 0
            self._set(threads, other, "probe")

    def _set(self, threads: int, wanted: int, why: str) -> None:
        if wanted == threads:
            return
        log.log(logging.DEBUG if why == "probe" else logging.INFO, "CPU threads %d -> %d (%s)",
                threads, wanted, why)
        torch.set_num_threads(wanted)
