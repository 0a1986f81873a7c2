#!/usr/bin/env python3
"""Generate text with the LLM service through its gateway.

Examples:
  export LLM_API_KEY=llmk_...                       # printed by `make serve` / `make key`
  python -m clients.llm_cli "The list"              # HTTP, whole answer at once
  python -m clients.llm_cli --stream "The list"     # HTTP server-sent events, tokens as made
  python -m clients.llm_cli --grpc --stream "The list" --max-tokens 64 --temperature 0.7

Errors are printed with their HTTP status and error type (or gRPC code) and the request id
to quote when reporting a problem; the exit status is 1 for a rejected request and 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from typing import Any, Iterator, Optional

import numpy as np
import requests

DEFAULT_URL = os.environ.get("LLM_URL", "http://127.0.0.1:8080")
UNARY_MODEL = "llm"
STREAM_MODEL = "llm_stream"  # the decoupled entry point that streams tokens over gRPC


class RequestFailed(Exception):
    def __init__(self, status: str, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.request_id = status, message, request_id

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"error {self.status}: {self.message}{rid}"


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The generation parameters the user set, under the model's input names."""
    params: dict[str, Any] = {"text_input": args.prompt, "max_tokens": args.max_tokens,
                              "exclude_input_in_output": not args.echo}
    for name in ("temperature", "top_p", "top_k", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.stop:
        params["stop"] = args.stop
    return params


def _http_error(reply: requests.Response) -> RequestFailed:
    """An error answer in the gateway's contract: `error` already ends with the request id."""
    try:
        body = reply.json()
        return RequestFailed(f"{reply.status_code} {body['type']}", body["error"])
    except (ValueError, KeyError, TypeError):  # not from the gateway (a proxy in between?)
        return RequestFailed(str(reply.status_code), reply.text.strip() or reply.reason,
                             reply.headers.get("x-request-id", ""))


def http_generate(url: str, key: str, params: dict[str, Any], stream: bool,
                  timeout: float) -> Iterator[str]:
    """Yield text pieces from /generate (one piece) or /generate_stream (many)."""
    path = "/generate_stream" if stream else "/generate"
    headers = {"X-API-Key": key}
    with requests.post(url + path, json=params, headers=headers, stream=stream,
                       timeout=timeout) as reply:
        if reply.status_code != 200:
            raise _http_error(reply)
        request_id = reply.headers.get("x-request-id", "")
        if not stream:
            yield reply.json()["text_output"]
            return
        for line in reply.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:  # an error after the stream started (HTTP status was 200)
                raise RequestFailed("stream", str(event["error"]), request_id)
            yield event.get("text_output", "")


def _grpc_inputs(module: Any, params: dict[str, Any]) -> list[Any]:
    from tritonclient.utils import np_to_triton_dtype

    dtypes = {"text_input": object, "max_tokens": np.int32, "temperature": np.float32,
              "top_p": np.float32, "top_k": np.int32, "seed": np.uint64,
              "exclude_input_in_output": np.bool_, "stop": object}
    inputs = []
    for name, value in params.items():
        row = [v.encode() for v in value] if name == "stop" else [
            value.encode() if isinstance(value, str) else value]
        array = np.array([row], dtype=dtypes[name])
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def grpc_generate(url: str, key: str, params: dict[str, Any], stream: bool,
                  timeout: float) -> Iterator[str]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    target = url.split("://", 1)[-1]
    client = grpcclient.InferenceServerClient(target)
    headers = {"x-api-key": key}  # gRPC metadata keys must be lower-case
    try:
        if not stream:
            result = client.infer(UNARY_MODEL, _grpc_inputs(grpcclient, params),
                                  headers=headers, client_timeout=timeout)
            yield result.as_numpy("text_output")[0][0].decode()
            return
        events: "queue.Queue[tuple[Optional[Any], Optional[Exception]]]" = queue.Queue()
        client.start_stream(callback=lambda result, error: events.put((result, error)),
                            headers=headers, stream_timeout=timeout)
        client.async_stream_infer(STREAM_MODEL, _grpc_inputs(grpcclient, params),
                                  enable_empty_final_response=True)
        while True:
            result, error = events.get(timeout=timeout)
            if error is not None:
                raise error
            response = result.get_response()
            text = result.as_numpy("text_output")
            if text is not None and text.size:
                yield text.reshape(-1)[0].decode()
            if response.parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
    except InferenceServerException as exc:
        raise RequestFailed(str(exc.status()).replace("StatusCode.", ""),
                            exc.message() or str(exc)) from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="gateway address (env LLM_URL)  [%(default)s]")
    parser.add_argument("--key", default=os.environ.get("LLM_API_KEY"),
                        help="API key (default: env LLM_API_KEY)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    parser.add_argument("--max-tokens", type=int, default=64, help="[%(default)s]")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default), up to 2")
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--top-k", dest="top_k", type=int)
    parser.add_argument("--seed", type=int, help="make sampling reproducible")
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--echo", action="store_true", help="print the prompt too")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds [%(default)s]")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("no API key: pass --key or export LLM_API_KEY")

    generate = grpc_generate if args.grpc else http_generate
    try:
        for piece in generate(args.url, args.key, parameters(args), args.stream, args.timeout):
            print(piece, end="", flush=True)
        print()
    except RequestFailed as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    except (requests.ConnectionError, OSError) as exc:
        print(f"\ncannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
