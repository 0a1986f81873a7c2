"""The Kubernetes manifests (deploy/k8s), checked offline: every resource is valid for one pinned
Kubernetes version (kubernetes-validate's bundled OpenAPI schemas, strict: unknown fields fail),
every file is part of a kustomization, and the manifests keep what deploy/README.md promises.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from tools import runtime
from tools.processes import env_file

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
GPU_OVERLAY = K8S / "overlays" / "gpu"
# The Kubernetes version the manifests must be valid for (kubernetes-validate 1.37.0 bundles
# the schemas of 1.25 to 1.37).
KUBERNETES_VERSION = "1.34.0"
NAMESPACE = "llm"
PART_OF = {"app.kubernetes.io/name": "llm"}
CLUSTER_SCOPED = {"Namespace"}
# Strategic merge keys of the lists the GPU patch touches (as in the Kubernetes API types);
# other lists are replaced by the patch's.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}

Resource = dict[str, Any]


# ---- loading -------------------------------------------------------------------------------

def documents(path: Path) -> list[Resource]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def listed(kustomization: Path, field: str) -> list[Path]:
    """The paths a kustomization names under `resources` or `patches` (a patch: its `path`)."""
    entries = documents(kustomization)[0].get(field, [])
    paths = [entry["path"] if isinstance(entry, dict) else entry for entry in entries]
    return [(kustomization.parent / path).resolve() for path in paths]


def resource_files(kustomization: Path) -> list[Path]:
    """The manifest files a kustomization builds from, through bases it includes."""
    files = []
    for path in listed(kustomization, "resources"):
        files += resource_files(path / "kustomization.yaml") if path.is_dir() else [path]
    return files


def build(kustomization: Path) -> list[Resource]:
    """What `kubectl kustomize` gives for our layout: the resources, with the patches merged."""
    resources = [doc for path in resource_files(kustomization) for doc in documents(path)]
    for patch_file in listed(kustomization, "patches"):
        for patch in documents(patch_file):
            target = find(resources, patch["kind"], patch["metadata"]["name"])
            resources[resources.index(target)] = strategic_merge(target, patch)
    return resources


def strategic_merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, enough for ours: maps merge key by key, lists of named items
    merge item by item (MERGE_KEYS), any other value is replaced."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if key in MERGE_KEYS and isinstance(value, list) and key in merged:
            by_key = {item[MERGE_KEYS[key]]: item for item in merged[key]}
            for item in value:
                name = item[MERGE_KEYS[key]]
                by_key[name] = strategic_merge(by_key[name], item) if name in by_key else item
            merged[key] = list(by_key.values())
        else:
            merged[key] = strategic_merge(merged[key], value) if key in merged else value
    return merged


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(deployment: Resource, name: str) -> Resource:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def pod_specs(resources: list[Resource]) -> Iterator[tuple[str, Resource]]:
    for resource in resources:
        if resource["kind"] == "Deployment":
            yield resource["metadata"]["name"], resource["spec"]["template"]["spec"]


def env(container_spec: Resource) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container_spec.get("env", [])}


def port_number(container_spec: Resource, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container_spec["ports"] if p["name"] == port)


def probe_target(container_spec: Resource, probe: str) -> tuple[str, int]:
    """(path or protocol, port) a probe checks."""
    spec = container_spec[probe]
    if "httpGet" in spec:
        return spec["httpGet"]["path"], port_number(container_spec, spec["httpGet"]["port"])
    if "grpc" in spec:
        return "grpc", spec["grpc"]["port"]
    return "tcp", port_number(container_spec, spec["tcpSocket"]["port"])


def prestop_sleep_s(container_spec: Resource) -> int:
    command = container_spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def source_value(path: str, pattern: str) -> str:
    """A value the project's own code fixes, so the manifests cannot drift from it."""
    match = re.search(pattern, (ROOT / path).read_text())
    assert match, f"{pattern!r} not found in {path}"
    return match.group(1)


