"""`pagedserve serve` with a bad flag or model: one line, a non-zero exit, in seconds, and
never a bound port (before, `--max-num-seqs 0` listened and answered 503 "loading" forever)."""
import json
import os
import subprocess
import sys

import pytest

from pagedserve.server.startup import as_flags


def serve(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pagedserve", "serve", "--port", "1", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    assert "Uvicorn running" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pagedserve serve: error: ")
    return lines[0]


# --port 1 would fail to bind (privileged): reaching the bind at all would be a different error
@pytest.mark.parametrize("argv, says", [
    (["--max-num-seqs", "0"], "--max-num-seqs must be a positive integer, got 0"),
    (["--block-size", "7"], "--block-size must be a power of 2, got 7"),
    (["--tensor-parallel-size", "3"], "not divisible by --tensor-parallel-size=3"),
    (["--max-model-len", "100000"], "--max-model-len (100000) exceeds the model's limit"),
    (["/no/such/dir"], "model path '/no/such/dir' does not exist"),
    (["acme/not-cached-anywhere"], "HF_HUB_OFFLINE"),
])
def test_bad_engine_argument_is_one_line(argv, says):
    assert says in one_line_error(serve(*argv))


def test_unknown_architecture_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["FooForCausalLM"], "vocab_size": 8, "hidden_size": 8,
        "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}))
    line = one_line_error(serve(str(tmp_path)))
    assert "FooForCausalLM" in line and "LlamaForCausalLM" in line  # names what is supported


def test_reasoning_parser_without_think_tokens_is_one_line():
    line = one_line_error(serve("--reasoning-parser", "qwen3"))  # stories260K has none
    assert "think" in line


def test_unknown_dtype_is_refused_by_the_parser():
    out = serve("--dtype", "float8")
    assert out.returncode == 2 and "--dtype" in out.stderr and "Traceback" not in out.stderr


def test_debug_log_level_adds_the_traceback():
    out = serve("--max-num-seqs", "0", "--log-level", "debug")
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert "pagedserve serve: error: --max-num-seqs" in out.stderr


def test_field_names_become_flags():
    assert as_flags("max_num_seqs must be >= 1") == "--max-num-seqs must be >= 1"
    assert as_flags("dtype must be one of auto") == "--dtype must be one of auto"
    assert as_flags("the model's 8 heads") == "the model's 8 heads"  # prose stays prose
    assert as_flags("model path 'x' does not exist") == "model path 'x' does not exist"
