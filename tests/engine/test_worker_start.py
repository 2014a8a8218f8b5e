"""Tensor-parallel workers start the way vLLM's do: forked where that is safe, so a script
that builds its LLM at the top level (no `if __name__ == "__main__":`) works."""
import os
import subprocess
import sys
import textwrap

import pytest

from pagedserve.engine.multiproc import ENV, worker_start_method

# vLLM's offline quickstart as AMD's ROCm blog runs it, import and model swapped, nothing else.
BLOG_SCRIPT = textwrap.dedent('''
    from pagedserve import LLM, SamplingParams

    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    sampling_params = SamplingParams(temperature=0.8, top_p=0.95)

    llm = LLM(model="stories260K", tensor_parallel_size=2, distributed_executor_backend="mp")

    outputs = llm.generate(prompts, sampling_params)

    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
''')


def run_script(tmp_path, env_extra: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "blog.py"
    script.write_text(BLOG_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_the_blog_script_runs_unguarded_at_tp2(tmp_path):
    out = run_script(tmp_path, {})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("Prompt: ")]
    assert len(lines) == 4 and all("Generated text: '" in line for line in lines)
    assert "Generated text: ''" not in out.stdout


@pytest.mark.slow
def test_spawn_when_asked_explains_the_guard(tmp_path):
    out = run_script(tmp_path, {ENV: "spawn"})
    assert out.returncode != 0
    assert "__main__" in out.stderr  # the error says what to do


def test_the_environment_chooses(monkeypatch):
    monkeypatch.setenv(ENV, "spawn")
    assert worker_start_method() == "spawn"
    monkeypatch.setenv(ENV, "Fork")
    assert worker_start_method() == "fork"
    monkeypatch.setenv(ENV, "threads")
    with pytest.raises(ValueError, match=f"{ENV}='threads'"):
        worker_start_method()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux")
def test_fork_is_the_default_without_an_accelerator_context(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert worker_start_method() == "fork"
    monkeypatch.setattr("pagedserve.engine.multiproc._accelerator_initialized", lambda: True)
    assert worker_start_method() == "spawn"
