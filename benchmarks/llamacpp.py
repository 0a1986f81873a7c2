"""llama.cpp's own server on the same model: the peer a user would pick on a CPU.

Debian has no llama.cpp and PyPI has no prebuilt server, but the `llama-cpp-python` sdist
vendors llama.cpp's sources: `ensure_binary` downloads it once, builds `llama-server` with cmake
(about 7 minutes on 2 cores) and caches the binary; `ensure_gguf` converts the served model with
the vendored `convert_hf_to_gguf.py`, cached per model. A newly trained vocabulary has an unknown
pre-tokenizer hash; the demo tokenizer is byte-level BPE, so the conversion answers "gpt-2"
(token ids were verified equal to the Hugging Face tokenizer's on 137 texts when this was
written). Without cmake or a C++ compiler the system is skipped with a note.

The server is measured on its OpenAI `/v1/completions` route with the workload's raw prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from benchmarks import stack
from textgen.core.config import EngineConfig
from textgen.core.engine_thread import raise_session_priority

SDIST = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CACHE = Path(os.environ.get("LLM_BENCH_CACHE", Path.home() / ".cache" / "llm-bench")) / "llama.cpp"
COMPLETIONS_PATH = "/v1/completions"
# `--parallel` slots share the context: 32 slots of 512 tokens.
PARALLEL, CONTEXT = 32, 16384


def unavailable() -> Optional[str]:
    """Why llama.cpp cannot be built here, or None."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    return f"llama.cpp skipped: {' and '.join(missing)} not found" if missing else None


