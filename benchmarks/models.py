"""Random-weight Llama models by size, written as Hugging Face folders for offline benchmarks.

They use the bundled stories260K tokenizer, so the vocabulary is its 512 tokens; the sizes
count every parameter (embedding and LM head untied). `random:20M` names the 20M one.
"""
import os
import shutil

# size -> LlamaConfig fields; parameter counts in the comments
SIZES = {
    "1M": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=4),  # 0.92M
    "20M": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=8),  # 19.5M
    "100M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=14,
                 num_attention_heads=12, num_key_value_heads=12),  # 99.9M
    "1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),  # 0.97B (TinyLlama's shape)
}
VOCAB_SIZE = 512
MAX_POSITIONS = 2048
PREFIX = "random:"


def num_params(size: str) -> int:
    """Parameters of a size's model, from its shape alone (no torch needed)."""
    s = SIZES[size]
    h, i, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    head = h // s["num_attention_heads"]
    kv = s["num_key_value_heads"] * head
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q,o + k,v + mlp + two norms
    return n * per_layer + 2 * VOCAB_SIZE * h + h


def build_model(size: str, path: str, dtype: str = "float32", seed: int = 0) -> str:
    """Write the random-weight model `size` to `path` (config, safetensors, tokenizer)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    import torch
    import transformers

    from pagedserve.engine.loader import default_model
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        torch_dtype=dtype, **SIZES[size])
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(default_model(), name), path)
    return path


def cache_dir() -> str:
    return os.environ.get("PAGEDSERVE_BENCH_MODELS") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedserve", "bench-models")


def resolve_model(name: str | None) -> str | None:
    """`random:<size>` -> its folder in the cache, built on first use; other names unchanged."""
    if not name or not name.startswith(PREFIX):
        return name
    size = name[len(PREFIX):]
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r} in {name!r}; choose from {', '.join(SIZES)}")
    path = os.path.join(cache_dir(), f"llama-{size}")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        tmp = f"{path}.tmp{os.getpid()}"
        build_model(size, tmp)
        os.replace(tmp, path) if not os.path.exists(path) else shutil.rmtree(tmp)
    return path


def main(args) -> int:
    """`pagedserve bench model SIZE --out DIR`."""
    path = build_model(args.size, args.out, args.dtype)
    print(f"wrote a random-weight Llama of {num_params(args.size) / 1e6:.1f}M parameters to {path}")
    return 0
