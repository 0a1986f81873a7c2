"""How this project runs Triton from the pip wheel: paths, environment and command line.

Why one module: `make serve`, the background runner and the test fixtures must start the very
same server. Every setting is read from the environment once, in `Settings.from_env`, so the
settings table of docs/operations.md is the whole story. It also works around the traps of running
Triton from the `nvidia-pytriton` wheel: the Python-backend stub's RPATH and libpython
(`triton_env`), and its PATH-based discovery of the Python environment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from contracts.headers import FORWARD_PATTERN
from gateway.keys import KeyStore
from gateway.render import SERVING_CLUSTERS, GatewaySettings, Pool, load_tiers, render_envoy_config
from ratelimit.contract import metrics_port as ratelimit_metrics_port

ROOT = Path(__file__).resolve().parent.parent

RUN_DIR = ROOT / ".run"
MODEL_REPOSITORY = ROOT / "model_repository"
DEMO_MODEL = ROOT / "demo_model"
VLLM_VENV = ROOT / ".venv-vllm"  # `make vllm`: the vLLM engine's environment

_SITE = Path(sysconfig.get_paths()["purelib"])
_PYTRITON = _SITE / "pytriton" / "tritonserver"
_PYTRITON_LIBS = _SITE / "nvidia_pytriton.libs"
_ENVOY = _SITE / "envoy" / "_bin" / "envoy"


@dataclass(frozen=True)
class Settings:
    """Deployment knobs, each overridable by the environment variable named in its comment."""

    host: str = "127.0.0.1"  # LLM_TRITON_HOST: Triton stays on loopback by default
    http_port: int = 8000  # LLM_HTTP_PORT
    grpc_port: int = 8001  # LLM_GRPC_PORT
    metrics_port: int = 8002  # LLM_METRICS_PORT
    openai_port: int = 8003  # LLM_OPENAI_PORT: the OpenAI-compatible frontend, loopback
    # LLM_OPENAI_METRICS_PORT: the frontend's /metrics, on a port of its own so a network
    # policy can admit Prometheus there without admitting it to the API
    openai_metrics_port: int = 8004
    model_dir: Path = DEMO_MODEL  # LLM_MODEL_DIR: any save_pretrained causal-LM directory
    log_level: str = "info"  # LLM_LOG_LEVEL: error | warning | info | verbose
    run_dir: Path = RUN_DIR  # LLM_RUN_DIR: pid files, logs, backend layout
    admin_key: str = ""  # LLM_ADMIN_KEY: unlocks Triton's restricted APIs; random if unset
    # LLM_TRITON_HOME: a server laid out as in NVIDIA's image (bin/, backends/, caches/ under
    # one folder, /opt/tritonserver there) instead of the nvidia-pytriton wheel's.
    triton_home: Path | None = None
    replicas: int = 1  # LLM_REPLICAS: model replicas (each its own Triton + OpenAI frontend)
    fallback_replicas: int = 0  # LLM_FALLBACK_REPLICAS: the fallback pool's replicas
    # LLM_FALLBACK_MODEL_DIR: what the fallback pool serves (a smaller model, say)
    fallback_model_dir: Path | None = None
    # LLM_REPLICA_PORT_STEP: replica i listens on each port + i * step
    replica_port_step: int = 10
    # LLM_GLOBAL_LIMITS=1: run Redis and the rate-limit service (ratelimit/) so limits and
    # token quotas hold across gateways (GATEWAY_RATELIMIT names an external service instead)
    global_limits: bool = False
    redis_port: int = 6379  # LLM_REDIS_PORT
    ratelimit_port: int = 8081  # LLM_RATELIMIT_PORT
    ratelimit_metrics_port: int = 8082  # LLM_RATELIMIT_METRICS_PORT: its /metrics
    # LLM_MONITORING=1: run Prometheus (Debian's package, `make prometheus`) scraping every
    # part, with the rules of monitoring/rules/
    monitoring: bool = False
    prometheus_port: int = 9090  # LLM_PROMETHEUS_PORT: its UI and API, loopback
    # OTEL_EXPORTER_OTLP_ENDPOINT (OpenTelemetry's own variable, e.g. http://127.0.0.1:4318):
    # traces from the gateway, the OpenAI frontend, Triton and the engine; empty: off
    otlp_endpoint: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        default = cls()

        def port(name: str, fallback: int) -> int:
            raw = env.get(name, str(fallback))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise SystemExit(f"{name}={raw!r} is not a TCP port; use a number in 1-65535")
            return int(raw)

        def count(name: str, fallback: int, least: int) -> int:
            raw = env.get(name, str(fallback))
            if not raw.isdigit() or int(raw) < least:
                raise SystemExit(f"{name}={raw!r}: use a whole number, at least {least}")
            return int(raw)

        level = env.get("LLM_LOG_LEVEL", default.log_level).lower()
        if level not in {"error", "warning", "info", "verbose"}:
            raise SystemExit(f"LLM_LOG_LEVEL={level!r}: use error, warning, info or verbose")
        return cls(
            host=env.get("LLM_TRITON_HOST", default.host),
            http_port=port("LLM_HTTP_PORT", default.http_port),
            grpc_port=port("LLM_GRPC_PORT", default.grpc_port),
            metrics_port=port("LLM_METRICS_PORT", default.metrics_port),
            openai_port=port("LLM_OPENAI_PORT", default.openai_port),
            openai_metrics_port=port("LLM_OPENAI_METRICS_PORT", default.openai_metrics_port),
            model_dir=Path(env.get("LLM_MODEL_DIR", str(default.model_dir))).resolve(),
            log_level=level,
            run_dir=Path(env.get("LLM_RUN_DIR", str(default.run_dir))).resolve(),
            admin_key=env.get("LLM_ADMIN_KEY") or secrets.token_urlsafe(24),
            triton_home=Path(env["LLM_TRITON_HOME"]) if env.get("LLM_TRITON_HOME") else None,
            replicas=count("LLM_REPLICAS", default.replicas, 1),
            fallback_replicas=count("LLM_FALLBACK_REPLICAS", default.fallback_replicas, 0),
            fallback_model_dir=(Path(env["LLM_FALLBACK_MODEL_DIR"]).resolve()
                                if env.get("LLM_FALLBACK_MODEL_DIR") else None),
            replica_port_step=count("LLM_REPLICA_PORT_STEP", default.replica_port_step, 4),
            global_limits=env.get("LLM_GLOBAL_LIMITS", "0").lower() in {"1", "true", "yes", "on"},
            redis_port=port("LLM_REDIS_PORT", default.redis_port),
            ratelimit_port=port("LLM_RATELIMIT_PORT", default.ratelimit_port),
            ratelimit_metrics_port=port("LLM_RATELIMIT_METRICS_PORT",
                                        ratelimit_metrics_port(port(
                                            "LLM_RATELIMIT_PORT", default.ratelimit_port))),
            monitoring=env.get("LLM_MONITORING", "0").lower() in {"1", "true", "yes", "on"},
            prometheus_port=port("LLM_PROMETHEUS_PORT", default.prometheus_port),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/"),
        )

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def pools(self) -> list[tuple[Pool, "Settings"]]:
        """(pool, settings) of every replica to run: the primaries, then the fallback pool.
        Replica i listens on each of these ports + i * replica_port_step and logs under
        run_dir/replica-i (the first keeps the ports and run dir as they are)."""
        result = []
        for index in range(self.replicas + self.fallback_replicas):
            shift = index * self.replica_port_step
            fallback = index >= self.replicas
            result.append((Pool.FALLBACK if fallback else Pool.PRIMARY, replace(
                self, http_port=self.http_port + shift, grpc_port=self.grpc_port + shift,
                metrics_port=self.metrics_port + shift, openai_port=self.openai_port + shift,
                openai_metrics_port=self.openai_metrics_port + shift,
                model_dir=(self.fallback_model_dir or self.model_dir) if fallback
                else self.model_dir,
                run_dir=self.run_dir / f"replica-{index}" if index else self.run_dir,
                replicas=1, fallback_replicas=0)))
        return result


def _copy_if_changed(src: Path, dst: Path) -> None:
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copy2(src, dst)


def prepare_backend_dir(run_dir: Path) -> Path:
    """Lay out Triton's backend directory from the wheel; idempotent and cheap when done.

    The Python backend expects the stub beside `libtriton_python.so`; the wheel keeps stubs per
    interpreter version, so we copy the one matching the interpreter that runs the model.
    """
    if not _PYTRITON.exists():
        raise SystemExit(f"{_PYTRITON} is missing: run `make venv` to install nvidia-pytriton")
    backend = run_dir / "triton" / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _copy_if_changed(_PYTRITON / "backends" / "python" / name, backend / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = _PYTRITON / "python_backend_stubs" / version / "triton_python_backend_stub"
    _copy_if_changed(stub, backend / stub.name)
    return backend.parent


def client_lib_dir(run_dir: Path) -> Path:
    """Symlinks under the sonames perf_analyzer asks for; the wheel stores them hashed."""
    lib = run_dir / "triton" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"),
                            ("libcudart.so.12", "libcudart-*.so.12*")):
        link = lib / soname
        target = next(_PYTRITON_LIBS.glob(pattern))
        if not link.exists():
            link.symlink_to(target)
    return lib


def stub_environment(env: dict[str, str]) -> Path:
    """bin/ of the Python environment the model stubs run in: this one, or with
    LLM_ENGINE=vllm the vLLM engine's (`make vllm`), whose pins cannot share this one's."""
    if env.get("LLM_ENGINE", "").strip().lower() != "vllm":
        return Path(sys.executable).parent
    if not (VLLM_VENV / "bin" / "python3").exists():
        raise SystemExit(f"LLM_ENGINE=vllm runs the model in {VLLM_VENV}, which is missing: "
                         f"run `make vllm` (or `LLM_ENGINE=vllm make serve`, which builds it)")
    return VLLM_VENV / "bin"


ADAPTER_PEERS = "LLM_ADAPTER_PEERS"  # read by openai_frontend (--adapter-peers)


def adapter_env(pool: Pool, replica: Settings, fresh: bool,
                env: dict[str, str] | None = None) -> dict[str, str]:
    """The LoRA settings of one replica's engine (docs/adapters.md): its own record of what it
    serves, which a restart reads back; `fresh` (a new `make serve`) starts it again from
    LLM_LORA_ADAPTERS. The fallback pool serves LLM_FALLBACK_LORA_ADAPTERS instead: it may
    serve another base model."""
    env = dict(os.environ if env is None else env)
    record = replica.run_dir / "adapters.json"
    if fresh:
        record.unlink(missing_ok=True)
    values = {"LLM_ADAPTER_RECORD": str(record)}
    if pool is Pool.FALLBACK:
        values["LLM_LORA_ADAPTERS"] = env.get("LLM_FALLBACK_LORA_ADAPTERS", "")
    return values


def triton_env(run_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver, its Python stubs and perf_analyzer."""
    env = dict(os.environ if base is None else base)
    libs = [str(_PYTRITON_LIBS), sysconfig.get_config_var("LIBDIR") or "",
            str(client_lib_dir(run_dir))]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    # The stub ignores PYTHONPATH and finds its packages through the first python3 on PATH.
    env["PATH"] = f"{stub_environment(env)}:{env.get('PATH', '')}"
    return env


