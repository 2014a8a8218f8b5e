"""The family-specific parts of a Hugging Face config.json (MoE, sliding windows, rope per layer
type, Gemma's soft-caps), read from both the transformers 4.x and 5.x forms of the file."""
from dataclasses import dataclass, field

FULL, SLIDING = "full_attention", "sliding_attention"
# families whose q/k projections carry biases without saying so in their config
_QKV_BIAS = ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM")
_QK_NORM = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma3ForCausalLM")


@dataclass(slots=True)
class MoEConfig:
    """A sparse MLP: each token runs `top_k` of `num_experts` experts, weighted by a router."""
    num_experts: int
    top_k: int
    intermediate_size: int  # of each expert
    renormalize: bool  # the top-k router weights are rescaled to sum to 1
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's always-on expert (0: none)
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    def is_moe_layer(self, layer: int) -> bool:
        """Qwen-MoE may keep a dense MLP in some layers (mlp_only_layers, decoder_sparse_step)."""
        return layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0


def parse_moe(d: dict, arch: list[str]) -> MoEConfig | None:
    # Mixtral and 5.x Qwen3-MoE say num_local_experts; Qwen2-MoE and 4.x Qwen3-MoE num_experts
    experts = d.get("num_local_experts") or d.get("num_experts") or 0
    if not experts:
        return None
    return MoEConfig(
        num_experts=experts, top_k=d["num_experts_per_tok"],
        intermediate_size=d.get("moe_intermediate_size") or d["intermediate_size"],
        # Mixtral always renormalises; the Qwen MoEs say so with norm_topk_prob
        renormalize="MixtralForCausalLM" in arch or bool(d.get("norm_topk_prob", False)),
        shared_expert_intermediate_size=d.get("shared_expert_intermediate_size") or 0,
        decoder_sparse_step=d.get("decoder_sparse_step") or 1,
        mlp_only_layers=list(d.get("mlp_only_layers") or []))


def _rope_entry(params: dict, theta: float | None = None) -> tuple[float, dict | None]:
    """(theta, scaling) from one rope dict; 4.x's "type" is 5.x's "rope_type"."""
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling.get("type") and not scaling.get("rope_type"):
        scaling["rope_type"] = scaling["type"]
    theta = theta if theta is not None else params.get("rope_theta", 10000.0)
    return float(theta), scaling or None


def parse_rope(d: dict) -> dict:
    """Rope of full-attention layers (rope_theta, rope_scaling) and of sliding-window layers
    (local_rope_theta, local_rope_scaling): Gemma 3 gives its local layers their own base,
    as 4.x `rope_local_base_freq` or as 5.x per-layer-type `rope_parameters`."""
    params = d.get("rope_parameters") or {}
    if FULL in params:
        full = _rope_entry(params[FULL])
        local = _rope_entry(params[SLIDING]) if SLIDING in params else full
    else:
        params = params or d.get("rope_scaling") or {}
        full = _rope_entry(params, d.get("rope_theta"))
        local = (float(d["rope_local_base_freq"]), None) if "rope_local_base_freq" in d else full
    return dict(rope_theta=full[0], rope_scaling=full[1], local_rope_theta=local[0],
                local_rope_scaling=local[1])


def parse_layer_types(d: dict, arch: list[str]) -> list[str]:
    """Which layers attend through the sliding window, in transformers' rules per family
    when the config has no `layer_types` list (4.x files)."""
    n, window = d["num_hidden_layers"], d.get("sliding_window")
    if not window:
        return [FULL] * n
    if d.get("layer_types"):
        return list(d["layer_types"])
    if "Gemma2ForCausalLM" in arch:  # even layers local, odd layers global
        return [SLIDING if i % 2 == 0 else FULL for i in range(n)]
    if "Gemma3ForCausalLM" in arch:  # every sliding_window_pattern-th layer global
        pattern = d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6
        return [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
    if "use_sliding_window" in d:  # the Qwen families: off unless enabled, then from a layer on
        start = d.get("max_window_layers", 0) if d["use_sliding_window"] else n
        return [SLIDING if i >= start else FULL for i in range(n)]
    return [SLIDING] * n  # Mistral, Mixtral, Phi-3: every layer


def family_fields(d: dict, arch: list[str]) -> dict:
    """ModelConfig's keyword arguments that differ by family."""
    layer_types = parse_layer_types(d, arch)
    return dict(
        **parse_rope(d), layer_types=layer_types,
        sliding_window=d.get("sliding_window") if SLIDING in layer_types else None,
        attention_bias=d.get("attention_bias",
                             d.get("qkv_bias", any(a in arch for a in _QKV_BIAS))),
        qk_norm=any(a in arch for a in _QK_NORM),
        hidden_act=d.get("hidden_activation") or d.get("hidden_act") or "silu",
        attn_logit_softcapping=d.get("attn_logit_softcapping"),
        final_logit_softcapping=d.get("final_logit_softcapping"),
        query_pre_attn_scalar=d.get("query_pre_attn_scalar"),
        partial_rotary_factor=(d.get("rope_parameters") or {}).get(
            "partial_rotary_factor", d.get("partial_rotary_factor", 1.0)),
        moe=parse_moe(d, arch))
