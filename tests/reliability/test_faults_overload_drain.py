"""The service's worst days, with real processes: crashes, overload, a slow start and a drain.

Each test starts the service as `make serve` does (tools/serve.py supervising Triton and
Envoy) and appends its figures to .run/reports/reliability.jsonl for the README.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests

from tests.harness import assert_error_contract, sample, scrape
from tools import runtime
from tools.processes import ROOT, RunnerStack, http_ok, runner_stack

REPORT = ROOT / ".run" / "reports" / "reliability.jsonl"
# The most a request may ask for (the demo model's max_tokens limit).
LONG_TOKENS = 500  # the demo model's 512-token context, less the prompt
LONG = {"text_input": "The", "max_tokens": LONG_TOKENS, "ignore_eos": True}


def report(name: str, **figures: Any) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(json.dumps({"test": name, "at": time.strftime("%FT%TZ", time.gmtime()),
                              **figures}) + "\n")
    print(f"\n{name}: {figures}")


@dataclass
class Outcome:
    """How one request ended."""

    status: int = 0
    tokens: int = 0
    error: str = ""
    seconds: float = 0.0
    events: int = 0
    ended_at: float = 0.0  # time.monotonic()


def stream(stack: RunnerStack, body: dict[str, Any], started: Optional[threading.Event] = None,
           timeout: float = 120) -> Outcome:
    """One SSE generation through the gateway; never raises."""
    outcome, begin = Outcome(), time.monotonic()
    try:
        with requests.post(stack.url + "/generate_stream", json=body, stream=True,
                           timeout=timeout, headers={"X-API-Key": stack.key}) as reply:
            outcome.status = reply.status_code
            for line in reply.iter_lines(decode_unicode=True):
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                outcome.events += 1
                if started is not None:
                    started.set()
                if "error" in event:
                    outcome.error = str(event["error"])
                outcome.tokens = event.get("num_output_tokens", outcome.tokens)
    except (requests.RequestException, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.ended_at = time.monotonic()
    outcome.seconds = outcome.ended_at - begin
    return outcome


def generate(stack: RunnerStack, body: dict[str, Any], timeout: float = 120
             ) -> tuple[Optional[requests.Response], float]:
    begin = time.monotonic()
    try:
        reply = requests.post(stack.url + "/generate", json=body, timeout=timeout,
                              headers={"X-API-Key": stack.key})
    except requests.RequestException:
        reply = None
    return reply, time.monotonic() - begin


def assert_json_503(reply: requests.Response) -> None:
    """A refusal the client can act on: the error contract's 503 with Retry-After."""
    body = assert_error_contract(reply, 503)
    assert body["type"] in ("unavailable", "overloaded"), body
    assert "retry-after" in reply.headers


def wait_for_recovery(stack: RunnerStack, since: float, limit: float = 90) -> float:
    """Poll with new requests until one succeeds; each failure must be a fast JSON 503, or
    the contract's 502 for a request that reached Triton just as the runner killed it to
    restart it."""
    while True:
        reply, seconds = generate(stack, {"text_input": "The", "max_tokens": 2}, timeout=10)
        if reply is not None and reply.status_code == 200:
            return time.monotonic() - since
        assert reply is not None, "the gateway itself stopped answering"
        if reply.status_code == 502:
            assert_error_contract(reply, 502, "bad_gateway")
        else:
            assert_json_503(reply)
        assert seconds < 1.0, f"a refusal took {seconds:.2f} s"
        assert time.monotonic() - since < limit, "no recovery"
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the model stubs), in MB."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _parent(p) == pid]
    total = 0
    for each in pids:
        try:
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1])
        except OSError:
            pass
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _parent(proc: Path) -> int:
    try:
        stat = (proc / "stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError):
        return -1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerStack]:
    """One supervised stack for the crash and overload tests, with a small engine so that
    overload is reachable on 2 cores."""
    service = runner_stack(tmp_path_factory.mktemp("faults"), LLM_MAX_NUM_SEQS="8",
                           LLM_MAX_QUEUE_SIZE="16", LLM_QUEUE_TIMEOUT_S="5",
                           LLM_DRAIN_TIMEOUT_S="5")
    try:
        yield service
    finally:
        service.runner.stop(grace=60)


