"""LLM: offline batch inference with vLLM's interface."""
import time
import warnings
from collections.abc import Sequence

from tqdm.auto import tqdm

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.generation_config import default_sampling_values
from pagedserve.engine.llm_engine import LLMEngine
from pagedserve.engine.loader import default_model
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.tokenizer import PromptType, apply_chat_template

# vLLM arguments for machinery this engine does not have: accepted (with a warning) where no
# value can change what is generated, or only at the value that matches what this engine does.
_TUNING_VLLM_ARGS = {"swap_space", "disable_log_stats", "disable_custom_all_reduce",
                     "max_seq_len_to_capture"}
_FIXED_VLLM_ARGS = {"cpu_offload_gb": 0, "revision": None, "tokenizer_mode": "auto",
                    "quantization": None, "enable_chunked_prefill": True}


def _check_vllm_arg(name: str, value) -> None:
    """Warn for a tuning knob; refuse a value that would change the model or its outputs."""
    if name in _TUNING_VLLM_ARGS:
        warnings.warn(f"pagedserve has no use for the vLLM argument {name}={value!r}; "
                      f"it changes nothing here", stacklevel=3)
    elif value != _FIXED_VLLM_ARGS[name]:
        raise ValueError(f"{name}={value!r} is not supported; pagedserve runs as "
                         f"{name}={_FIXED_VLLM_ARGS[name]!r}")


class LLM:
    """Offline inference: `LLM(model).generate(prompts, SamplingParams(...))`.

    `model` is a local Hugging Face folder or a hub id in the local HF cache; None serves the
    bundled stories260K model. Keyword arguments are EngineConfig's (vLLM's names).
    """

    def __init__(self, model: str | None = None, **kwargs) -> None:
        for name in list(kwargs):
            if name in _TUNING_VLLM_ARGS or name in _FIXED_VLLM_ARGS:
                _check_vllm_arg(name, kwargs.pop(name))
            elif name not in EngineConfig.field_names():
                raise TypeError(f"LLM() got an unexpected keyword argument {name!r}")
        self.llm_engine = LLMEngine(EngineConfig(model=model or default_model(), **kwargs))

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation-config defaults (vLLM's method)."""
        config = self.llm_engine.config
        return SamplingParams(**default_sampling_values(config.generation_config,
                                                        config.model_path))

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run all prompts to completion; outputs come back in prompt order."""
        if isinstance(prompts, (str, dict)) or (
                isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or self.get_default_sampling_params()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        engine = self.llm_engine
        final = RequestOutputKind.FINAL_ONLY  # generate() reads finished outputs only
        parents = [engine.make_request(None, p, sp.with_output_kind(final))
                   for p, sp in zip(prompts, params)]
        for parent in parents:
            engine.add_parent(parent)
        return self._run(parents, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the chat template to one conversation (or a list of them) and generate."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        tok = self.get_tokenizer()
        prompts = [{"prompt_token_ids": tok.encode(
            apply_chat_template(tok, c, chat_template, add_generation_prompt),
            add_special_tokens=False)} for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, parents: list, use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(parents), desc="Processed prompts", disable=not use_tqdm)
        start, tokens = time.perf_counter(), 0
        try:
            while len(done) < len(parents):
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        tokens += sum(len(o.token_ids) for o in out.outputs)
                        bar.update(1)
                        bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s")
        except BaseException:
            for parent in parents:  # leave nothing in the engine on Ctrl-C or an error
                engine.abort_request(parent.request_id)
            raise
        finally:
            bar.close()
        return [done[p.request_id] for p in parents]

    def __del__(self) -> None:
        engine = getattr(self, "llm_engine", None)
        if engine is not None:
            engine.shutdown()
