"""The offline LLM API behaves as vLLM's does for the shapes users pass."""
import subprocess
import sys

import pytest

from pagedserve import LLM, SamplingParams

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def test_prompt_forms_and_order(stories_path):
    llm = LLM(stories_path)
    tok = llm.get_tokenizer()
    ids = tok.encode("Once upon a time")
    sp = SamplingParams(temperature=0, max_tokens=6)
    by_text = llm.generate("Once upon a time", sp, use_tqdm=False)
    by_ids = llm.generate({"prompt_token_ids": ids}, sp, use_tqdm=False)
    assert by_text[0].outputs[0].token_ids == by_ids[0].outputs[0].token_ids
    assert by_text[0].prompt == "Once upon a time" and by_text[0].prompt_token_ids == ids
    prompts = ["The dog", "Once upon a time", "A"]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (3, 6, 9)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.prompt for o in outs] == prompts
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 6, 9]
    assert outs[1].outputs[0].token_ids == by_text[0].outputs[0].token_ids
    assert all(o.finished and o.metrics.first_token_time for o in outs)


def test_default_model_and_default_params():
    outs = LLM().generate(["Once upon a time"], use_tqdm=True)
    assert len(outs[0].outputs[0].token_ids) == 16  # vLLM's default max_tokens


def test_chat_applies_the_template(stories_path):
    llm = LLM(stories_path)
    msgs = [{"role": "user", "content": "Tell me a story."}]
    out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=5), use_tqdm=False,
                   chat_template=TEMPLATE)[0]
    expected = llm.get_tokenizer().encode("user: Tell me a story.\nassistant:",
                                          add_special_tokens=False)
    assert out.prompt_token_ids == expected
    assert len(out.outputs[0].token_ids) == 5


def test_vllm_only_arguments_are_accepted_with_a_warning(stories_path):
    import pytest
    with pytest.warns(UserWarning, match="swap_space"):
        LLM(stories_path, swap_space=4)


def test_vllm_arguments_that_would_change_the_output_are_refused(stories_path):
    import pytest
    for name, value in [("quantization", "awq"), ("revision", "v2"), ("cpu_offload_gb", 4),
                        ("tokenizer_mode", "mistral")]:
        with pytest.raises(ValueError, match=f"{name}={value!r} is not supported"):
            LLM(stories_path, **{name: value})
    LLM(stories_path, quantization=None, enable_chunked_prefill=True)  # what this engine does


@pytest.mark.parametrize("shutdown", ["", "llm.llm_engine.shutdown()"])
def test_a_script_exits_cleanly(stories_path, shutdown):
    """An offline script ends without "Exception ignored in LLM.__del__": the engine is shut
    down once, at exit too, and after the user's own shutdown nothing runs twice."""
    code = (f"from pagedserve import LLM, SamplingParams\nllm = LLM({str(stories_path)!r})\n"
            "print(llm.generate('Once', SamplingParams(max_tokens=2))[0].outputs[0].text != '')\n"
            f"{shutdown}\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
