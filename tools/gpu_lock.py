#!/usr/bin/env python3
"""The GPU image's locks, resolved by pip for its base's Python 3.12, in two layers.

The GPU image (docker/triton.Dockerfile with compose.gpu.yaml's build arguments) installs
docker/requirements-gpu.in's closure, as resolved by pip for NVIDIA's Triton 26.08 image
(CPython 3.12, manylinux x86_64, glibc 2.39), in two layers:

  docker/requirements-gpu-model.txt  transformers, PyYAML and OpenTelemetry's SDK with everything
                                     they need (numpy
                                     included, torch not): what the transformers engine and
                                     this project's packages import. Installed on every base,
                                     `make docker-test`'s stand-in included.
  docker/requirements-gpu-vllm.txt   everything else: vLLM, the CUDA PyTorch it pins and what
                                     only they need. Only a CUDA base can use it.

Nothing is edited by hand: the two files together are pip's resolution, unchanged. `--check`
(run by `make docker-test`) gives pip every pin of both files and fails unless it resolves to
exactly those pins for Python 3.12: the locks are a complete closure there.

Needs PyPI (pip reads each wheel's metadata; no wheel is downloaded). 1 to 3 minutes.

  python -m tools.gpu_lock            rewrite both files from requirements-gpu.in
  python -m tools.gpu_lock --check    prove they resolve for Python 3.12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SOURCE = DOCKER / "requirements-gpu.in"
MODEL_LOCK = DOCKER / "requirements-gpu-model.txt"
VLLM_LOCK = DOCKER / "requirements-gpu-vllm.txt"

# NVIDIA's Triton 26.08 image: Ubuntu 24.04 (glibc 2.39), CPython 3.12.
PYTHON_VERSION = "3.12"
GLIBC_MINOR = 39
# The model layer starts from these; torch is left to the vLLM layer (and to a stand-in base).
MODEL_ROOTS = ("transformers", "pyyaml", "opentelemetry-sdk")
NOT_IN_MODEL_LAYER = ("torch",)


class LockError(Exception):
    """The resolution failed or the locks are not what pip resolves."""


def target_flags(python_version: str = PYTHON_VERSION, glibc_minor: int = GLIBC_MINOR,
                 ) -> list[str]:
    """pip's flags for another interpreter: CPython `python_version` on x86_64 Linux with that
    glibc, so every manylinux tag it accepts (pip takes the listed tags only)."""
    flags = ["--python-version", python_version, "--implementation", "cp",
             "--abi", "cp" + python_version.replace(".", ""), "--abi", "abi3", "--abi", "none",
             "--only-binary=:all:"]
    for minor in range(glibc_minor, 16, -1):
        flags += ["--platform", f"manylinux_2_{minor}_x86_64"]
    return flags + ["--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]


def resolve(requirements: Path, what: str) -> list[dict]:
    """pip's resolution of `requirements` for the image's Python (its --report entries)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        print(f"==> resolving {what} for CPython {PYTHON_VERSION} manylinux "
              "(pip reads metadata only; 1 to 3 minutes)", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
             "--disable-pip-version-check", "--report", str(report), "--target",
             str(Path(tmp) / "target"), *target_flags(), "-r", str(requirements)],
            capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "ignored" not in line]
            raise LockError("pip could not resolve it:\n" + "\n".join(errors[-15:]))
        return json.loads(report.read_text())["install"]


def _environment() -> dict[str, str]:
    """Marker values of the image's interpreter, for following requirements by hand."""
    env = default_environment()
    env.update(python_version=PYTHON_VERSION, python_full_version=f"{PYTHON_VERSION}.3",
               implementation_name="cpython", platform_python_implementation="CPython",
               platform_machine="x86_64", sys_platform="linux", platform_system="Linux",
               os_name="posix")
    return env


def split(installed: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """(model layer, vLLM layer) as {name: version}: the closure of MODEL_ROOTS, and the rest."""
    pins = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
            for item in installed}
    needs = {canonicalize_name(item["metadata"]["name"]): item["metadata"].get("requires_dist", [])
             for item in installed}
    env = _environment()
    model, todo = set(), [canonicalize_name(name) for name in MODEL_ROOTS]
    while todo:
        name = todo.pop()
        if name in model or name in NOT_IN_MODEL_LAYER:
            continue
        if name not in pins:
            raise LockError(f"{name} is not in the resolution")
        model.add(name)
        for line in needs[name]:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({**env, "extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return ({name: pins[name] for name in sorted(model)},
            {name: pins[name] for name in sorted(pins) if name not in model})


def _header(layer: str) -> str:
    return (f"# GENERATED by `python -m tools.gpu_lock` from requirements-gpu.in; do not edit.\n"
            f"# The GPU image's {layer} (docker/triton.Dockerfile, GPU),\n"
            f"# resolved by pip for CPython {PYTHON_VERSION} manylinux x86_64. `make docker-test` "
            "checks it\n# with `python -m tools.gpu_lock --check`.\n")


LAYERS = {MODEL_LOCK: "model layer: transformers, PyYAML, OpenTelemetry's SDK, no torch",
          VLLM_LOCK: "vLLM layer: vLLM, its CUDA PyTorch and the rest"}


def text(path: Path, pins: dict[str, str]) -> str:
    """A lock file's whole text: the header, then one `name==version` a line, sorted."""
    return _header(LAYERS[path]) + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def write(model: dict[str, str], vllm: dict[str, str]) -> None:
    for path, pins in ((MODEL_LOCK, model), (VLLM_LOCK, vllm)):
        path.write_text(text(path, pins))
        print(f"    {path.relative_to(ROOT)}: {len(pins)} pins", flush=True)


def read(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def check() -> None:
    """pip, given every pin of both files, must pick exactly them, add nothing, and split them
    into the same two layers."""
    model, vllm = read(MODEL_LOCK), read(VLLM_LOCK)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as both:
        both.write("".join(f"{name}=={version}\n" for name, version in {**model, **vllm}.items()))
        both.flush()
        resolved_model, resolved_vllm = split(resolve(Path(both.name), "the GPU locks' pins"))
    for path, wanted, resolved in ((MODEL_LOCK, model, resolved_model),
                                   (VLLM_LOCK, vllm, resolved_vllm)):
        if resolved != wanted:
            changed = {name: (wanted.get(name), resolved.get(name))
                       for name in sorted(set(wanted) | set(resolved))
                       if wanted.get(name) != resolved.get(name)}
            raise LockError(f"{path.name} is not what pip resolves for Python {PYTHON_VERSION}; "
                            f"(lock, pip) differ for {changed}: run `python -m tools.gpu_lock`")
    print(f"    {len(model) + len(vllm)} pins resolve for CPython {PYTHON_VERSION}, "
          "nothing added", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--check", action="store_true",
                        help="prove the locks resolve for Python 3.12 instead of rewriting them")
    args = parser.parse_args()
    try:
        if args.check:
            check()
        else:
            write(*split(resolve(SOURCE, SOURCE.name)))
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
