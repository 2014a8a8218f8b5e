"""Workloads are reproducible from their seed and respect the asked length ranges."""
import json

import pytest

from pagedserve.benchmarks import workload
from pagedserve.benchmarks.throughput import hf_batches
from pagedserve.benchmarks.workload import BenchRequest


def test_parse_range():
    assert workload.parse_range("128") == (128, 128)
    assert workload.parse_range("32-512") == (32, 512)
    assert workload.parse_range(7) == (7, 7)
    for bad in ("0", "9-3", "a-b", "1-2-3", ""):
        with pytest.raises(ValueError, match="LO-HI"):
            workload.parse_range(bad)


def test_random_requests_are_seeded_and_in_range():
    special = frozenset({0, 1, 2})
    a = workload.random_requests(200, (32, 512), (16, 256), 512, seed=3, exclude_ids=special)
    b = workload.random_requests(200, (32, 512), (16, 256), 512, seed=3, exclude_ids=special)
    c = workload.random_requests(200, (32, 512), (16, 256), 512, seed=4, exclude_ids=special)
    assert a == b and a != c
    assert all(32 <= r.prompt_len <= 512 and 16 <= r.output_len <= 256 for r in a)
    ids = {t for r in a for t in r.prompt_token_ids}
    assert not ids & special and max(ids) < 512
    # lengths are mixed, not all one value: both ends of the ranges are reached closely
    assert min(r.prompt_len for r in a) < 60 and max(r.prompt_len for r in a) > 480
    assert min(r.output_len for r in a) < 30 and max(r.output_len for r in a) > 240


def test_fixed_lengths_and_token_counts():
    reqs = workload.random_requests(5, (10, 10), (3, 3), 100, seed=0)
    assert [r.prompt_len for r in reqs] == [10] * 5
    assert workload.token_counts(reqs) == (50, 15)


def test_check_fits_names_the_request():
    reqs = [BenchRequest([1] * 10, 5), BenchRequest([1] * 500, 100)]
    workload.check_fits(reqs, 600)
    with pytest.raises(ValueError, match="request 1 needs 500 \\+ 100"):
        workload.check_fits(reqs, 512)


def test_sharegpt_loader(tmp_path, stories_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(stories_path)
    data = [{"conversations": [{"from": "human", "value": f"Tell me a story about a cat {i}."},
                               {"from": "gpt", "value": "Once upon a time there was a cat."}]}
            for i in range(6)]
    data.append({"conversations": [{"from": "human", "value": "Hi"}]})  # no reply: skipped
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    reqs = workload.sharegpt_requests(str(path), 4, tok, seed=1)
    assert len(reqs) == 4
    assert all(r.output_len == len(tok.encode("Once upon a time there was a cat.")) for r in reqs)
    assert all(r.prompt.startswith("Tell me") and r.prompt_token_ids == tok.encode(r.prompt)
               for r in reqs)
    with pytest.raises(ValueError, match="only 6 usable"):
        workload.sharegpt_requests(str(path), 10, tok)


def test_hf_batches_cap_size_and_padded_length():
    reqs = [BenchRequest([1] * p, o) for p, o in [(10, 5), (20, 5), (10, 50), (5, 5), (5, 5)]]
    assert [len(b) for b in hf_batches(reqs, max_batch_size=2)] == [2, 2, 1]
    # 20 + 50 > 60 closes the batch before the third request
    assert [len(b) for b in hf_batches(reqs, max_batch_size=8, max_len=60)] == [2, 3]
    assert sum(hf_batches(reqs, 8), []) == reqs
