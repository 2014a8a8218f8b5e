"""Model loading: sharded checkpoints, the HF cache, both rope config forms, rope scaling."""
import json
import os
import shutil

import pytest

from pagedserve import LLM, SamplingParams

PROMPTS = [[1, 20, 30, 40, 50], [1] + list(range(100, 130))]


def greedy(llm: LLM, n: int = 8) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_sharded_checkpoint_with_index(tiny_model, tmp_path):
    import transformers
    src = tiny_model("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    dst = tmp_path / "sharded"
    model.save_pretrained(dst, max_shard_size="50KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), dst)
    assert len(list(dst.glob("*.safetensors"))) > 2
    assert (dst / "model.safetensors.index.json").exists()
    assert greedy(LLM(str(dst))) == greedy(LLM(src))


def test_hub_id_resolves_from_local_hf_cache(stories_path, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--tiny--stories" / "snapshots" / "abc123"
    shutil.copytree(stories_path, snapshot)
    (tmp_path / "hub" / "models--tiny--stories" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--stories" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = LLM("tiny/stories").generate("Once upon a time",
                                        SamplingParams(temperature=0, max_tokens=8),
                                        use_tqdm=False)
    assert out[0].outputs[0].text.startswith(", there was a little")


def test_old_rope_theta_form_equals_rope_parameters(tiny_model, tmp_path):
    src = tiny_model("llama", rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    dst = tmp_path / "old"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    (dst / "config.json").write_text(json.dumps(cfg))
    new_form = greedy(LLM(src))
    assert greedy(LLM(str(dst))) == new_form
    assert greedy(LLM(tiny_model("llama"))) != new_form  # theta really matters


def test_llama3_rope_scaling_matches_transformers(tiny_model, hf_greedy):
    scaling = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    path = tiny_model("llama", rope_parameters=scaling)
    prompt = [1] + list(range(200, 300))  # past the original context, where scaling acts
    assert greedy_one(LLM(path), prompt, 10) == hf_greedy(path, [prompt], [10])[0]


def greedy_one(llm: LLM, prompt: list[int], n: int) -> list[int]:
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    return out[0].outputs[0].token_ids


def test_unsupported_rope_type_is_named(tiny_model, tmp_path):
    dst = tmp_path / "dynamic"
    shutil.copytree(tiny_model("llama"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'dynamic'.*supported: default, linear, llama3, yarn"):
        LLM(str(dst))
