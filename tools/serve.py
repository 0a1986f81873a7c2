#!/usr/bin/env python3
"""Run the service locally: Triton with the `llm` model behind the Envoy gateway, supervised.

  serve   run in the foreground; Ctrl-C stops it cleanly        (make serve)
  up      start in the background and wait until it is ready   (make up)
  down    stop what `up` started                               (make down)
  status  say whether it runs and is ready                     (make status)
  gateway run one more gateway in front of the same replicas   (make gateway)
  adapter list, load or unload a LoRA adapter on every replica (make adapter)

Settings come from environment variables (see the README, tools/runtime.py and
gateway/render.py). Triton listens on loopback only; the gateway's port is the public one.
The runner restarts a process that dies (and Triton when one of its model processes dies), so
a crashed server comes back by itself. SIGTERM or Ctrl-C drains first: new requests get 503,
requests in flight finish (up to LLM_DRAIN_TIMEOUT_S, default 60 s), then everything stops. On
the first run it issues a development API key named `dev` and prints it once.

Replicas: LLM_REPLICAS=N runs N model replicas (each a Triton with its own model processes and
an OpenAI frontend, on each port + i * LLM_REPLICA_PORT_STEP) that the gateway balances;
LLM_FALLBACK_REPLICAS=M adds a fallback pool (serving LLM_FALLBACK_MODEL_DIR, default the same
model) that answers only while no primary can. LLM_GLOBAL_LIMITS=1 also runs Redis and the
rate-limit service, so limits and token quotas hold across gateways (`make gateway`).
LLM_MONITORING=1 also runs Prometheus, scraping every part with the rules of monitoring/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from contracts import engine_info
from monitoring import prometheus
from textgen.core.cpus import ENGINES_ON_HOST
from tools import runtime

READY_TIMEOUT_S = 180
DRAIN_TIMEOUT_S = float(os.environ.get("LLM_DRAIN_TIMEOUT_S", "60"))  # > longest generation
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def engine_line(settings: runtime.Settings, wait_s: float = 3.0) -> str:
    """What the primary replica's engine chose at load (contracts/engine_info.py), for the
    banner; it is published just after the model reports ready, so wait a moment for it."""
    deadline = time.monotonic() + wait_s
    while not (facts := engine_info.read(settings.metrics_url)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    if not facts:
        return "not reported yet (the `engine ready` line in Triton's log says)"
    forward = f", forward {facts['forward_path']}" if facts["forward_path"] else ""
    return (f"{facts['engine']}, {facts['dtype']} ({facts['dtype_reason']}), "
            f"executor {facts['executor'] or 'vllm'}{forward}")


def service_ready(gateway: runtime.GatewaySettings) -> bool:
    """The gateway is ready (so is a Triton behind it) and its own health checks have found a
    healthy Triton and OpenAI frontend for every route. Why both: a frontend connects to its
    Triton only once Triton serves, and Envoy checks each host once a second; until then `/v1`
    answers 503."""
    return (is_ready(f"http://{gateway.host}:{gateway.port}/readyz")
            and runtime.gateway_upstreams_healthy(gateway))


@dataclass
class Supervised(runtime.ManagedProcess):
    """A child process that is restarted with back-off when it exits unexpectedly."""

    restarts: int = 0
    _due: float = field(default=0.0)
    _stubs_seen: int = 0
    was_ready: bool = False  # set by the supervisor once the process served readiness

    def start(self) -> "Supervised":
        super().start()
        self._stubs_seen = 0
        self.was_ready = False
        return self

    def check_stubs(self) -> None:
        """Kill a Triton whose model process died (it would never recover); check() then
        restarts it. Only once it was ready: while loading, Triton starts and ends model
        processes of its own (e.g. to complete a model's config), and a model that fails to
        load ends the server, which check() restarts."""
        if not self.running() or not self.was_ready:
            return
        assert self.proc is not None
        alive, dead = runtime.python_stubs(self.proc.pid)
        if dead or len(alive) < self._stubs_seen:
            self.restart(f"lost a model process ({len(alive)} alive, {len(dead)} dead)")
            return
        self._stubs_seen = max(self._stubs_seen, len(alive))

    def restart(self, why: str) -> None:
        """Kill the process now; check() starts a new one after the back-off."""
        print(f"==> {self.name} {why}; restarting it", flush=True)
        self.kill()

    def check(self) -> None:
        """Restart after a back-off if the process died."""
        if self.proc is None or self.running():
            return
        now = time.monotonic()
        if not self._due:
            self.kill_group()  # a crashed server leaves its model processes behind
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            print(f"==> {self.name} exited with code {self.proc.returncode}; restarting in "
                  f"{delay} s (log: {self.log})", flush=True)
            self._due = now + delay
        elif now >= self._due:
            self._due = 0.0
            self.restarts += 1
            self.start()


def wait_ready(check: Callable[[], bool], procs: list[Supervised], timeout: float,
               what: str) -> None:
    """Poll with a progress line; fail fast with the log tail if a process died."""
    start = time.monotonic()
    while not check():
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                tail = p.log.read_text(errors="replace").splitlines()[-25:]
                raise SystemExit(f"{p.name} exited during start-up (code {p.proc.returncode});"
                                 f" last lines of {p.log}:\n" + "\n".join(tail))
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{what} not ready after {timeout:.0f} s; see {procs[0].log}")
        print(f"\r  waiting for {what} ... {time.monotonic() - start:4.0f} s", end="",
              flush=True)
        time.sleep(0.5)
    print(f"\r  {what} ready after {time.monotonic() - start:.1f} s" + " " * 20, flush=True)


def dev_key(gateway: runtime.GatewaySettings) -> Optional[str]:
    """Issue the `dev` key on the first run; afterwards only its hash exists."""
    store = runtime.KeyStore(gateway.keys_dir)
    if store.active_named("dev"):
        return None
    key, _ = store.issue("dev", runtime.load_tiers()["default_tier"])
    return key


def banner(settings: runtime.Settings, gateway: runtime.GatewaySettings,
           key: Optional[str]) -> str:
    url = f"http://{gateway.host}:{gateway.port}"
    tritons = "".join(
        f"  {'Triton' if pool is runtime.Pool.PRIMARY else 'fallback':13} {r.http_url} / "
        f"{r.grpc_url} / "
        f"metrics :{r.metrics_port}\n" for pool, r in settings.pools())
    limits = (f"  {enforcement(gateway)}"
              + (f" (Redis :{settings.redis_port})" if runs_own_limits(settings) else "") + "\n")
    monitoring = (f"  Prometheus    http://127.0.0.1:{settings.prometheus_port}   (targets, rules, "
                  f"alerts; loopback)\n" if settings.monitoring else "")
    shown = key or "$LLM_API_KEY"
    # What LLM_ENGINE asked for; with `auto` the model's start-up log line says what it took.
    engine = (os.environ.get("LLM_ENGINE")
              or "auto: transformers on CPUs, vllm on CUDA where installed")
    key_line = (f"Development API key (shown once; `make key NAME=...` issues more):\n  {key}\n"
                if key else "API key: the `dev` key printed on the first run, or "
                            "`make key NAME=you` for a new one.\n")
    return f"""
The LLM service is up (model: {settings.model_dir}, engine: {engine}).
  loaded        {engine_line(settings)}
  gateway       {url}   HTTP + gRPC + SSE, API key required
  OpenAI API    {url}/v1   (base_url for the `openai` SDKs; the key as api_key)
{tritons}                (loopback only, no key: for operators)
  access log    {gateway.access_log}
{limits}{monitoring}
{key_line}
Try it:
  curl -s {url}/generate -H 'X-API-Key: {shown}' \\
       -d '{{"text_input": "The list", "max_tokens": 32, "exclude_input_in_output": true}}'
"""


@dataclass
class SupervisedReplica:
    """One model replica: a Triton and the OpenAI frontend that calls it, on their own ports."""

    settings: runtime.Settings
    triton: Supervised
    openai: Supervised
    misses: int = 0  # liveness probes missed in a row

    def supervise(self, stopping: bool) -> None:
        """Restart what died or hangs: a lost model process, a Triton that stopped answering
        its liveness probe (e.g. stuck after an abort), any process that exited."""
        self.triton.check_stubs()
        if not self.triton.running():
            self.misses = 0  # dead, not hung: check() restarts it
        elif self.triton.was_ready:
            live = is_ready(f"{self.settings.http_url}/v2/health/live")
            self.misses = 0 if live else self.misses + 1
            if self.misses >= 3:
                self.triton.restart("stopped answering its liveness probe")
                self.misses = 0
        if not stopping:
            self.triton.check()
            self.openai.check()
        if not self.triton.was_ready and is_ready(f"{self.settings.http_url}/v2/health/ready"):
            self.triton.was_ready = True


def runs_own_limits(settings: runtime.Settings) -> bool:
    """Whether this runner starts Redis and the rate-limit service: global limits are on, or
    monitoring is (the service counts each key's usage from the gateways' access logs), and
    no external service is named (GATEWAY_RATELIMIT)."""
    return ((settings.global_limits or settings.monitoring)
            and not os.environ.get("GATEWAY_RATELIMIT"))


def shared_limits(settings: runtime.Settings) -> list[Supervised]:
    """Redis and the rate-limit service, when this runner starts them."""
    if not runs_own_limits(settings):
        return []
    return [Supervised("redis", runtime.redis_command(settings.redis_port, settings.run_dir),
                       dict(os.environ), settings.run_dir / "redis.log"),
            Supervised("ratelimit", runtime.ratelimit_command(
                settings.ratelimit_port, settings.redis_port, settings.ratelimit_metrics_port),
                       dict(os.environ), settings.run_dir / "ratelimit.log", cwd=runtime.ROOT)]


def targets_dir(settings: runtime.Settings) -> Path:
    """Where Prometheus finds what to scrape (file_sd), which each gateway also writes."""
    return settings.run_dir / "monitoring" / "targets"


def gateway_target(gateway: runtime.GatewaySettings) -> prometheus.Target:
    host = "127.0.0.1" if gateway.metrics_host in ("0.0.0.0", "") else gateway.metrics_host
    return prometheus.Target(prometheus.Job.GATEWAY, f"{host}:{gateway.metrics_port}")


def monitoring(settings: runtime.Settings, gateway: runtime.GatewaySettings
               ) -> list[Supervised]:
    """Prometheus, with LLM_MONITORING=1: it scrapes every replica's Triton and OpenAI
    frontend (labelled with their pool and replica), the gateway and, when this runner runs
    it, the rate-limit service; `make gateway` adds its own gateway while it runs."""
    if not settings.monitoring:
        return []
    directory = targets_dir(settings)
    for stale in directory.glob("*.json"):  # left by a run that was killed
        stale.unlink()
    prometheus.write_targets(directory, "replicas", prometheus.replica_targets(
        (pool.value, replica.host, replica.metrics_port, replica.openai_metrics_port)
        for pool, replica in settings.pools()))
    prometheus.write_targets(directory, f"gateway-{gateway.port}", [gateway_target(gateway)])
    if runs_own_limits(settings):
        prometheus.write_targets(directory, "ratelimit", [prometheus.Target(
            prometheus.Job.RATELIMIT,
            f"127.0.0.1:{settings.ratelimit_metrics_port}")])
    config = directory.parent / "prometheus.yml"
    config.write_text(prometheus.local_config(directory,
                                              f"127.0.0.1:{settings.prometheus_port}"))
    return [Supervised("prometheus", runtime.prometheus_command(
        config, directory.parent / "data", settings.prometheus_port), dict(os.environ),
        directory.parent / "prometheus.log")]


def build(settings: runtime.Settings
          ) -> tuple[list[SupervisedReplica], Supervised, runtime.GatewaySettings]:
    """The replicas (primaries, then the fallback pool) and the gateway in front of them."""
    gateway = runtime.gateway_settings(settings)
    envoy_config = runtime.prepare_gateway(gateway, settings.run_dir)
    replicas = []
    pools = settings.pools()
    for index, (pool, replica) in enumerate(pools):
        suffix = f"-{index}" if len(pools) > 1 else ""
        triton_env = runtime.triton_env(settings.run_dir)
        triton_env["LLM_MODEL_DIR"] = str(replica.model_dir)
        # Each engine's default thread count takes its share of the host (textgen/core/cpus.py).
        triton_env.setdefault(ENGINES_ON_HOST, str(len(pools)))
        triton_env.update(runtime.adapter_env(pool, replica, fresh=True))
        openai_env = dict(os.environ)
        openai_env[runtime.ADAPTER_PEERS] = ",".join(
            other.grpc_url for other_pool, other in pools
            if other_pool is pool and other is not replica)
        replicas.append(SupervisedReplica(
            replica,
            Supervised(f"tritonserver{suffix}", runtime.triton_command(replica), triton_env,
                       replica.run_dir / "triton.log"),
            Supervised(f"openai{suffix}", runtime.openai_command(replica), openai_env,
                       replica.run_dir / "openai.log", cwd=runtime.ROOT)))
    envoy = Supervised("envoy", runtime.envoy_command(envoy_config, settings.log_level),
                       dict(os.environ), settings.run_dir / "gateway" / "envoy.log")
    return replicas, envoy, gateway


def on_stop_signal() -> threading.Event:
    """An event the first SIGINT or SIGTERM sets; the supervising loop then drains and stops."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def serve(settings: runtime.Settings) -> int:
    """Foreground: start, wait, print how to call it, supervise until SIGINT/SIGTERM."""
    stop = on_stop_signal()
    replicas, envoy, gateway = build(settings)
    # Started first, stopped last: the shared limits (Redis, the rate-limit service) and
    # Prometheus.
    companions = shared_limits(settings) + monitoring(settings, gateway)
    key = dev_key(gateway)
    what = (f"{settings.replicas} replicas" if settings.replicas > 1 else "Triton") + (
        f" + {settings.fallback_replicas} fallback" if settings.fallback_replicas else "")
    print(f"==> starting {what} and the gateway (logs under {settings.run_dir})", flush=True)
    for process in companions:
        process.start()
    for replica in replicas:
        replica.triton.start()
        replica.openai.start()
    envoy.start()
    began, announced = time.monotonic(), False
    while not stop.is_set():  # supervise from the first second: a crash during start-up counts
        time.sleep(0.5)
        for replica in replicas:
            replica.supervise(stop.is_set())
        if not stop.is_set():
            for process in [envoy, *companions]:
                process.check()
        if (not announced and all(r.triton.was_ready for r in replicas)
                and service_ready(gateway)):
            print(f"  the model is ready after {time.monotonic() - began:.1f} s", flush=True)
            print(banner(settings, gateway, key), flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            announced = True
    drain(gateway, envoy, replicas)
    for process in companions:
        process.stop(grace=5)
    return 0


def gateway_only(settings: runtime.Settings) -> int:
    """One more gateway in front of the same replicas (as a second Envoy deployment would be):
    its own ports (GATEWAY_PORT, GATEWAY_ADMIN_PORT), config and access log under
    run_dir/gateway-PORT; with LLM_GLOBAL_LIMITS=1 it shares the running rate-limit service.
    SIGTERM drains it like the whole service."""
    stop = on_stop_signal()
    env = dict(os.environ)
    port = int(env.get("GATEWAY_PORT", "8080"))
    run_dir = settings.run_dir / f"gateway-{port}"
    env.setdefault("GATEWAY_ACCESS_LOG", str(run_dir / "access.log"))
    gateway = runtime.gateway_settings(settings, env)
    config = runtime.prepare_gateway(gateway, run_dir)
    envoy = Supervised("envoy", runtime.envoy_command(config, settings.log_level), env,
                       run_dir / "envoy.log")
    envoy.start()
    print(f"==> gateway on http://{gateway.host}:{gateway.port} in front of "
          f"{', '.join(map(str, gateway.replicas))} (log: {gateway.access_log})", flush=True)
    print(f"    {enforcement(gateway)}", flush=True)
    if not gateway.global_limits and listening(settings.ratelimit_port):
        print(f"WARNING: a rate-limit service answers on 127.0.0.1:{settings.ratelimit_port}, "
              f"but this gateway does not use it: its keys get its local limits only, on top "
              f"of what the other gateways allow. Start it with LLM_GLOBAL_LIMITS=1 to share "
              f"their limits and token quotas.", file=sys.stderr, flush=True)
    watched = targets_dir(settings)
    name = f"gateway-{gateway.port}"
    if watched.is_dir():  # a runner with LLM_MONITORING=1: let its Prometheus scrape us too
        prometheus.write_targets(watched, name, [gateway_target(gateway)])
    try:
        while not stop.is_set():
            time.sleep(0.5)
            envoy.check()
        drain(gateway, envoy, [])
    finally:
        prometheus.remove_targets(watched, name)
    return 0


def enforcement(gateway: runtime.GatewaySettings) -> str:
    """What a gateway enforces, for its start-up line (its /metrics says it too)."""
    if gateway.global_limits:
        return (f"limits: per-key local buckets + the shared limits and token quotas of the "
                f"rate-limit service {gateway.ratelimit} (fails {gateway.ratelimit_failure_mode})")
    counted = (f"; the rate-limit service {gateway.ratelimit} only counts usage"
               if gateway.ratelimit else "")
    return (f"limits: per-key local buckets only{counted} (LLM_GLOBAL_LIMITS=1 shares limits "
            f"and token quotas across gateways)")


def listening(port: int) -> bool:
    """Whether something accepts connections on a loopback port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def drain(gateway: runtime.GatewaySettings, envoy: Supervised,
          replicas: list[SupervisedReplica]) -> None:
    """Graceful stop: refuse new requests (readiness false, 503), let every request in flight
    finish, then stop the gateway and the replicas (which have nothing left to wait for)."""
    print(f"\n==> draining: new requests get 503; waiting up to {DRAIN_TIMEOUT_S} s for "
          f"requests in flight", flush=True)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    active = -1
    try:
        runtime.set_gateway_draining(gateway)
        while time.monotonic() < deadline:
            active = runtime.gateway_active_requests(gateway)
            if active == 0:
                break
            time.sleep(0.2)
    except OSError as exc:
        print(f"==> the gateway's admin port did not answer ({exc}); stopping now", flush=True)
    print(f"==> {max(active, 0)} requests still in flight; stopping the gateway"
          + (", the OpenAI frontends, then Triton" if replicas else ""), flush=True)
    envoy.stop(grace=10)
    for replica in replicas:
        replica.openai.stop(grace=10)
    for replica in replicas:
        replica.triton.stop(grace=40)
    print("==> stopped", flush=True)


def pid_file(settings: runtime.Settings) -> Path:
    return settings.run_dir / "serve.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def up(settings: runtime.Settings) -> int:
    pidf = pid_file(settings)
    if pidf.exists() and _alive(int(pidf.read_text())):
        print(f"already running (pid {pidf.read_text().strip()}); `make down` stops it")
        return 0
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    gateway = runtime.gateway_settings(settings)
    key = dev_key(gateway)  # issued here so the key never lands in the runner's log
    log = settings.run_dir / "serve.log"
    runner = Supervised("runner", [sys.executable, "-m", "tools.serve", "serve"],
                        dict(os.environ), log)
    runner.start()
    assert runner.proc is not None
    pidf.write_text(str(runner.proc.pid))
    print(f"==> started in the background (pid {runner.proc.pid}, log: {log})", flush=True)
    wait_ready(lambda: service_ready(gateway), [runner], READY_TIMEOUT_S, "the model")
    print(banner(settings, gateway, key), flush=True)
    return 0


def down(settings: runtime.Settings) -> int:
    pidf = pid_file(settings)
    if not pidf.exists():
        print("not running")
        return 0
    pid = int(pidf.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S + 60  # drain, then stop grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    pidf.unlink(missing_ok=True)
    print("stopped")
    return 0


def status(settings: runtime.Settings) -> int:
    ready = service_ready(runtime.gateway_settings(settings))
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def adapter(settings: runtime.Settings, action: str, name: str, directory: str,
            pool_name: str) -> int:
    """Load, unload or list LoRA adapters on every running replica of a pool, straight on
    their Tritons (loopback, as the operator of this host; through the gateway an admin-tier
    key does the same with /v1/load_lora_adapter). Each replica records what it serves."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from contracts.adapters import ADMIN_TIER, MODEL
    from contracts.headers import Header

    if action != "list" and not name:
        raise SystemExit(f"give the adapter's name: make adapter ACTION={action} NAME=<name>"
                         + (" DIR=/absolute/path/to/peft/dir" if action == "load" else ""))
    if action == "load" and not directory:
        raise SystemExit("give the adapter's directory: make adapter ACTION=load NAME=<name> "
                         "DIR=/absolute/path/to/peft/dir")
    values = {"action": action, "name": name,
              "path": str(Path(directory).resolve()) if directory else ""}
    failed = 0
    for index, (pool, replica) in enumerate(settings.pools()):
        if pool.value != pool_name:
            continue
        inputs = []
        for input_name, value in values.items():
            if value:
                tensor = grpcclient.InferInput(input_name, [1], "BYTES")
                tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
                inputs.append(tensor)
        try:
            client = grpcclient.InferenceServerClient(replica.grpc_url)
            result = client.infer(MODEL, inputs, headers={Header.TIER.value: ADMIN_TIER})
        except InferenceServerException as exc:
            print(f"replica {index} ({pool.value}): {exc.message()}", file=sys.stderr)
            failed += 1
            continue
        served = json.loads(result.as_numpy("adapters")[0])
        names = ", ".join(a["name"] + ("" if a["resident"] else " (evicted)")
                          for a in served["adapters"]) or "none"
        print(f"replica {index} ({pool.value}): {action} done; serving {names}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("serve", "up", "down", "status", "gateway",
                                            "adapter"))
    parser.add_argument("action", nargs="?", choices=("list", "load", "unload"),
                        help="adapter: what to do on every replica of --pool")
    parser.add_argument("name", nargs="?", default="", help="adapter: its name")
    parser.add_argument("directory", nargs="?", default="",
                        help="adapter load: the PEFT directory (adapter_config.json and "
                             "adapter_model.safetensors)")
    parser.add_argument("--pool", choices=("primary", "fallback"), default="primary",
                        help="adapter: the pool whose replicas act (each pool keeps its own "
                             "list: the fallback may serve another base model)")
    args = parser.parse_args()
    settings = runtime.Settings.from_env()
    if args.command == "adapter":
        return adapter(settings, args.action or "list", args.name, args.directory, args.pool)
    return {"serve": serve, "up": up, "down": down, "status": status,
            "gateway": gateway_only}[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
