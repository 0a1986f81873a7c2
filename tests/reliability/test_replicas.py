"""Several model replicas behind one gateway, with real processes (tools/serve.py supervising
two primary replicas and a fallback one, and the real Envoy balancing them).

What a platform team counts on: killing a replica under streamed load costs no new request
and no 503 (only the requests it was serving end, with an error the client can act on); the
killed replica rejoins once it is ready again; with every primary down the fallback pool
answers, marked as such in a header and the access log; and the primaries take the traffic
back afterwards.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import openai
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.harness import infer_inputs
from tools import runtime
from tools.processes import ROOT, RunnerStack, ServerProcess, free_port, http_ok, runner_stack

BODY = {"text_input": "The list", "max_tokens": 24, "ignore_eos": True}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerStack]:
    service = runner_stack(tmp_path_factory.mktemp("replicas"), LLM_REPLICAS="2",
                           LLM_FALLBACK_REPLICAS="1", LLM_DRAIN_TIMEOUT_S="5")
    try:
        for _, replica in service.settings.pools():
            service.runner.wait_until(
                lambda: http_ok(f"{replica.http_url}/v2/health/ready"), timeout=120)
        yield service
    finally:
        service.runner.stop(grace=60)


def replica_ports(stack: RunnerStack) -> dict[str, list[int]]:
    pools: dict[str, list[int]] = {"primary": [], "fallback": []}
    for pool, replica in stack.settings.pools():
        pools[pool].append(replica.http_port)
    return pools


def kill_triton(replica: runtime.Settings) -> None:
    pid = runtime.find_process(b"tritonserver", f"--http-port={replica.http_port}".encode())
    os.kill(pid, signal.SIGKILL)


def access_log(stack: RunnerStack) -> list[dict]:
    time.sleep(0.6)  # the gateway flushes its log every 0.5 s
    return [json.loads(line) for line in Path(stack.gateway.access_log).read_text().splitlines()]


def served_by(stack: RunnerStack, request_ids: set[str]) -> Counter:
    return Counter(record["upstream_host"] for record in access_log(stack)
                   if record["request_id"] in request_ids)


class Load:
    """Streamed and unary requests from a few threads until stopped; records every outcome
    with the time it started."""

    def __init__(self, stack: RunnerStack, threads: int = 4) -> None:
        self.stack, self.stop, self.lock = stack, threading.Event(), threading.Lock()
        self.outcomes: list[tuple[float, str, str]] = []  # (started, outcome, request id)
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,))
                        for i in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, streamed: bool) -> None:
        headers = {"X-API-Key": self.stack.key}
        while not self.stop.is_set():
            started, request_id = time.monotonic(), os.urandom(8).hex()
            try:
                reply = requests.post(
                    self.stack.url + ("/generate_stream" if streamed else "/generate"),
                    json=BODY, headers={**headers, "x-request-id": request_id},
                    stream=streamed, timeout=30)
                outcome = str(reply.status_code)
                if streamed:
                    for line in reply.iter_lines():
                        if line.startswith(b"data:") and b'"error"' in line:
                            outcome = "error event"
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            with self.lock:
                self.outcomes.append((started, outcome, request_id))
            # At most ~80 requests/s from four threads: under the premium tier's 100/s, so a
            # 429 from the gateway never stands in for a failover's cost.
            self.stop.wait(0.05)


def test_killing_a_replica_under_streamed_load_costs_no_new_request(stack: RunnerStack
                                                                     ) -> None:
    primaries = [r for pool, r in stack.settings.pools() if pool == "primary"]
    victim, survivor = primaries
    with Load(stack) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        kill_triton(victim)
        time.sleep(5)
        # gRPC keeps working while the replica is down.
        client = grpcclient.InferenceServerClient(stack.url.removeprefix("http://"))
        result = client.infer("llm", infer_inputs(grpcclient, "The list", max_tokens=4),
                              headers={"x-api-key": stack.key})
        assert result.as_numpy("text_output") is not None
    # A request sent in the same few milliseconds as the kill may still have reached the
    # victim: it counts as in flight there.
    settled = killed_at + 0.1
    before = [o for started, o, _ in load.outcomes if started < settled]
    after = [(o, rid) for started, o, rid in load.outcomes if started >= settled]
    assert Counter(before)["200"] > 10 and len(after) > 10, load.outcomes
    in_flight = Counter(o for o in before if o != "200")
    # At most the requests in flight on the victim fail, never with a 503 (that would mean
    # "refused, retry"), and every request made after the kill succeeds.
    assert sum(in_flight.values()) <= len(load.threads), in_flight
    assert set(in_flight) <= {"502", "ChunkedEncodingError", "error event"}, in_flight
    assert Counter(o for o, _ in after) == Counter({"200": len(after)}), after
    hosts = served_by(stack, {rid for o, rid in after})
    assert set(hosts) == {f"127.0.0.1:{survivor.http_port}"}, hosts


def test_a_killed_replica_rejoins_once_it_is_ready_again(stack: RunnerStack) -> None:
    victim = stack.settings.pools()[0][1]
    stack.runner.wait_until(lambda: http_ok(f"{victim.http_url}/v2/health/ready"), timeout=120)
    time.sleep(2)  # one passing health check puts it back
    ids = set()
    for _ in range(12):
        request_id = os.urandom(8).hex()
        reply = requests.post(stack.url + "/generate", json=BODY, timeout=30,
                              headers={"X-API-Key": stack.key, "x-request-id": request_id})
        assert reply.status_code == 200 and reply.headers["x-llm-pool"] == "primary"
        ids.add(request_id)
    assert f"127.0.0.1:{victim.http_port}" in served_by(stack, ids)


def test_with_every_primary_down_the_marked_fallback_answers(stack: RunnerStack) -> None:
    primaries = [r for pool, r in stack.settings.pools() if pool == "primary"]
    fallback = [r for pool, r in stack.settings.pools() if pool == "fallback"][0]
    # An OpenAI stream under way on a primary: its replica's death reaches the client as the
    # stream's error event, which the SDK raises.
    sdk = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key, max_retries=0)
    chunks = iter(sdk.completions.create(model=stack.settings.model_dir.name, prompt="The",
                                         max_tokens=256, stream=True,
                                         extra_body={"ignore_eos": True}))
    next(chunks)
    for replica in primaries:
        kill_triton(replica)
    with pytest.raises(openai.APIError) as ended:
        for _ in chunks:
            pass
    print(f"the stream ended with: {ended.value}")
    time.sleep(0.1)  # what was in flight there has ended (502); see the first test
    pools, ids = Counter(), set()
    deadline = time.monotonic() + 4  # the runner restarts them after ~1 s plus their load
    while time.monotonic() < deadline:
        request_id = os.urandom(8).hex()
        reply = requests.post(stack.url + "/generate", json=BODY, timeout=30,
                              headers={"X-API-Key": stack.key, "x-request-id": request_id})
        assert reply.status_code == 200, reply.text
        pools[reply.headers["x-llm-pool"]] += 1
        ids.add(request_id)
    assert pools["fallback"] >= 2, pools
    records = [r for r in access_log(stack) if r["request_id"] in ids]
    assert {r["pool"] for r in records if r["upstream_host"] ==
            f"127.0.0.1:{fallback.http_port}"} == {"fallback"}, records
    # The primaries take the traffic back once they are ready again.
    for replica in primaries:
        stack.runner.wait_until(lambda: http_ok(f"{replica.http_url}/v2/health/ready"),
                                timeout=120)
    time.sleep(2)
    replies = [requests.post(stack.url + "/generate", json=BODY, timeout=30,
                             headers={"X-API-Key": stack.key}) for _ in range(4)]
    assert [r.headers["x-llm-pool"] for r in replies] == ["primary"] * 4


def test_sigterm_drains_one_gateway_while_the_other_keeps_serving(stack: RunnerStack,
                                                                  tmp_path: Path) -> None:
    """A second gateway (`make gateway`) in front of the same replicas, stopped as a
    Kubernetes rollout stops a pod: its stream in flight finishes, it takes nothing new, and
    the first gateway serves throughout."""
    settings = stack.settings
    port = free_port()
    env = {**os.environ, "LLM_RUN_DIR": str(settings.run_dir),
           "LLM_HTTP_PORT": str(settings.http_port), "LLM_GRPC_PORT": str(settings.grpc_port),
           "LLM_METRICS_PORT": str(settings.metrics_port),
           "LLM_OPENAI_PORT": str(settings.openai_port), "LLM_REPLICAS": "2",
           "LLM_FALLBACK_REPLICAS": "1", "LLM_KEYS_DIR": str(stack.gateway.keys_dir),
           "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": str(free_port()),
           "GATEWAY_METRICS_PORT": str(free_port()),
           "LLM_DRAIN_TIMEOUT_S": "30"}
    env.pop("GATEWAY_ACCESS_LOG", None)
    second = ServerProcess("gateway-2", [sys.executable, str(ROOT / "tools" / "serve.py"),
                                         "gateway"], env, tmp_path / "gateway-2.log")
    second.start()
    url = f"http://127.0.0.1:{port}"
    try:
        second.wait_until(lambda: http_ok(url + "/readyz"), timeout=30)
        headers = {"X-API-Key": stack.key}
        # A gRPC stream held open through the second gateway: in flight until closed.
        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.start_stream(callback=lambda result, error: responses.put((result, error)),
                            headers={"x-api-key": stack.key})
        inputs = infer_inputs(grpcclient, "The list", max_tokens=4)
        client.async_stream_infer("llm_stream", inputs)
        result, error = responses.get(timeout=30)
        assert error is None, error
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while http_ok(url + "/readyz"):  # draining: readiness fails first
            assert time.monotonic() < deadline, "the gateway kept reporting ready"
            time.sleep(0.1)
        refused = requests.post(url + "/generate", json=BODY, headers=headers, timeout=10)
        assert refused.status_code == 503, refused.text
        served = requests.post(stack.url + "/generate", json=BODY, headers=headers, timeout=30)
        assert served.status_code == 200, served.text
        # The stream in flight still works, and the gateway waits for it.
        while not responses.empty():
            responses.get()
        client.async_stream_infer("llm_stream", inputs)
        result, error = responses.get(timeout=30)
        assert error is None and result.as_numpy("text_output") is not None, error
        assert second.running()
        client.stop_stream()
        client.close()
        assert second.wait_exit(30) == 0
    finally:
        second.stop(grace=5)