def triton_command(settings: Settings, model_repository: Path = MODEL_REPOSITORY) -> list[str]:
    """The tritonserver command line; restricted APIs need `settings.admin_key`."""
    home = settings.triton_home
    backends = home / "backends" if home else prepare_backend_dir(settings.run_dir)
    server = home or _PYTRITON
    restricted = "model-repository,shared-memory,trace,logging"
    level_flags = {
        "error": ["--log-info=false", "--log-warning=false"],
        "warning": ["--log-info=false"],
        "info": [],
        "verbose": ["--log-verbose=1"],
    }[settings.log_level]
    return [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={model_repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={server / 'caches'}",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        f"--http-restricted-api={restricted}:admin-key={settings.admin_key}",
        f"--grpc-restricted-protocol={restricted}:admin-key={settings.admin_key}",
        # Forward the gateway's identity and request-id headers to the model's parameters.
        f"--http-header-forward-pattern={FORWARD_PATTERN}",
        f"--grpc-header-forward-pattern={FORWARD_PATTERN}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        "--exit-timeout-secs=30",
        "--strict-readiness=true",
        *level_flags,
        *tracing_flags(settings.otlp_endpoint),
    ]


def tracing_flags(endpoint: str) -> list[str]:
    """Triton's OpenTelemetry tracing, every request, exported over OTLP/HTTP: its spans
    continue the caller's `traceparent` and the model continues them (triton_llm/tracing.py).
    None when no endpoint is set."""
    if not endpoint:
        return []
    return ["--trace-config=mode=opentelemetry", "--trace-config=rate=1",
            "--trace-config=level=TIMESTAMPS",
            f"--trace-config=opentelemetry,url={endpoint}/v1/traces",
            "--trace-config=opentelemetry,resource=service.name=triton"]


def gateway_settings(settings: Settings, env: dict[str, str] | None = None) -> GatewaySettings:
    """Gateway settings for this Triton; the environment may still point it elsewhere."""
    pools = settings.pools()
    values = {"LLM_TRITON_HOST": settings.host, "LLM_HTTP_PORT": str(settings.http_port),
              "LLM_GRPC_PORT": str(settings.grpc_port),
              "LLM_OPENAI_PORT": str(settings.openai_port)}
    if settings.global_limits or settings.monitoring:
        values["GATEWAY_RATELIMIT"] = f"127.0.0.1:{settings.ratelimit_port}"
        if not settings.global_limits:  # monitoring only: per-key usage counted, not enforced
            values["GATEWAY_GLOBAL_LIMITS"] = "0"
    if len(pools) > 1:  # one replica: the LLM_* ports above (the environment may move them)
        for pool, variable in ((Pool.PRIMARY, "GATEWAY_REPLICAS"),
                               (Pool.FALLBACK, "GATEWAY_FALLBACK_REPLICAS")):
            values[variable] = ",".join(
                f"{s.host}:{s.http_port}:{s.grpc_port}:{s.openai_port}"
                for name, s in pools if name == pool)
    values.update(os.environ if env is None else env)
    values["LLM_RUN_DIR"] = str(settings.run_dir)
    return GatewaySettings.from_env(values)


def prepare_gateway(gateway: GatewaySettings, run_dir: Path) -> Path:
    """Render envoy.yaml and make sure the key filter exists; returns the config path."""
    config = run_dir / "gateway" / "envoy.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    Path(gateway.access_log).parent.mkdir(parents=True, exist_ok=True)
    config.write_text(render_envoy_config(gateway, load_tiers()))
    store = KeyStore(gateway.keys_dir)
    if not store.filter_path.exists():
        store.sync()
    return config


def openai_command(settings: Settings) -> list[str]:
    """The OpenAI-compatible frontend (openai_frontend/), on loopback, calling Triton's gRPC."""
    return [sys.executable, "-m", "openai_frontend", "--host", "127.0.0.1",
            "--port", str(settings.openai_port), "--triton", settings.grpc_url,
            "--metrics-port", str(settings.openai_metrics_port),
            "--triton-metrics", settings.metrics_url,
            "--model-dir", str(settings.model_dir)]


def redis_command(port: int, run_dir: Path) -> list[str]:
    """Debian's redis-server on loopback, for the rate-limit service's counters. Nothing is
    persisted: counters refill by themselves, so a restart costs at most one window."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed: `apt-get install redis-server` "
                         "(Debian), or point GATEWAY_RATELIMIT at a rate-limit service")
    return [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(run_dir)]


def ratelimit_command(port: int, redis_port: int, metrics_port: int = 0) -> list[str]:
    """The rate-limit service (ratelimit/) on loopback, over that Redis; its /metrics on
    `metrics_port` (default: beside its gRPC port)."""
    return [sys.executable, "-m", "ratelimit", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port or ratelimit_metrics_port(port)),
            "--redis", f"redis://127.0.0.1:{redis_port}/0"]


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    """Debian's Prometheus on loopback (`make prometheus` installs it). Two days of data: it
    is for watching this host, not an archive. No lifecycle API: nothing can stop or reload
    it over HTTP."""
    server = shutil.which("prometheus")
    if server is None:
        raise SystemExit("prometheus is not installed: `make prometheus` (Debian's package), "
                         "or run without LLM_MONITORING=1")
    return [server, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d",
            "--log.level=warn"]


def envoy_command(config: Path, log_level: str = "warning") -> list[str]:
    """The Envoy command line. No hot restart, so several gateways can share a host."""
    level = {"verbose": "info", "info": "warning"}.get(log_level, log_level)
    return [str(_ENVOY), "-c", str(config), "--log-level", level, "--disable-hot-restart",
            "--drain-time-s", "5", "--file-flush-interval-msec", "500"]


def python_stubs(server_pid: int) -> tuple[set[int], set[int]]:
    """(alive, dead) PIDs of the Python-backend stubs (one per model instance) of a server.

    Triton does not restart a stub that died: it keeps reporting the model ready and answers
    every request with "Stub process ... is not healthy", and the dead stub stays a zombie
    child. Supervisors restart Triton when a stub is dead or fewer are alive than before.
    """
    alive, dead = set(), set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            state, parent = stat[stat.rindex(")") + 2:].split()[:2]
            if int(parent) != server_pid or "(triton_python_b" not in stat:
                continue
            (dead if state == "Z" else alive).add(int(proc.name))
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return alive, dead


def set_gateway_draining(gateway: GatewaySettings) -> None:
    """Flip the gateway's drain switch: new requests and /readyz get 503 from now on."""
    url = f"http://127.0.0.1:{gateway.admin_port}/runtime_modify?llm.draining=100"
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).close()


