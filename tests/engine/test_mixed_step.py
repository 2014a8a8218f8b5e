"""A step mixing decodes and prefills: decodes are scheduled first and attend as one decode
batch, which gives the same attention output as running every sequence as a prefill."""
import torch

from pagedserve.engine.layers.attention import Attention, AttentionMetadata
from pagedserve.engine.model_runner import _leading_ones


def test_mixed_step_matches_all_prefill():
    torch.manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 8, 4
    attn = Attention(heads, dim, kv_heads, dim ** -0.5)
    attn.k_cache = torch.randn(16, block, kv_heads, dim)
    attn.v_cache = torch.randn(16, block, kv_heads, dim)
    num_new = [1, 1, 3, 5]  # two decodes, then two prefills
    seq_lens = [6, 9, 3, 7]
    tables = torch.tensor([[0, 1, 0], [2, 3, 4], [5, 0, 0], [6, 7, 0]], dtype=torch.int32)
    qsl = torch.tensor([0, 1, 2, 5, 10], dtype=torch.int32)
    slots = []
    for i, (n, length) in enumerate(zip(num_new, seq_lens)):
        slots += [int(tables[i, p // block]) * block + p % block for p in range(length - n, length)]
    q, k, v = (torch.randn(10, h, dim) for h in (heads, kv_heads, kv_heads))

    def run(num_decodes: int) -> torch.Tensor:
        meta = AttentionMetadata(torch.tensor(slots), tables,
                                 torch.tensor(seq_lens, dtype=torch.int32), qsl,
                                 max(num_new), num_decodes)
        return attn(q.clone(), k, v, meta)
    assert _leading_ones(num_new) == 2
    torch.testing.assert_close(run(2), run(0))


def test_chunked_decode_matches_one_call():
    torch.manual_seed(1)
    heads, kv_heads, dim, block = 4, 2, 8, 4
    attn = Attention(heads, dim, kv_heads, dim ** -0.5)
    attn.k_cache = torch.randn(40, block, kv_heads, dim)
    attn.v_cache = torch.randn(40, block, kv_heads, dim)
    seq_lens = torch.tensor([3, 5, 8, 9, 12, 16, 16], dtype=torch.int32)
    tables = torch.randperm(40)[:28].view(7, 4).int()
    q = torch.randn(7, heads, dim)
    whole = attn._decode(q, tables, seq_lens, chunk=0)
    torch.testing.assert_close(attn._decode(q, tables, seq_lens, chunk=3), whole)


class _Req:
    def __init__(self, name: str, num_tokens: int) -> None:
        self.name, self.num_tokens = name, num_tokens


def test_scheduler_output_puts_decodes_first_shortest_first():
    from pagedserve.engine.scheduler import SchedulerOutput, _decodes_first
    reqs = [_Req("prefill", 7), _Req("d-long", 90), _Req("chunk", 30), _Req("d-short", 12)]
    out = _decodes_first(SchedulerOutput(reqs, [7, 1, 3, 1]))
    assert [r.name for r in out.requests] == ["d-short", "d-long", "prefill", "chunk"]
    assert out.num_new_tokens == [1, 1, 7, 3]
