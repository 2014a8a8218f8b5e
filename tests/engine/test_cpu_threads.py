"""torch's CPU threads follow the container's CPU limit, not the node's core count."""
import os

import pytest
import torch

from pagedserve.engine import cpu_threads
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.cpu_threads import cgroup_cpu_limit, limit_torch_threads, usable_cpus


def _cgroup(tmp_path, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return str(tmp_path)


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "150000 100000"}, 1.5),  # cgroup v2, limit 1500m
    ({"cpu.max": "max 100000"}, None),  # v2, no limit
    ({"cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"}, 4.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, none
    ({}, None),  # not in a cgroup we can read
])
def test_cgroup_cpu_limit_reads_v1_and_v2(tmp_path, files, cores):
    assert cgroup_cpu_limit(_cgroup(tmp_path, files)) == cores


def test_usable_cpus_rounds_the_quota_up_and_never_exceeds_the_affinity_mask(tmp_path):
    visible = len(os.sched_getaffinity(0))
    assert usable_cpus(_cgroup(tmp_path / "a", {"cpu.max": "50000 100000"})) == 1
    assert usable_cpus(_cgroup(tmp_path / "b", {"cpu.max": "max 100000"})) == visible
    assert usable_cpus(_cgroup(tmp_path / "c", {"cpu.max": f"{100000 * (visible + 8)} 100000"})) \
        == visible


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_cpu_limit_lowers_torch_threads(tmp_path, monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", _cgroup(tmp_path, {"cpu.max": "100000 100000"}))
    torch.set_num_threads(2)
    assert limit_torch_threads() == 1
    torch.set_num_threads(1)
    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", str(tmp_path / "none"))
    assert limit_torch_threads() == 1  # lowered only, never raised


def test_omp_num_threads_wins(tmp_path, monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", _cgroup(tmp_path, {"cpu.max": "100000 100000"}))
    torch.set_num_threads(2)
    assert limit_torch_threads() == 2


def test_the_engine_applies_the_limit(stories_path, tmp_path, monkeypatch, restore_threads):
    from pagedserve import LLM, SamplingParams
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", _cgroup(tmp_path, {"cpu.max": "100000 100000"}))
    torch.set_num_threads(2)
    llm = LLM(stories_path, num_kv_blocks=40)
    assert torch.get_num_threads() == 1
    out = llm.generate(["Once upon a time"], SamplingParams(max_tokens=4, temperature=0))
    assert len(out[0].outputs[0].token_ids) == 4


def test_the_engine_gives_attention_its_cpus_and_takes_them_back(stories_path, tmp_path,
                                                                 monkeypatch, restore_threads):
    # the governor may later run torch on fewer threads; the attention kernel keeps the
    # CPUs the engine was given (its helpers use what torch leaves idle)
    from pagedserve import LLM
    from pagedserve.kernels import cpu
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", str(tmp_path / "none"))
    torch.set_num_threads(2)
    llm = LLM(stories_path, num_kv_blocks=40)
    assert cpu._threads == 2
    torch.set_num_threads(1)  # what the governor does on a busy host
    assert cpu._threads == 2
    llm.llm_engine.shutdown()
    assert cpu._threads is None and cpu._held == []


def _sample(wall, delay_s, idle, total):
    return cpu_threads.ThreadSample(wall, int(delay_s * 1e9), idle, total)


def test_governor_drops_a_thread_when_the_team_waits_for_cpus():
    # 2 threads over 2 s waited 1.5 s in the run queue: another process holds a core
    before, after = _sample(0, 0, 0, 0), _sample(2.0, 1.5, 0, 400)
    assert cpu_threads.decide_threads(before, after, threads=2, most=2, cpus=2) == 1
    assert cpu_threads.decide_threads(before, after, threads=1, most=2, cpus=2) == 1  # floor


def test_governor_gives_a_thread_back_when_a_core_is_idle():
    # 1 thread, no waiting, half of the 2 CPUs' ticks idle: a whole core is free
    before, after = _sample(0, 0, 0, 0), _sample(2.0, 0.0, 200, 400)
    assert cpu_threads.decide_threads(before, after, threads=1, most=2, cpus=2) == 2
    assert cpu_threads.decide_threads(before, after, threads=2, most=2, cpus=2) == 2  # at most


def test_governor_keeps_threads_on_a_quiet_or_a_full_host():
    quiet = _sample(2.0, 0.01, 4, 400)   # busy with our own work, nobody waiting
    assert cpu_threads.decide_threads(_sample(0, 0, 0, 0), quiet, 2, 2, 2) == 2
    full = _sample(2.0, 0.0, 10, 400)    # 1 thread, the other core used by someone else
    assert cpu_threads.decide_threads(_sample(0, 0, 0, 0), full, 1, 2, 2) == 1
    assert cpu_threads.decide_threads(_sample(1, 0, 0, 0), _sample(1, 5, 0, 0), 2, 2, 2) == 2


def test_idle_ticks_count_only_the_cpus_we_may_run_on(monkeypatch):
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: {1})
    stat = ("cpu  10 0 10 100 5 0 0 0 0 0\n"
            "cpu0 5 0 5 50 0 0 0 0 0 0\n"
            "cpu1 1 0 2 30 4 0 0 0 0 0\n"
            "intr 12345\n")
    assert cpu_threads._idle_cpus_ticks(stat) == (34, 37)


def test_governor_is_off_when_the_user_chose_the_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: 2)
    governor = cpu_threads.ThreadGovernor(interval_s=0)
    assert not governor.enabled
    governor.tick(64, 64)  # does nothing, reads nothing