def gateway_active_requests(gateway: GatewaySettings) -> int:
    """Requests the gateway is serving right now (streams included)."""
    url = (f"http://127.0.0.1:{gateway.admin_port}/stats?"
           f"filter=^http.llm_gateway.downstream_rq_active$")
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.read().decode().rsplit(":", 1)[1])


def gateway_upstreams_healthy(gateway: GatewaySettings) -> bool:
    """Whether Envoy's own health checks have found a healthy host in each of its serving
    clusters, so that every route answers. Why ask Envoy: it checks each host once a second,
    so for up to a second after a process answers, the gateway still answers its routes with
    503. One healthy host per cluster is enough, as it is for Envoy (a replica may be down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.admin_port}/clusters",
                                    timeout=2) as reply:
            lines = reply.read().decode().splitlines()
    except OSError:
        return False
    healthy: dict[str, bool] = {}
    for line in lines:
        cluster = line.split("::", 1)[0]
        if cluster in SERVING_CLUSTERS and "::health_flags::" in line:
            healthy[cluster] = healthy.get(cluster, False) or line.endswith("::healthy")
    return len(healthy) == len(SERVING_CLUSTERS) and all(healthy.values())


@dataclass
class ManagedProcess:
    """A child process with its own log file and process group (runner and tests alike)."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    cwd: Optional[Path] = None  # for `python -m <package of this project>`

    def start(self) -> "ManagedProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.cwd)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and its model processes)."""
        if self.running():
            self.kill_group()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (Triton drains in-flight requests)."""
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the process group, e.g. model processes a server left
        behind when it ended."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing left
        self.proc.wait()


def find_process(*needles: bytes) -> int:
    """PID of the first process whose command line contains every needle."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if all(needle in cmdline for needle in needles):
                return int(proc.name)
    raise LookupError(f"no process with {needles} in its command line")
