"""Run the OpenAI-compatible frontend: `python -m openai_frontend --help`.

Started by `make serve` beside Triton and the gateway, and by its own container in compose.
It listens on loopback (or the internal network) only: the gateway is its one client.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import uvicorn

from .app import OpenAIFrontend, create_app
from .served_model import ServedModel

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m openai_frontend", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default=env.get("LLM_OPENAI_HOST", "127.0.0.1"),
                        help="address to bind (env LLM_OPENAI_HOST); never a public one")
    parser.add_argument("--port", type=int, default=int(env.get("LLM_OPENAI_PORT", "8003")),
                        help="port (env LLM_OPENAI_PORT)")
    parser.add_argument("--metrics-port", type=int,
                        default=int(env.get("LLM_OPENAI_METRICS_PORT", "8004")),
                        help="port of /metrics for Prometheus, on the same address (env "
                             "LLM_OPENAI_METRICS_PORT); its own, so that admitting Prometheus "
                             "does not admit it to the API")
    parser.add_argument("--triton", default=env.get("LLM_TRITON_GRPC", "127.0.0.1:8001"),
                        help="Triton's gRPC address (env LLM_TRITON_GRPC)")
    parser.add_argument("--triton-metrics", default=env.get("LLM_TRITON_METRICS"),
                        help="Triton's metrics URL, where /v1/models reads what the engine "
                             "chose at load (env LLM_TRITON_METRICS; default: the gRPC "
                             "address's host, port 8002)")
    parser.add_argument("--model-dir", type=Path,
                        default=Path(env.get("LLM_MODEL_DIR", str(ROOT / "demo_model"))),
                        help="the served model's directory, for its tokenizer and chat "
                             "template (env LLM_MODEL_DIR)")
    parser.add_argument("--served-model-name", default=env.get("LLM_SERVED_MODEL_NAME", ""),
                        help="the model id clients use (env LLM_SERVED_MODEL_NAME; default: "
                             "the model directory's name)")
    parser.add_argument("--adapter-peers", default=env.get("LLM_ADAPTER_PEERS", ""),
                        help="Triton gRPC addresses (host:port,...) of this pool's other "
                             "replicas, which an adapter load or unload sent here is passed on "
                             "to (env LLM_ADAPTER_PEERS; docs/adapters.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model = ServedModel.load(args.model_dir.resolve(), args.served_model_name)
    metrics = args.triton_metrics or f"http://{args.triton.rsplit(':', 1)[0]}:8002/metrics"
    peers = tuple(p.strip() for p in args.adapter_peers.split(",") if p.strip())
    frontend = OpenAIFrontend(model, args.triton, metrics, peers)
    app = create_app(frontend)
    frontend.metrics.serve(args.host, args.metrics_port)
    print(f"openai_frontend: serving `{model.id}` on http://{args.host}:{args.port}/v1 "
          f"(Triton gRPC {args.triton}; metrics :{args.metrics_port})", flush=True)
    # uvicorn finishes requests in flight on SIGTERM, then raises the signal again with the
    # handler it found: an ignoring one lets a graceful stop end with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # No access log here: the gateway writes it (ids and timings only, never text).
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
