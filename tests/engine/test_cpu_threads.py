"""torch's CPU threads follow the container's CPU limit, not the node's core count."""
import os

import pytest
import torch

from pagedserve.engine import cpu_threads
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