def test_governor_acts_on_what_it_decides(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = {"n": 2}
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: threads["n"])
    monkeypatch.setattr(cpu_threads.torch, "set_num_threads", lambda n: threads.update(n=n))
    samples = iter([_sample(0, 0, 0, 0), _sample(2.0, 2.0, 0, 400)])
    monkeypatch.setattr(cpu_threads, "take_sample", lambda: next(samples))
    monkeypatch.setattr(cpu_threads.os.path, "exists", lambda p: True)
    governor = cpu_threads.ThreadGovernor(interval_s=0)
    governor.tick(64, 64)
    assert threads["n"] == 1 and governor.most == 2


def test_openmp_spins_briefly_unless_the_user_chose(tmp_path):
    import subprocess
    import sys
    code = "import os, pagedserve; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "30000"
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "OMP_WAIT_POLICY": "PASSIVE"})
    assert mine.stdout.strip() == "None"  # a spin count would override the user's policy


# --- the A/B probe: what a thread buys, measured in rows per second of busy windows

def _times(**per_arm) -> dict:
    """{"t1": [(rows, tokens, steps, seconds), ...], "t2": ...} -> the governor's step times."""
    out = {}
    for arm, rows in per_arm.items():
        for r, tokens, steps, seconds in rows:
            out[(int(arm[1:]), cpu_threads.step_shape(r, tokens))] = [steps, seconds]
    return out


def test_faster_count_needs_more_than_the_margin_to_switch():
    close = _times(t2=[(64, 64, 20, 2.0)], t1=[(64, 64, 20, 1.92)])  # 4 % faster: noise
    assert cpu_threads.faster_count(close, current=2, other=1) == 2
    clear = _times(t2=[(64, 64, 20, 2.0)], t1=[(64, 64, 40, 3.0)])  # 75 vs 100 ms a step
    assert cpu_threads.faster_count(clear, current=2, other=1) == 1
    few = _times(t2=[(64, 64, 3, 0.3)], t1=[(64, 64, 3, 0.1)])
    assert cpu_threads.faster_count(few, current=2, other=1) == 2  # too few steps to tell


def test_faster_count_compares_steps_of_the_same_shape():
    # one arm ran the prefills (few rows, many tokens, long steps), the other only decodes:
    # per step of a shape both ran, two threads were faster
    times = _times(t2=[(64, 64, 30, 3.0), (8, 2048, 10, 5.0)],
                   t1=[(64, 64, 30, 4.5)])
    assert cpu_threads.faster_count(times, current=2, other=1) == 2
    assert cpu_threads.faster_count(times, current=1, other=2) == 2


