"""`pagedserve serve` flags: vLLM's names, documented, parsed without torch."""
import subprocess
import sys

import pytest

from pagedserve.cli import build_parser
from pagedserve.server.cli import BUNDLED_NAME, settings_from_args

FLAGS = ["--host", "--port", "--served-model-name", "--api-key", "--dtype", "--seed",
         "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--block-size",
         "--gpu-memory-utilization", "--kv-cache-memory", "--enable-prefix-caching",
         "--no-enable-prefix-caching", "--tensor-parallel-size",
         "--distributed-executor-backend", "--chat-template", "--device", "--max-queue-len",
         "--shutdown-timeout", "--model", "--max-request-body-bytes", "--max-n",
         "--max-logprobs", "--max-stop-strings", "--max-stop-length"]


def settings(*argv: str):
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_help_documents_every_flag_without_torch():
    code = ("import sys\nfrom pagedserve.cli import build_parser\n"
            "p = build_parser()\np.parse_args(['serve', 'm', '--port', '9000'])\n"
            "assert 'torch' not in sys.modules, 'parsing imported torch'\n"
            "p.parse_args(['serve', '--help'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    help_text = " ".join(out.stdout.split())
    for flag in FLAGS:
        assert flag in help_text, flag
    assert "PAGEDSERVE_API_KEY" in help_text


def test_model_and_served_name_defaults(monkeypatch):
    monkeypatch.delenv("PAGEDSERVE_API_KEY", raising=False)
    bundled = settings()
    assert bundled.served_model_names == [BUNDLED_NAME] and bundled.model.endswith(BUNDLED_NAME)
    assert bundled.api_key is None and bundled.max_queue_len is None
    assert bundled.limits.max_logprobs == 20 and bundled.limits.max_n == 128
    assert settings("--max-stop-length", "9").limits.max_stop_length == 9
    assert settings("some/model").served_model_names == ["some/model"]
    assert settings("--model", "some/model").model == "some/model"
    assert settings("m", "--served-model-name", "a", "b").served_model_names == ["a", "b"]
    with pytest.raises(SystemExit, match="disagree"):
        settings("one", "--model", "two")


def test_engine_flags_pass_through():
    s = settings("--max-num-seqs", "4", "--tensor-parallel-size", "2",
                 "--distributed-executor-backend", "mp", "--no-enable-prefix-caching",
                 "--kv-cache-memory", "64MiB", "--max-model-len", "256")
    assert s.engine_kwargs["max_num_seqs"] == 4
    assert s.engine_kwargs["tensor_parallel_size"] == 2
    assert s.engine_kwargs["distributed_executor_backend"] == "mp"
    assert s.engine_kwargs["enable_prefix_caching"] is False
    assert s.engine_kwargs["kv_cache_memory"] == "64MiB"
    assert s.engine_kwargs["max_model_len"] == 256


def test_api_key_from_flag_or_environment(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_API_KEY", "from-env")
    assert settings().api_key == "from-env"
    assert settings("--api-key", "from-flag").api_key == "from-flag"
    assert "from-env" not in repr(settings())  # never printed with the settings


def test_chat_template_file_or_text(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    assert settings("--chat-template", str(path)).chat_template == path.read_text()
    assert settings("--chat-template", "{% for m in messages %}x{% endfor %}").chat_template
    with pytest.raises(SystemExit, match="neither a file"):
        settings("--chat-template", "missing.jinja")


def test_bad_values_are_rejected():
    for argv in (["--max-queue-len", "-1"], ["--shutdown-timeout", "-2"], ["--port", "x"],
                 ["--max-n", "0"], ["--max-request-body-bytes", "0"], ["--max-logprobs", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *argv])