def _run(command: list[str], log: Path, cwd: Optional[Path] = None,
         timeout: float = 1800) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[:4])} ...` failed; see {log}")


def _download_sdist(folder: Path) -> None:
    """The sdist from PyPI (found through its simple index, PEP 691), checked against the
    pinned SHA-256 (no build, no metadata)."""
    name, version = SDIST.split("==")
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        files = json.load(reply)["files"]
    sdist = next(f for f in files if f["filename"] == f"{name.replace('-', '_')}-{version}.tar.gz")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (sdist["filename"] + ".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(sdist["url"], timeout=600) as reply, partial.open("wb") as out:
        while chunk := reply.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != SDIST_SHA256:
        partial.unlink()
        raise RuntimeError(f"{sdist['filename']}: SHA-256 differs from the pinned {SDIST_SHA256}")
    partial.rename(folder / sdist["filename"])


def sources() -> Path:
    """llama.cpp's sources from the sdist, downloaded and unpacked once."""
    tree = CACHE / "src" / "vendor" / "llama.cpp"
    if tree.exists():
        return tree
    sdist_dir = CACHE / "sdist"
    if not list(sdist_dir.glob("*.tar.gz")):
        _download_sdist(sdist_dir)
    work = CACHE / "src.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(next(sdist_dir.glob("*.tar.gz"))) as archive:
        for member in archive.getmembers():
            member.name = member.name.split("/", 1)[-1] if "/" in member.name else ""
            if member.name:
                archive.extract(member, work, filter="data")
    work.rename(CACHE / "src")
    return tree


# What the benchmarks run: the server, and the in-process batch benchmark (cpu_threads.py).
BINARIES = ("llama-server", "llama-batched-bench")


def ensure_binary(name: str, log: Path, say=print) -> Path:
    """The cached llama.cpp binary `name` (one of BINARIES); all of them are built on first
    use, in one cmake build."""
    binary = CACHE / "bin" / name
    if binary.exists():
        return binary
    tree = sources()
    say(f"  building llama.cpp's {', '.join(BINARIES)} (once, about 8 minutes on 2 cores) ...")
    start = time.monotonic()
    _run(["cmake", "-S", ".", "-B", "build", "-DCMAKE_BUILD_TYPE=Release",
          "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"],
         log, cwd=tree)
    _run(["cmake", "--build", "build", "--target", *BINARIES, "-j", str(os.cpu_count())],
         log, cwd=tree)
    binary.parent.mkdir(parents=True, exist_ok=True)
    for built in BINARIES:
        shutil.copy2(tree / "build" / "bin" / built, CACHE / "bin" / built)
    say(f"  built {', '.join(BINARIES)} in {time.monotonic() - start:.0f} s ({binary.parent})")
    return binary


# Runs the vendored converter with two answers for a byte-level BPE model it does not know:
# the pre-tokenizer is "gpt-2" (see above) when its hash is unknown, and there is no SentencePiece model (the converter
# tries one first and expects FileNotFoundError, but imports `sentencepiece` before looking).
# `python -c` runs it in the llama.cpp tree, whose modules it imports (`-c` puts the working
# directory first on the path).
_CONVERT = """
import sys
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
from conversion import base
known = base.TextModel.get_vocab_base_pre
def vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)  # a released model's tokenizer (SmolLM2's: "smollm")
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = vocab_base_pre
def no_sentencepiece(self):
    raise FileNotFoundError("no tokenizer.model: a byte-level BPE tokenizer")
base.TextModel._set_vocab_sentencepiece = no_sentencepiece
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


class Format(NamedTuple):
    """One number format, as this service serves it and as llama.cpp holds the same weights."""

    dtype: str          # our `dtype` (LLM_DTYPE)
    quantization: str   # our `quantization` (LLM_QUANTIZATION)
    gguf: str           # convert_hf_to_gguf's --outtype
    # llama.cpp's flags for it: this build segfaults repacking quantized weights
    flags: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        return {"LLM_DTYPE": self.dtype, "LLM_QUANTIZATION": self.quantization}


FORMATS = {"float32": Format("float32", "none", "f32"),
           "bfloat16": Format("bfloat16", "none", "bf16"),
           "int8": Format("float32", "int8", "q8_0", ("--no-repack",))}


def ensure_gguf(model_dir: Path, log: Path, format_: str = "float32") -> Path:
    """The served model as GGUF in `format_` (FORMATS: the type holding the weights as they are
    served here), converted once per model and format."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".jinja"):
            digest.update(path.name.encode() + path.read_bytes())
    outtype = FORMATS[format_].gguf
    gguf = CACHE / "gguf" / f"{model_dir.name}-{digest.hexdigest()[:12]}-{outtype}.gguf"
    if gguf.exists():
        return gguf
    tree = sources()
    gguf.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-c", _CONVERT, str(model_dir), "--outfile", str(gguf),
          "--outtype", outtype], log, cwd=tree)
    return gguf


@contextmanager
def server(run_dir: Path, model_dir: Path, say=print,
           format_: str = "float32") -> Iterator[stack.Target]:
    """`llama-server --parallel 32 -t 1` on a free port over the model's GGUF in `format_`,
    measured on /v1/completions."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "build.log"
    binary, gguf = ensure_binary("llama-server", log, say), ensure_gguf(model_dir, log, format_)
    port = stack.free_port()
    command = [str(binary), "-m", str(gguf), "-c", str(CONTEXT), "--parallel", str(PARALLEL),
               "-t", "1", "--host", "127.0.0.1", "--port", str(port),
               *FORMATS[format_].flags]
    process = stack.ServerProcess("llama-server", command, dict(os.environ),
                                  run_dir / "llama-server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        process.start()
        process.wait_until(lambda: stack.http_ok(url + "/health"), timeout=120)
        assert process.proc is not None
        pid, model = process.proc.pid, model_dir.name
        # The footing of our Triton, whose engine raises its session's priority
        # (textgen/core/engine_thread.py): neither server shares the CPU equally with the load
        # generator on this machine.
        raise_session_priority(EngineConfig.engine_nice, pid)
        yield stack.Target("llamacpp", url, {}, "", via_gateway=False, started=True,
                           run_dir=run_dir, processes=lambda: {"llama-server": pid},
                           notes=[f"llama.cpp server ({SDIST} sources), {gguf.name}, "
                                  f"--parallel {PARALLEL} -t 1, direct (no gateway), "
                                  f"OpenAI {COMPLETIONS_PATH}, a new connection per request "
                                  f"(it closes kept-alive connections after a stream)"],
                           path=COMPLETIONS_PATH,
                           body=lambda spec: spec.completion_body(model), keep_alive=False)
    finally:
        process.stop(grace=10)