def validation_problem(resource: Resource) -> str | None:
    """Where and why `resource` is invalid for KUBERNETES_VERSION, or None when it is valid.
    (Only the path and message: the exception's text carries the whole schema.)"""
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(map(str, error.path))}: {error.message}"
    return None


def config_sources(node: Any) -> Iterator[Resource]:
    """Every path_config_source in an Envoy config."""
    if isinstance(node, dict):
        if "path_config_source" in node:
            yield node["path_config_source"]
        for value in node.values():
            yield from config_sources(value)
    elif isinstance(node, list):
        for value in node:
            yield from config_sources(value)


def gibibytes(quantity: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


BASE_RESOURCES = build(BASE / "kustomization.yaml")
GPU_RESOURCES = build(GPU_OVERLAY / "kustomization.yaml")
ALL_BUILDS = pytest.mark.parametrize("resources", [BASE_RESOURCES, GPU_RESOURCES],
                                     ids=["base", "gpu"])


def validation_cases() -> Iterator[Any]:
    """Every resource of the base as written, and every resource an overlay patches as the
    overlay builds it (a patch alone is not a complete resource)."""
    for path in resource_files(BASE / "kustomization.yaml"):
        for doc in documents(path):
            yield pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    for overlay in (k for k in kustomizations() if k.parent != BASE):
        built = build(overlay)
        for patch in (doc for path in listed(overlay, "patches") for doc in documents(path)):
            kind, name = patch["kind"], patch["metadata"]["name"]
            yield pytest.param(find(built, kind, name),
                               id=f"{overlay.parent.relative_to(K8S)}:{kind}/{name}")


# ---- layout and schema ---------------------------------------------------------------------

def test_every_path_a_kustomization_lists_exists():
    for kustomization in kustomizations():
        for path in listed(kustomization, "resources") + listed(kustomization, "patches"):
            assert path.is_file() or (path / "kustomization.yaml").is_file(), \
                f"{kustomization.relative_to(ROOT)} lists {path}, which does not exist"


def generated_files(kustomization: Path) -> list[Path]:
    """The files a kustomization's configMapGenerator turns into ConfigMaps."""
    return [(kustomization.parent / name).resolve()
            for generator in documents(kustomization)[0].get("configMapGenerator", [])
            for name in generator["files"]]


def test_every_manifest_is_listed_by_a_kustomization():
    listed_files = {path for k in kustomizations()
                    for path in listed(k, "resources") + listed(k, "patches")
                    + generated_files(k)}
    manifests = {path.resolve() for path in K8S.rglob("*.yaml")
                 if path.name != "kustomization.yaml"}
    assert manifests - listed_files == set()


def test_kubernetes_gateway_config_is_current():
    settings = runtime.GatewaySettings.from_env(env_file(K8S / "gateway.env"))
    expected = runtime.render_envoy_config(settings, runtime.load_tiers())
    assert (BASE / "envoy.yaml").read_text() == expected, (
        "deploy/k8s/base/envoy.yaml is stale: run `make k8s-config` and commit it")


@pytest.mark.parametrize("resource", list(validation_cases()))
def test_manifest_is_valid_for_the_pinned_kubernetes_version(resource):
    assert validation_problem(resource) is None


def test_strict_validation_rejects_a_misspelt_field():
    # Proves the check above has teeth: without strict mode unknown fields pass silently.
    service = copy.deepcopy(find(BASE_RESOURCES, "Service", "llm-triton"))
    service["spec"]["publishNotReadyAdresses"] = False
    assert "publishNotReadyAdresses" in validation_problem(service)


def test_every_namespaced_resource_lives_in_the_llm_namespace():
    assert find(BASE_RESOURCES, "Namespace", NAMESPACE)
    for resource in BASE_RESOURCES:
        if resource["kind"] not in CLUSTER_SCOPED:
            assert resource["metadata"].get("namespace") == NAMESPACE, resource["metadata"]


def test_every_resource_carries_the_service_label_and_selectors_match_their_pods():
    for resource in BASE_RESOURCES:
        assert PART_OF.items() <= resource["metadata"]["labels"].items(), resource["metadata"]
    pod_labels = [d["spec"]["template"]["metadata"]["labels"]
                  for d in BASE_RESOURCES if d["kind"] == "Deployment"]
    for deployment in (r for r in BASE_RESOURCES if r["kind"] == "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for resource in BASE_RESOURCES:
        if resource["kind"] in ("Service", "PodDisruptionBudget"):
            selector = resource["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matched = [labels for labels in pod_labels if selector.items() <= labels.items()]
            assert len(matched) == 1, f"{resource['kind']} {resource['metadata']['name']}"


def test_images_carry_explicit_tags():
    for name, spec in pod_specs(BASE_RESOURCES):
        for c in spec["containers"]:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", c["image"]), (name, c["image"])


# ---- the model replicas --------------------------------------------------------------------

def test_triton_service_is_headless_so_envoy_balances_each_request():
    service = find(BASE_RESOURCES, "Service", "llm-triton")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8003}


def test_the_gateway_is_the_only_way_in():
    services = [r for r in BASE_RESOURCES if r["kind"] == "Service"]
    # Nothing is exposed outside the cluster by the base; the operator picks how (README).
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    gateway = find(BASE_RESOURCES, "Service", "llm-gateway")
    assert [(p["port"], p["targetPort"]) for p in gateway["spec"]["ports"]] == [(80, "http")]
    envoy = container(find(BASE_RESOURCES, "Deployment", "llm-gateway"), "envoy")
    assert port_number(envoy, "http") == 8080
    # The only ingress rule open to every source is the gateway's listener.
    for policy in (r for r in BASE_RESOURCES if r["kind"] == "NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            if "from" not in rule:
                assert policy["spec"]["podSelector"]["matchLabels"][
                    "app.kubernetes.io/component"] == "gateway"
                assert [p["port"] for p in rule["ports"]] == [8080]


def test_only_the_gateway_reaches_triton_and_the_ratelimit_service_prometheus_their_metrics():
    def sources(name: str) -> dict[int, set[str]]:
        policy = find(BASE_RESOURCES, "NetworkPolicy", name)
        allowed: dict[int, set[str]] = {}
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                who = (peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                       if "podSelector" in peer else
                       "namespace " + peer["namespaceSelector"]["matchLabels"][
                           "kubernetes.io/metadata.name"])
                for port in rule["ports"]:
                    allowed.setdefault(port["port"], set()).add(who)
        return allowed

    assert sources("llm-triton") == {8000: {"gateway"}, 8001: {"gateway"}, 8003: {"gateway"},
                                     8002: {"namespace monitoring"},
                                     8004: {"namespace monitoring"}}
    assert sources("llm-ratelimit") == {8081: {"gateway"}, 8082: {"namespace monitoring"}}
    assert sources("llm-redis") == {6379: {"ratelimit"}}


def test_triton_probes_use_its_health_routes_and_allow_ten_minutes_for_the_model_load():
    triton = container(find(BASE_RESOURCES, "Deployment", "llm-triton"), "triton")
    assert probe_target(triton, "readinessProbe") == ("/v2/health/ready", 8000)
    assert probe_target(triton, "livenessProbe") == ("/v2/health/live", 8000)
    assert probe_target(triton, "startupProbe") == ("/v2/health/live", 8000)
    startup = triton["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600


def test_openai_sidecar_is_ready_with_its_triton_and_calls_it_over_loopback():
    openai = container(find(BASE_RESOURCES, "Deployment", "llm-triton"), "openai")
    assert probe_target(openai, "readinessProbe") == ("/health", 8003)
    # Liveness must not depend on Triton: /v1/models is answered by the frontend alone.
    assert probe_target(openai, "livenessProbe") == ("/v1/models", 8003)
    variable = source_value("openai_frontend/__main__.py",
                            r'env\.get\("(LLM_TRITON_GRPC)"')
    grpc_port = source_value("tools/runtime.py", r"grpc_port: int = (\d+)")
    assert env(openai)[variable] == f"127.0.0.1:{grpc_port}"
    assert openai["securityContext"]["readOnlyRootFilesystem"] is True


def test_triton_reads_the_model_volume_read_only_and_binds_all_addresses():
    deployment = find(BASE_RESOURCES, "Deployment", "llm-triton")
    triton = container(deployment, "triton")
    assert env(triton)["LLM_MODEL_DIR"] == "/models/llm"
    assert env(triton)["LLM_TRITON_HOST"] == "0.0.0.0"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    model = mounts["/models/llm"]
    assert model["readOnly"] is True
    assert volumes[model["name"]]["persistentVolumeClaim"]["claimName"] == "llm-model"
    assert find(BASE_RESOURCES, "PersistentVolumeClaim", "llm-model")


@ALL_BUILDS
def test_python_backend_gets_a_memory_backed_dev_shm_of_at_least_1gi(resources):
    deployment = find(resources, "Deployment", "llm-triton")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    shm = next(m for m in container(deployment, "triton")["volumeMounts"]
               if m["mountPath"] == "/dev/shm")
    empty_dir = volumes[shm["name"]]["emptyDir"]
    assert empty_dir["medium"] == "Memory"
    assert gibibytes(empty_dir["sizeLimit"]) >= 1


def test_triton_grace_period_outlasts_prestop_and_tritons_exit_timeout():
    deployment = find(BASE_RESOURCES, "Deployment", "llm-triton")
    exit_timeout = int(source_value("tools/runtime.py", r"--exit-timeout-secs=(\d+)"))
    longest_prestop = max(prestop_sleep_s(c) for c in
                          deployment["spec"]["template"]["spec"]["containers"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > longest_prestop + exit_timeout


def test_hpa_scales_triton_on_the_waiting_queue_and_scales_down_slowly():
    hpa = find(BASE_RESOURCES, "HorizontalPodAutoscaler", "llm-triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "llm-triton"}
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "llm_requests_waiting"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # The HPA owns the count: a `replicas` in the Deployment would reset it on every apply.
    assert "replicas" not in find(BASE_RESOURCES, "Deployment", "llm-triton")["spec"]


def test_adapter_rule_maps_the_engines_waiting_gauge_to_the_hpa_metric():
    hpa = find(BASE_RESOURCES, "HorizontalPodAutoscaler", "llm-triton")
    config = yaml.safe_load(
        find(BASE_RESOURCES, "ConfigMap", "prometheus-adapter-rules")["data"]["config.yaml"])
    [rule] = config["rules"]
    gauge = "vllm:num_requests_waiting"
    assert f'"{gauge}"' in (ROOT / "triton_llm" / "metrics.py").read_text()
    assert rule["seriesQuery"] == f'{gauge}{{namespace!="",pod!=""}}'
    assert re.fullmatch(rule["name"]["matches"], gauge)
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["metricsQuery"] == "avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def test_triton_pods_are_scraped_on_the_metrics_port():
    deployment = find(BASE_RESOURCES, "Deployment", "llm-triton")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert port_number(container(deployment, "triton"), "metrics") == int(
        annotations["prometheus.io/port"]) == 8002


def test_triton_keeps_one_replica_through_voluntary_disruptions():
    budget = find(BASE_RESOURCES, "PodDisruptionBudget", "llm-triton")
    assert budget["spec"]["minAvailable"] == 1


def test_gpu_overlay_gives_each_replica_one_gpu_and_fails_without_one():
    base = container(find(BASE_RESOURCES, "Deployment", "llm-triton"), "triton")
    deployment = find(GPU_RESOURCES, "Deployment", "llm-triton")
    triton = container(deployment, "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(triton)["LLM_DEVICE"] == "cuda"
    # The GPU image (vLLM, Python 3.12), as compose.gpu.yaml builds it; the frontend's is kept.
    assert (base["image"], triton["image"]) == ("llm-triton:latest", "llm-triton-gpu:latest")
    assert container(deployment, "openai")["image"] == "llm-openai:latest"
    assert env(triton).items() >= env(base).items()  # the base's settings are kept
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        deployment["spec"]["template"]["spec"]["tolerations"]
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == \
        ["triton", "openai"]


def test_gpu_overlay_enlarges_dev_shm_and_memory_covers_it():
    def shm_and_memory(resources: list[Resource]) -> tuple[float, float]:
        deployment = find(resources, "Deployment", "llm-triton")
        dshm = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == "dshm")
        memory = container(deployment, "triton")["resources"]["limits"]["memory"]
        return gibibytes(dshm["emptyDir"]["sizeLimit"]), gibibytes(memory)

    base_shm, base_memory = shm_and_memory(BASE_RESOURCES)
    gpu_shm, gpu_memory = shm_and_memory(GPU_RESOURCES)
    assert gpu_shm > base_shm
    # /dev/shm is RAM charged to the container: the limit holds it and the stubs beside it.
    assert base_memory > base_shm + 0.5 and gpu_memory > gpu_shm + 0.5


# ---- the gateway ---------------------------------------------------------------------------

def test_gateway_probes_use_its_health_routes():
    envoy = container(find(BASE_RESOURCES, "Deployment", "llm-gateway"), "envoy")
    assert probe_target(envoy, "readinessProbe") == ("/readyz", 8080)
    assert probe_target(envoy, "livenessProbe") == ("/healthz", 8080)


def test_gateway_grace_period_covers_prestop_and_the_drain():
    deployment = find(BASE_RESOURCES, "Deployment", "llm-gateway")
    envoy = container(deployment, "envoy")
    default = source_value("docker/envoy-entrypoint.sh",
                           r"DRAIN_TIMEOUT_S=\$\{GATEWAY_DRAIN_TIMEOUT_S:-(\d+)\}")
    drain = int(env(envoy).get("GATEWAY_DRAIN_TIMEOUT_S", default))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert prestop_sleep_s(envoy) == 5
    assert grace > prestop_sleep_s(envoy) + drain


def test_gateway_reaches_every_replica_through_the_headless_service():
    deployment = find(BASE_RESOURCES, "Deployment", "llm-gateway")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container(deployment, "envoy")["volumeMounts"]
               if m["mountPath"] == "/etc/envoy/envoy.yaml"]
    assert volumes[mount["name"]]["configMap"]["name"] == "llm-gateway-config"
    config = yaml.safe_load((BASE / "envoy.yaml").read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name, port in (("triton_http", 8000), ("triton_grpc", 8001), ("openai_frontend", 8003)):
        primary = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        assert primary["endpoint"]["address"]["socket_address"] == {
            "address": "llm-triton", "port_value": port}
        assert clusters[name]["type"] == "STRICT_DNS"  # one host per ready pod
    ratelimit = clusters["ratelimit"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert ratelimit["endpoint"]["address"]["socket_address"] == {
        "address": "llm-ratelimit", "port_value": 8081}
    assert find(BASE_RESOURCES, "Service", "llm-triton")["spec"]["clusterIP"] == "None"
    assert find(BASE_RESOURCES, "Deployment", "llm-gateway")["spec"]["replicas"] == 2
    assert find(BASE_RESOURCES, "PodDisruptionBudget", "llm-gateway")["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": {
            **PART_OF, "app.kubernetes.io/component": "gateway"}}}


def test_key_secret_is_mounted_on_the_directory_envoy_watches():
    # Where the gateway image's config (gateway/envoy.container.yaml) loads the key filter from.
    [source] = list(config_sources(yaml.safe_load(
        (ROOT / "gateway" / "envoy.container.yaml").read_text())))
    watched = source["watched_directory"]["path"]
    assert Path(source["path"]).parent == Path(watched)
    deployment = find(BASE_RESOURCES, "Deployment", "llm-gateway")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container(deployment, "envoy")["volumeMounts"]
               if "secret" in volumes[m["name"]]]
    secret = volumes[mount["name"]]["secret"]
    # The Secret's root (where Kubernetes swaps `..data`) must be the watched directory itself.
    assert mount["mountPath"] == watched and mount["readOnly"] is True
    assert secret["secretName"] == "llm-gateway-keys"
    assert secret["items"] == [{"key": "auth-filter.yaml", "path": Path(source["path"]).name}]


# ---- rate limits ---------------------------------------------------------------------------

def test_ratelimit_service_uses_grpc_health_and_redis_counts_without_persistence():
    ratelimit = container(find(BASE_RESOURCES, "Deployment", "llm-ratelimit"), "ratelimit")
    assert probe_target(ratelimit, "readinessProbe") == ("grpc", 8081)
    assert probe_target(ratelimit, "livenessProbe") == ("grpc", 8081)
    assert env(ratelimit)["LLM_RATELIMIT_REDIS_URL"] == "redis://llm-redis:6379/0"
    assert env(ratelimit)["LLM_RATELIMIT_FAILURE_MODE"] in ("open", "closed")
    redis = container(find(BASE_RESOURCES, "Deployment", "llm-redis"), "redis")
    assert redis["args"] == ["--save", "", "--appendonly", "no"]
    assert probe_target(redis, "readinessProbe") == ("tcp", 6379)
    assert find(BASE_RESOURCES, "Service", "llm-redis")["spec"]["ports"][0]["port"] == 6379


# ---- every pod -----------------------------------------------------------------------------

@ALL_BUILDS
def test_no_container_runs_privileged_as_root_or_with_capabilities(resources):
    for name, spec in pod_specs(resources):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            context = c["securityContext"]
            assert context.get("privileged") is not True, (name, c["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])


@ALL_BUILDS
def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(resources):
    for name, spec in pod_specs(resources):
        for c in spec["containers"]:
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), (name, c["name"])
            assert "memory" in c["resources"]["limits"], (name, c["name"])


def test_service_links_are_off_so_service_names_cannot_shadow_llm_settings():
    # A service `llm-ratelimit` would otherwise put LLM_RATELIMIT_PORT=tcp://... into pods.
    for name, spec in pod_specs(BASE_RESOURCES):
        assert spec["enableServiceLinks"] is False, name


def test_podmonitors_scrape_named_metrics_ports_of_base_pods_that_policies_admit():
    """Every PodMonitor endpoint (deploy/k8s/monitoring) is a named port of a pod it selects,
    labelled with a job the rules know, and the pod's network policy admits the `monitoring`
    namespace to that port (and to nothing else but the gateway's own)."""
    from monitoring.prometheus import Job

    monitors = documents(K8S / "monitoring" / "podmonitors.yaml")
    assert monitors and all(m["kind"] == "PodMonitor" for m in monitors)
    workloads = [r for r in BASE_RESOURCES if r["kind"] in ("Deployment", "StatefulSet")]
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        pods = [w for w in workloads
                if wanted.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"{monitor['metadata']['name']} selects no pod"
        policy = next(p for p in BASE_RESOURCES if p["kind"] == "NetworkPolicy"
                      and p["spec"]["podSelector"]["matchLabels"].items() <= wanted.items())
        admitted = {port["port"] for rule in policy["spec"]["ingress"]
                    for peer in rule.get("from", []) if "namespaceSelector" in peer
                    for port in rule["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            ports = {p["name"]: p["containerPort"] for pod in pods
                     for c in pod["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            assert endpoint["port"] in ports, endpoint["port"]
            assert ports[endpoint["port"]] in admitted, (endpoint["port"], admitted)
            jobs = [r["replacement"] for r in endpoint["relabelings"]
                    if r.get("targetLabel") == "job"]
            assert len(jobs) == 1 and jobs[0] in {job.value for job in Job}
