"""Model architectures, keyed by the `architectures` name in a Hugging Face config.json."""
from pagedserve.engine.models.gemma import GemmaForCausalLM
from pagedserve.engine.models.llama import LlamaForCausalLM
from pagedserve.engine.models.moe import MixtralForCausalLM, Qwen2MoeForCausalLM
from pagedserve.engine.models.phi3 import Phi3ForCausalLM

MODELS = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen2MoeForCausalLM,
    "Gemma2ForCausalLM": GemmaForCausalLM,
    "Gemma3ForCausalLM": GemmaForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
}


def model_class(architectures: list[str]):
    """The class for the first supported architecture; ValueError names them all otherwise."""
    for arch in architectures:
        if arch in MODELS:
            return MODELS[arch]
    raise ValueError(f"unsupported model architecture {architectures}; "
                     f"supported: {', '.join(sorted(MODELS))}")
