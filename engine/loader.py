"""Find a model's files and load its safetensors weights shard by shard into our layers."""
import glob
import os
from importlib.resources import files

import torch
from safetensors import safe_open
from torch import nn

BUNDLED_MODEL_NAME = "stories260K"
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
_HOW_TO = ("download it first (`huggingface-cli download {m}`), or pass a local folder with "
           "config.json and *.safetensors")


def default_model() -> str:
    """The bundled stories260K model folder (package data of `pagedserve`)."""
    return str(files("pagedserve") / "models" / "stories260K")


def resolve_model_path(model: str) -> str:
    """A local folder as is; the bundled model by its served name; a hub id from the local
    Hugging Face cache (downloaded only when the hub is reachable and HF_HUB_OFFLINE is not
    set). Every failure is a ValueError saying why and what to do."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"model folder {model!r} has no config.json")
        return model
    if model == BUNDLED_MODEL_NAME:
        return default_model()
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(f"model path {model!r} does not exist")
    return _from_hub(model)


def _from_hub(model: str) -> str:
    from huggingface_hub import snapshot_download
    # read the environment now, not at huggingface_hub's import, so late settings apply
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return snapshot_download(model, allow_patterns=_HUB_FILES, cache_dir=cache,
                                 local_files_only=True)
    except Exception:
        if offline:
            raise ValueError(f"model {model!r} is not a local folder and not in the Hugging "
                             f"Face cache, and HF_HUB_OFFLINE is set: "
                             + _HOW_TO.format(m=model)) from None
    try:
        return snapshot_download(model, allow_patterns=_HUB_FILES, cache_dir=cache)
    except Exception as e:
        raise ValueError(hub_error_message(model, e)) from None


def hub_error_message(model: str, error: BaseException) -> str:
    """Why a hub download failed, in words a user can act on."""
    from huggingface_hub import errors
    name = f"model {model!r} is not a local folder and not in the Hugging Face cache"
    if isinstance(error, errors.GatedRepoError):
        return (f"{name}; it is a gated repository: accept its license on huggingface.co and "
                f"set HF_TOKEN to a token with access, or " + _HOW_TO.format(m=model))
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"{name}, and the hub has no repository of that name (or it is private: set "
                f"HF_TOKEN); check the spelling, or pass a local folder")
    if isinstance(error, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return (f"{name}, and the hub cannot be reached (no network?): "
                + _HOW_TO.format(m=model) + "; HF_HUB_OFFLINE=1 skips the attempt")
    return f"{name}, and downloading it failed ({type(error).__name__}: {error})"


def load_weights(model: nn.Module, path: str) -> None:
    """Copy every checkpoint tensor into the matching parameter via its weight_loader."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path!r}")
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules", {})
    # a model may map names itself (stacked experts, fused checkpoint projections)
    custom = getattr(model, "load_weight", None)
    holds = getattr(model, "holds_weight", None)  # a pipeline stage holds part of the model
    loaded = set()
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if holds is not None and not holds(name):
                    continue
                if custom is not None:
                    target = custom(params, name, f.get_slice(name))
                else:
                    target = load_tensor(params, packed, name, f.get_slice(name))
                if target:
                    loaded.add(target)
    missing = set(params) - loaded
    tied = {n for n in missing if n.startswith("lm_head.")}
    if missing - tied:
        raise ValueError(f"checkpoint in {path!r} lacks weights: {sorted(missing - tied)[:5]}")


def load_tensor(params: dict, packed: dict, name: str, tensor) -> str | None:
    """Copy one checkpoint tensor (a safetensors slice) into its parameter, through a fused
    parameter's shard when `packed` maps the name; returns the parameter's name, or None."""
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
