"""Triton entry point of `llm`: parse each request, hand it to the engine, return at once.

I/O contract (every tensor carries the batch dimension, e.g. shape [1, 1] for one request):

inputs
  text_input               BYTES  [1]   the prompt, UTF-8, not empty
  max_tokens               INT32  [1]   new tokens to generate, 1..max_new_tokens
                                        (default: default_max_tokens in config.pbtxt)
  temperature              FP32   [1]   0 (greedy, the default) .. 2
  top_p                    FP32   [1]   (0, 1], default 1
  top_k                    INT32  [1]   0 (off, the default) .. vocabulary size
  seed                     UINT64 [1]   makes a sampled request reproducible
  stop                     BYTES  [-1]  up to 8 stop strings; the text ends before the first
  exclude_input_in_output  BOOL   [1]   default false: text_output starts with the prompt
  ignore_eos               BOOL   [1]   default false: keep going past end-of-sequence
outputs
  text_output              BYTES  [1]   the completion (after the prompt unless excluded)
  finish_reason            BYTES  [1]   "stop" (EOS or a stop string) or "length"
  num_input_tokens         INT32  [1]   prompt tokens
  num_output_tokens        INT32  [1]   generated tokens

`execute()` answers through each request's response sender and returns None, so Triton hands
the next batch over while this one is still generating: the engine admits it between decode
steps. An invalid request fails alone with INVALID_ARG (HTTP 400) naming the input; a full
queue answers UNAVAILABLE. Each error message starts with its type (`textgen.errors`), which
the gateway turns into the status (`overloaded`: HTTP 503). This model owns the engine
(`textgen.engines`: transformers or vLLM, by parameter `engine` / LLM_ENGINE); `llm_stream`
streams tokens from the same engine through `textgen.link`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import triton_python_backend_utils as pb_utils

from textgen.admission import Overloaded
from textgen.config import ConfigError, load_engine_config
from textgen.engines import create_engine
from textgen.errors import ErrorKind
from textgen.link import EngineLinkServer, LinkRefusal, engine_address
from textgen.loading import ModelLoadError
from textgen.outputs import OutputSink
from textgen.validation import GenerationRequest, ValidationError, parse_request
from triton_llm.metrics import TritonMetrics
from triton_llm.triton_io import (FINAL, Logged, UnaryResponder, error_response,
                                  forward_engine_logs, log_request, output_dtypes, read_inputs,
                                  request_metadata)


def refusal_kind(exc: Exception) -> ErrorKind:
    """A request refused before it ran: the client's mistake, or no capacity for it now."""
    return ErrorKind.INVALID_REQUEST if isinstance(exc, ValidationError) else ErrorKind.OVERLOADED


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        self._dtypes = output_dtypes(model_config)
        self._metrics = TritonMetrics(args["model_name"])
        forward_engine_logs()
        try:
            config = load_engine_config(model_config, Path(args["model_repository"]))
            self._engine = create_engine(config, self._metrics)
        except (ConfigError, ModelLoadError) as exc:
            raise pb_utils.TritonModelException(f"llm: {exc}") from exc
        self._link = EngineLinkServer(engine_address(os.getppid()), self._submit_streamed)
        pb_utils.Logger.log_info(f"llm: engine ready {json.dumps(self._engine.describe())}")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            def respond(generation: GenerationRequest, request: Any = request) -> OutputSink:
                prefix = "" if generation.exclude_input_in_output else generation.prompt
                return UnaryResponder(request, prefix, self._dtypes)

            try:
                self._submit(read_inputs(request), request_metadata(request), respond,
                             streamed=False)
            except (ValidationError, Overloaded) as exc:
                request.get_response_sender().send(error_response(refusal_kind(exc), str(exc)),
                                                   flags=FINAL)
        return None

    def _submit(self, inputs: Mapping[str, Any], meta: Mapping[str, str],
                make_sink: Callable[[GenerationRequest], OutputSink], streamed: bool) -> None:
        """Validate and queue one request; a refusal is logged and counted, then re-raised."""
        try:
            generation = parse_request(inputs, self._engine.limits)
            self._engine.submit(generation, Logged(make_sink(generation), meta, streamed))
        except ValidationError as exc:
            self._metrics.on_reject("invalid")
            log_request(meta, ErrorKind.INVALID_REQUEST.value, error=str(exc))
            raise
        except Overloaded as exc:
            log_request(meta, ErrorKind.OVERLOADED.value, error=str(exc))
            raise

    def _submit_streamed(self, inputs: Mapping[str, Any], meta: Mapping[str, str],
                         sink: OutputSink) -> None:
        """Requests from `llm_stream`, on the link's reader thread."""
        try:
            self._submit(inputs, meta, lambda _generation: sink, streamed=True)
        except (ValidationError, Overloaded) as exc:
            raise LinkRefusal(refusal_kind(exc), str(exc)) from exc

    def finalize(self) -> None:
        """Triton calls this after in-flight requests drained; finish what is left."""
        self._link.close()
        self._engine.shutdown()
        self._metrics.close()
