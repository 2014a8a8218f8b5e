"""How much of a GPU the KV cache takes: vLLM's meaning of gpu_memory_utilization."""
import pytest

from pagedserve.engine.model_runner import kv_budget_bytes

GIB = 2**30


def test_the_share_less_the_engines_own_use_goes_to_the_cache():
    # 140 GiB device, 0.9 of it, 20 GiB of weights and peak activations
    assert kv_budget_bytes(140 * GIB, 120 * GIB, 0.9, 20 * GIB) == int(126 * GIB) - 20 * GIB


def test_two_engines_at_half_share_one_device():
    # the second engine starts while the first holds its 70 GiB
    assert kv_budget_bytes(140 * GIB, 65 * GIB, 0.45, 5 * GIB) == int(63 * GIB) - 5 * GIB


def test_a_share_other_processes_hold_is_refused_by_name():
    # seen on an H200: eight test processes on one GPU, each asking for 0.9 of it, the last
    # ran out of memory 94 GiB into its cache
    with pytest.raises(ValueError, match=r"gpu_memory_utilization=0\.9 .* only 19\.0 GiB "
                                         r"of the device's 140\.0 GiB are free") as e:
        kv_budget_bytes(140 * GIB, 19 * GIB, 0.9, 1 * GIB)
    assert "kv_cache_memory" in str(e.value)