class _Host:
    """A fake clock and thread pool: a step of `rows` takes rows / speed[threads] seconds;
    the scheduler's accounting shows neither waiting nor an idle core."""

    def __init__(self, monkeypatch, speed: dict[int, float]) -> None:
        self.now, self.threads, self.speed = 0.0, 2, speed
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(cpu_threads.os.path, "exists", lambda p: True)
        monkeypatch.setattr(cpu_threads.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: self.threads)
        monkeypatch.setattr(cpu_threads.torch, "set_num_threads",
                            lambda n: setattr(self, "threads", n))
        monkeypatch.setattr(cpu_threads, "take_sample",
                            lambda: _sample(self.now, 0, 0, int(self.now * 1000) + 1))

    def run(self, governor, seconds: float, rows: int = 64) -> list[int]:
        """Step for `seconds`; the thread count after each step."""
        seen, end = [], self.now + seconds
        while self.now < end:
            self.now += rows / self.speed[self.threads]
            governor.tick(rows, rows)
            seen.append(self.threads)
        return seen


def test_the_probe_keeps_one_thread_where_it_steps_faster(monkeypatch):
    # stories260K behind a busy frontend: the second thread costs more than it buys
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    seen = host.run(governor, 20.0)
    assert seen[0] == 2 and seen[-1] == 1 and governor.ceiling == 1
    # the next probe tries two again and stays with one
    assert set(host.run(governor, 60.0)) == {1, 2} and host.threads == 1


def test_the_probe_keeps_both_threads_where_they_pay(monkeypatch):
    host = _Host(monkeypatch, {1: 600.0, 2: 800.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    seen = host.run(governor, 20.0)
    assert 1 in seen and seen[-1] == 2 and governor.ceiling == 2


def test_the_core_a_probe_leaves_idle_does_not_end_it(monkeypatch):
    # a ~20M model: at one thread the other core idles, which must not cut the probe short
    host = _Host(monkeypatch, {1: 600.0, 2: 800.0})
    monkeypatch.setattr(cpu_threads, "take_sample", lambda: _sample(
        host.now, 0, int(host.now * 500) if host.threads == 1 else 0, int(host.now * 1000)))
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: {0, 1})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    seen = host.run(governor, 20.0)
    one_thread_windows = sum(1 for a, b in zip([2] + seen, seen) if (a, b) == (2, 1))
    assert one_thread_windows == 2 and seen[-1] == 2  # the probe's two, then no more


def test_an_idle_window_does_not_count_in_the_probe(monkeypatch):
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    # into the probe's first window
    host.run(governor, cpu_threads.WARMUP_WINDOWS + cpu_threads.PROBE_WINDOW_S / 2)
    assert host.threads == 1 and len(governor.plan) == 4
    governor.pause()
    host.now += 30.0  # nothing to do for a while: the next step must not be timed from before
    host.run(governor, 0.01)
    assert all(seconds < 1.0 for _, seconds in governor.times.values())
    host.run(governor, 5.0)
    assert host.threads == 1 and governor.ceiling == 1 and not governor.plan


def test_an_idle_core_gives_threads_back_only_up_to_the_measured_ceiling(monkeypatch):
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    host.run(governor, 20.0)
    assert host.threads == 1 and governor.ceiling == 1
    # from now on half of the 2 CPUs' ticks are idle: a whole core free, yet one thread
    # measured faster, so the idle-core rule must not undo the probe
    monkeypatch.setattr(cpu_threads, "take_sample",
                        lambda: _sample(host.now, 0, int(host.now * 500), int(host.now * 1000)))
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: {0, 1})
    assert set(host.run(governor, 5.0)) == {1}
    governor.ceiling = 2  # below a ceiling of two, the free core brings the thread back
    host.run(governor, 2.0)
    assert host.threads == 2


def test_the_engine_reports_rows_and_idleness_to_the_governor(stories_path):
    from pagedserve import LLM, SamplingParams

    class Recorder:
        def __init__(self):
            self.events = []

        def tick(self, rows, tokens):
            self.events.append(rows)

        def pause(self):
            self.events.append("pause")

    llm = LLM(stories_path, num_kv_blocks=40)
    llm.llm_engine.executor.governor = recorder = Recorder()
    llm.generate(["Once upon a time", "The cat"], SamplingParams(max_tokens=3, temperature=0))
    # two rows per step (one prefill step, then decodes), idle once both are done
    assert recorder.events == [2, 2, 2, "pause"]


def test_idle_gaps_between_bursts_do_not_postpone_the_probe(monkeypatch):
    # a server loaded in short bursts (benchmark rounds) still gets its probe
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    for _ in range(8):  # two busy windows each
        host.run(governor, 3.0)
        governor.pause()
        host.now += 5.0
    assert host.threads == 1 and governor.ceiling == 1