def _crash_under_load(stack: RunnerStack, kill: Any, name: str) -> None:
    """Kill while 8 long streams run: every stream still running when the kill landed ends
    with an error, never as if complete. (The demo model is fast enough that a stream may
    finish before the kill lands; such a stream was not in flight and is not counted.)"""
    started = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(stream, stack, LONG, started, 60) for _ in range(8)]
        assert started.wait(30)
        killed_at = time.monotonic()
        kill()
        landed = time.monotonic()
        outcomes = [s.result(timeout=60) for s in streams]
    finished_before = [o for o in outcomes if o.ended_at < landed and not o.error
                       and o.status == 200 and o.tokens == LONG_TOKENS]
    in_flight = [o for o in outcomes if o not in finished_before]
    assert in_flight, "every stream finished before the kill: nothing was in flight"
    ended_after = max(o.seconds for o in in_flight)
    for outcome in in_flight:
        assert outcome.error or outcome.status != 200, outcome  # ended with an error ...
        assert outcome.tokens < LONG_TOKENS  # ... rather than pretending to be complete
    recovery = wait_for_recovery(stack, killed_at)
    report(name, in_flight=len(in_flight), in_flight_ended_with_error=len(in_flight),
           slowest_in_flight_end_s=round(ended_after, 2), recovery_s=round(recovery, 1))


