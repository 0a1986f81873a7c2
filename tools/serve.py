#!/usr/bin/env python3
"""Run the service locally: Triton with the `llm` model, supervised.

  serve   run in the foreground; Ctrl-C stops it cleanly        (make serve)
  up      start in the background and wait until it is ready   (make up)
  down    stop what `up` started                               (make down)
  status  say whether it runs and is ready

Settings come from environment variables (see the README and tools/runtime.py). The runner
restarts Triton if it dies, so a crashed server comes back by itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime  # noqa: E402

READY_TIMEOUT_S = 180
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def wait_ready(url: str, proc: subprocess.Popen | None, log: Path, timeout: float) -> None:
    """Poll readiness with a progress line; fail fast with the log tail if the process died."""
    start = time.monotonic()
    while not is_ready(url):
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit("Triton exited during start-up (exit code "
                             f"{proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
        if time.monotonic() - start > timeout:
            raise SystemExit(f"not ready after {timeout:.0f} s; see {log}")
        print(f"\r  waiting for the model to load ... {time.monotonic() - start:4.0f} s",
              end="", flush=True)
        time.sleep(0.5)
    print(f"\r  ready after {time.monotonic() - start:.1f} s" + " " * 20, flush=True)


def banner(settings: runtime.Settings) -> str:
    url = settings.http_url
    return f"""
The LLM service is up (model: {settings.model_dir}).
  Triton HTTP   {url}        (loopback only)
  Triton gRPC   {settings.grpc_url}
  metrics       http://{settings.host}:{settings.metrics_port}/metrics

Try it:
  curl -s {url}/v2/models/llm/generate \\
       -d '{{"text_input": "The list", "max_tokens": 32, "exclude_input_in_output": true}}'
"""


def start_triton(settings: runtime.Settings, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = runtime.triton_env(settings.run_dir)
    env["LLM_MODEL_DIR"] = str(settings.model_dir)
    return subprocess.Popen(runtime.triton_command(settings), env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 40.0) -> None:
    """SIGTERM, then SIGKILL after the grace period: Triton drains in-flight requests first."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(settings: runtime.Settings) -> int:
    """Foreground: start, wait, print how to call it, supervise until SIGINT/SIGTERM."""
    log = settings.run_dir / "triton.log"
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"==> starting Triton (log: {log})", flush=True)
    proc = start_triton(settings, log)
    wait_ready(f"{settings.http_url}/v2/models/llm/ready", proc, log, READY_TIMEOUT_S)
    print(banner(settings), flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    restarts = 0
    while not stopping:
        time.sleep(0.5)
        if proc.poll() is not None and not stopping:
            delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
            print(f"==> Triton exited with code {proc.returncode}; restarting in {delay} s",
                  flush=True)
            time.sleep(delay)
            proc = start_triton(settings, log)
            restarts += 1
    print("\n==> stopping Triton (draining in-flight requests)", flush=True)
    stop(proc)
    print("==> stopped", flush=True)
    return 0


def pid_file(settings: runtime.Settings) -> Path:
    return settings.run_dir / "serve.pid"


def up(settings: runtime.Settings) -> int:
    pidf = pid_file(settings)
    if pidf.exists() and _alive(int(pidf.read_text())):
        print(f"already running (pid {pidf.read_text().strip()}); `make down` stops it")
        return 0
    log = settings.run_dir / "serve.log"
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "serve"], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    pidf.write_text(str(proc.pid))
    print(f"==> started in the background (pid {proc.pid}, log: {log})", flush=True)
    wait_ready(f"{settings.http_url}/v2/models/llm/ready", proc, log, READY_TIMEOUT_S)
    print(banner(settings), flush=True)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def down(settings: runtime.Settings) -> int:
    pidf = pid_file(settings)
    if not pidf.exists():
        print("not running")
        return 0
    pid = int(pidf.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    pidf.unlink(missing_ok=True)
    print("stopped")
    return 0


def status(settings: runtime.Settings) -> int:
    ready = is_ready(f"{settings.http_url}/v2/models/llm/ready")
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("serve", "up", "down", "status"))
    args = parser.parse_args()
    settings = runtime.Settings.from_env()
    return {"serve": serve, "up": up, "down": down, "status": status}[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