def test_shutdown_gives_the_next_engine_the_threads_this_one_found(stories_path, monkeypatch,
                                                                   restore_threads):
    from pagedserve import LLM
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    llm = LLM(stories_path, num_kv_blocks=40)
    torch.set_num_threads(1)  # as the governor may leave it mid-probe
    llm.llm_engine.shutdown()
    assert torch.get_num_threads() == 2


def test_a_drop_for_a_passing_burst_is_soon_undone_where_two_threads_pay(monkeypatch):
    # ~20M behind a frontend: 64 requests arriving make the team wait for a moment
    host = _Host(monkeypatch, {1: 600.0, 2: 800.0})
    governor = cpu_threads.ThreadGovernor(interval_s=1.0)
    burst = {"on": True}
    monkeypatch.setattr(cpu_threads, "take_sample", lambda: _sample(
        host.now, host.now * 0.8 if burst["on"] else 0.8, 0, int(host.now * 1000) + 1))
    host.run(governor, 1.5)
    assert host.threads == 1  # the run-queue rule dropped one
    burst["on"] = False
    seen = host.run(governor, 1 + cpu_threads.RECHECK_WINDOWS + 4 + 0.5)
    assert seen[-1] == 2 and governor.ceiling == 2  # long before the warm-up's 10 windows


def test_a_servers_core_measures_its_threads_within_seconds(monkeypatch):
    # stories260K behind a frontend: a fresh server's core is not left on 2 threads for the
    # 10-window warm-up an offline engine gets
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    server = cpu_threads.ThreadGovernor(interval_s=1.0)
    server.share_cores()
    # one busy window, then the probe's 4 short ones: within a benchmark's first round
    seconds = cpu_threads.SERVER_WARMUP_WINDOWS + 4 * cpu_threads.PROBE_WINDOW_S + 0.5
    assert seconds < 3
    assert host.run(server, seconds)[-1] == 1 and server.ceiling == 1
    host.threads = 2
    offline = cpu_threads.ThreadGovernor(interval_s=1.0)
    assert host.run(offline, seconds)[-1] == 2


def test_the_core_loop_tells_its_governor_it_shares_the_cores(stories_path, monkeypatch):
    from pagedserve.engine.core import run_core
    from pagedserve.engine.llm_engine import LLMEngine
    calls = []
    monkeypatch.setattr(cpu_threads.ThreadGovernor, "share_cores", lambda self: calls.append(1))

    class Channel:  # the frontend: asks the core to stop at once
        sent: list = []

        def poll(self, timeout=0.0):
            return True

        def recv(self):
            from pagedserve.engine.core import CoreCommands
            return CoreCommands(shutdown=True)

        def send(self, msg):
            self.sent.append(msg)
    engine = LLMEngine(EngineConfig(model=stories_path, num_kv_blocks=8, max_model_len=128))
    engine.executor.governor = cpu_threads.ThreadGovernor()
    try:
        assert run_core(engine, Channel()) == 0
    finally:
        engine.shutdown()
    assert calls == [1]


def test_a_probe_window_holds_enough_steps_where_steps_are_slow(monkeypatch):
    # a step takes 0.2 s (one thread) or 0.25 s (two): a 0.25 s window would hold one step,
    # too few for a verdict, which keeps the count it had; each holds PROBE_STEPS instead
    host = _Host(monkeypatch, {1: 320.0, 2: 256.0})
    server = cpu_threads.ThreadGovernor(interval_s=5.0)
    server.share_cores()
    host.run(server, 5.0 + 4 * cpu_threads.PROBE_STEPS * 0.25 + 1.0)
    assert not server.plan and server.ceiling == 1 and host.threads == 1


def test_probe_windows_of_fast_steps_are_short(monkeypatch):
    host = _Host(monkeypatch, {1: 6000.0, 2: 4000.0})
    server = cpu_threads.ThreadGovernor(interval_s=1.0)
    server.share_cores()
    seen = host.run(server, 1.0 + 4 * cpu_threads.PROBE_WINDOW_S + 0.05)
    switches = sum(1 for a, b in zip(seen, seen[1:]) if a != b)
    assert switches == 5 and seen[-1] == 1  # the probe's 1, 2, 1, 2, then the verdict: 1