def _engine_process(stack: RunnerStack) -> int:
    """The pid of the `llm` model's process (the engine) of the stack's Triton."""
    alive, _ = runtime.python_stubs(stack.triton_pid())
    llm = [pid for pid in alive if b"/llm/1/model.py" in
           Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert llm, "no stub of the llm model"
    return llm[0]


def test_killed_model_process_fails_in_flight_requests_and_recovers(stack):
    _crash_under_load(stack, lambda: os.kill(_engine_process(stack), signal.SIGKILL),
                      "model process killed under load")


def test_killed_triton_fails_in_flight_requests_and_recovers(stack):
    engine = _engine_process(stack)
    _crash_under_load(stack, lambda: os.kill(stack.triton_pid(), signal.SIGKILL),
                      "tritonserver killed under load")
    # The dead Triton's model processes must not linger holding the model: a stub whose
    # Triton died under load can hang in the stub's own code, and only the supervisor's kill
    # of the process group ends it.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{engine}").exists():
        assert time.monotonic() < deadline, f"the engine's process {engine} outlived Triton"
        time.sleep(0.2)


def test_offered_load_at_four_times_capacity_is_refused_fast_and_admitted_bounded(stack):
    body = {"text_input": "The list", "max_tokens": 32, "ignore_eos": True}
    with ThreadPoolExecutor(8) as pool:  # capacity: closed loop at the engine's batch size
        list(pool.map(lambda _: generate(stack, body), range(8)))  # warm up after a restart
        begin = time.monotonic()
        done = list(pool.map(lambda _: generate(stack, body)[0], range(48)))
        capacity = len(done) / (time.monotonic() - begin)
    assert all(r is not None and r.status_code == 200 for r in done)

    rss_before = rss_mb(stack.triton_pid())
    offered, seconds = 4 * capacity, 10.0
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    samples: dict[int, str] = {}
    refusals: list[requests.Response] = []

    def one() -> None:
        reply, took = generate(stack, body, timeout=60)
        status = reply.status_code if reply is not None else 0
        with lock:
            results.append((status, took))
            if reply is not None and status != 200:
                samples.setdefault(status, reply.text[:300])
                refusals.append(reply)

    with ThreadPoolExecutor(256) as pool:
        start = time.monotonic()
        for i in range(int(offered * seconds)):
            time.sleep(max(0.0, start + i / offered - time.monotonic()))
            pool.submit(one)
    admitted = sorted(t for s, t in results if s == 200)
    refused = sorted(t for s, t in results if s in (429, 503))
    others = dict(Counter(s for s, _ in results if s not in (200, 429, 503)))
    rss_after = rss_mb(stack.triton_pid())
    refusal_types = Counter(assert_error_contract(reply, reply.status_code)["type"]
                            for reply in refusals if reply.status_code in (429, 503))
    figures = dict(
        capacity_rps=round(capacity, 1), offered_rps=round(offered, 1),
        requests=len(results), admitted=len(admitted), refused=len(refused),
        other_statuses=others,
        admitted_p50_s=round(statistics.median(admitted), 2) if admitted else None,
        admitted_p99_s=round(admitted[int(0.99 * (len(admitted) - 1))], 2) if admitted else None,
        refused_p95_s=round(refused[int(0.95 * (len(refused) - 1))], 3) if refused else None,
        rss_before_mb=round(rss_before), rss_after_mb=round(rss_after), bodies=samples,
        refusal_types=dict(+refusal_types))
    report("overload at 4x capacity", **figures)
    assert not others, figures
    assert refused, f"nothing was refused at 4x capacity: {figures}"
    assert refusal_types["overloaded"], figures  # the model's full queue, typed as such
    assert figures["refused_p95_s"] < 1.5, figures  # refusals are quick (2 busy cores)
    assert figures["admitted_p99_s"] < 5 + 15, figures  # queue timeout + a generation
    assert rss_after < rss_before + 200, figures  # memory stays bounded
    assert http_ok(stack.url + "/readyz")  # nothing crashed


def test_unreachable_triton_gives_a_fast_json_503(triton, tmp_path):
    from tools.processes import free_port, gateway_process

    process, settings = gateway_process(triton, name="envoy-nowhere",
                                        LLM_HTTP_PORT=str(free_port()))
    process.start()
    try:
        url = f"http://127.0.0.1:{settings.port}"
        process.wait_until(lambda: http_ok(url + "/healthz"), timeout=30)
        key, _ = runtime.KeyStore(settings.keys_dir).issue("nowhere", "premium")
        time.sleep(0.5)
        begin = time.monotonic()
        reply = requests.post(url + "/generate", json={"text_input": "x"}, timeout=10,
                              headers={"X-API-Key": key})
        assert time.monotonic() - begin < 1.0
        assert_json_503(reply)
        assert requests.get(url + "/readyz", timeout=5).status_code == 503
    finally:
        process.stop()


def test_slow_start_refuses_with_503_then_drain_loses_nothing(tmp_path):
    """Start (refusals while the model loads), then SIGTERM under load: readiness turns
    false, new requests get 503, every request in flight completes, the runner exits."""
    from tools.processes import ServerProcess, free_port

    env = {**os.environ, "LLM_RUN_DIR": str(tmp_path), "LLM_HTTP_PORT": str(free_port()),
           "LLM_GRPC_PORT": str(free_port()), "LLM_METRICS_PORT": str(free_port()),
           "LLM_OPENAI_PORT": str(free_port()),
           "GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port()),
           "GATEWAY_METRICS_PORT": str(free_port()),
           "LLM_KEYS_DIR": str(tmp_path / "keys"), "LLM_DRAIN_TIMEOUT_S": "60",
           # One sequence at a time: the 24 requests in flight then take seconds (~0.08 s
           # each at 0.3 ms a token), so the drain is surely still running when the refusal
           # is checked.
           "LLM_MAX_NUM_SEQS": "1"}
    key, _ = runtime.KeyStore(tmp_path / "keys").issue("drain", "premium")
    runtime.KeyStore(tmp_path / "keys").issue("dev", "standard")
    runner = ServerProcess("runner", [os.sys.executable, str(ROOT / "tools" / "serve.py"),
                                      "serve"], env, tmp_path / "runner.log")
    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    stack = RunnerStack(runner, runtime.Settings.from_env(env),
                        runtime.gateway_settings(runtime.Settings.from_env(env), env), key)
    runner.start()
    try:
        loading_refusals = 0
        runner.wait_until(lambda: http_ok(url + "/healthz"), timeout=60)
        while True:  # the gateway is up, the model still loading
            reply, seconds = generate(stack, {"text_input": "x", "max_tokens": 1}, timeout=10)
            if reply is not None and reply.status_code == 200:
                break
            assert reply is not None and seconds < 1.0
            assert_json_503(reply)
            loading_refusals += 1
            time.sleep(0.2)
        # The runner says "ready" (and `make up` returns) only once the OpenAI API answers
        # too: its frontend connects to Triton a moment after Triton serves.
        runner.wait_until(lambda: "the model is ready" in runner.log.read_text(), timeout=60)
        models = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                              timeout=10)
        assert models.status_code == 200, models.text

        started = threading.Event()
        with ThreadPoolExecutor(24) as pool:
            streams = [pool.submit(stream, stack, LONG, started) for _ in range(18)]
            unary = [pool.submit(generate, stack, LONG) for _ in range(6)]
            assert started.wait(30)
            time.sleep(0.2)
            stopped_at = time.monotonic()
            runner.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while http_ok(url + "/readyz") and time.monotonic() < deadline:
                time.sleep(0.05)
            not_ready_after = time.monotonic() - stopped_at
            draining = scrape(f"http://127.0.0.1:{env['GATEWAY_METRICS_PORT']}/metrics")
            refused, _ = generate(stack, {"text_input": "x", "max_tokens": 1}, timeout=10)
            outcomes = [s.result(timeout=120) for s in streams]
            replies = [u.result(timeout=120)[0] for u in unary]
        exit_code = runner.wait_exit(timeout=120)
        exited_after = time.monotonic() - stopped_at
        lost = sum(1 for o in outcomes if o.tokens != LONG_TOKENS or o.error) + sum(
            1 for r in replies if r is None or r.status_code != 200
            or r.json()["num_output_tokens"] != LONG_TOKENS)
        report("graceful drain", loading_refusals=loading_refusals,
               not_ready_after_s=round(not_ready_after, 2),
               in_flight=len(outcomes) + len(replies),
               lost=lost, exited_after_s=round(exited_after, 1), exit_code=exit_code)
        assert not_ready_after < 1.0
        assert sample(draining, "llm_gateway_draining") == 1  # the drain is a metric too
        assert refused is not None
        assert_json_503(refused)
        assert lost == 0, (outcomes, [r.status_code if r else None for r in replies])
        assert exit_code == 0
    finally:
        runner.stop(grace=60)
