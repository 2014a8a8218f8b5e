"""Decode attention as a CUDA graph replays it: one fixed launch (the static block table,
max_model_len wide, with stale ids past each row's blocks and padding rows of length 1)
whose context lengths change in the device tensor between calls."""
import torch

from pagedserve.kernels import reference


def test_one_launch_shape_serves_any_mix_of_lengths(kit, triton_ops):
    page, kv_heads, q_heads, head = 16, 2, 4, 32
    c = kit.make_paged([40, 7, 33], page, kv_heads, head)
    num_blocks = c.k_cache.shape[0]
    width = 8  # the graphs' table width, wider than any row here needs
    table = torch.randint(0, num_blocks, (4, width), dtype=torch.int32, device=kit.device)
    table[:3, :c.block_tables.shape[1]] = c.block_tables  # stale ids stay past each row's own
    lens = torch.ones(4, dtype=torch.int32, device=kit.device)  # row 3: padding
    q = torch.randn(4, q_heads, head, device=kit.device)
    for step_lens in ([40, 7, 33], [41, 1, 17], [12, 8, 34]):
        lens[:3] = torch.tensor(step_lens, dtype=torch.int32)  # in place, as a replay sees it
        out = triton_ops.paged_attention_decode(q, c.k_cache, c.v_cache, table, lens,
                                                head ** -0.5)
        ref = reference.paged_attention_decode(q[:3], c.k_cache, c.v_cache, c.block_tables,
                                               lens[:3], head ** -0.5)
        kit.check_attention("decode, static graph inputs", out[:3], ref)
        assert torch.isfinite(out[3]).all()
