"""Find a model's files and load its safetensors weights shard by shard into our layers."""
import glob
import os
from importlib.resources import files

import torch
from safetensors import safe_open
from torch import nn


def default_model() -> str:
    """The bundled stories260K model folder (package data of `pagedserve`)."""
    return str(files("pagedserve") / "models" / "stories260K")


def resolve_model_path(model: str) -> str:
    """A local folder as is; a hub id from the local Hugging Face cache (downloaded only when
    the hub is reachable and HF_HUB_OFFLINE is not set)."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"model folder {model!r} has no config.json")
        return model
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(f"model path {model!r} does not exist")
    from huggingface_hub import snapshot_download
    # read the environment now, not at huggingface_hub's import, so late settings apply
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        return snapshot_download(model, allow_patterns=patterns, cache_dir=cache,
                                 local_files_only=True)
    except Exception:
        if offline:
            raise ValueError(f"model {model!r} is neither a local folder nor in the Hugging "
                             f"Face cache (offline mode)") from None
    try:
        return snapshot_download(model, allow_patterns=patterns, cache_dir=cache)
    except Exception as e:
        raise ValueError(f"model {model!r} is neither a local folder nor in the Hugging Face "
                         f"cache, and could not be downloaded ({type(e).__name__})") from None


def load_weights(model: nn.Module, path: str) -> None:
    """Copy every checkpoint tensor into the matching parameter via its weight_loader."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path!r}")
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules", {})
    loaded = set()
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                target = _load_one(params, packed, name, f.get_slice(name))
                if target:
                    loaded.add(target)
    missing = set(params) - loaded
    tied = {n for n in missing if n.startswith("lm_head.")}
    if missing - tied:
        raise ValueError(f"checkpoint in {path!r} lacks weights: {sorted(missing - tied)[:5]}")


def _load_one(params: dict, packed: dict, name: str, tensor) -> str | None:
    if "rotary_emb.inv_freq" in name:
        return None
    for ckpt_name, (fused, shard_id) in packed.items():
        if f".{ckpt_name}." in name:
            target = name.replace(ckpt_name, fused)
            param = params[target]
            with torch.no_grad():
                param.weight_loader(param, tensor, shard_id)
            return target
    param = params.get(name)
    if param is None:
        return None  # e.g. a tied lm_head copy the model does not hold
    with torch.no_grad():
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            param.data.copy_(tensor[:])
        else:
            loader(param, tensor)
    return name
