"""Triton entry point of `llm`: parse each request, hand it to the engine, return at once.

Inputs and outputs: contracts/tensors.py (every tensor carries the batch dimension, e.g.
shape [1, 1] for one request).

`execute()` answers through each request's response sender and returns None, so Triton hands
the next batch over while this one is still generating: the engine admits it between decode
steps. An invalid request fails alone with INVALID_ARG (HTTP 400) naming the input; a full
queue answers UNAVAILABLE. Each error message starts with its type (`contracts.errors`), which
the gateway turns into the status (`overloaded`: HTTP 503). This model owns the engine
(`textgen.engines`: transformers or vLLM, by parameter `engine` / LLM_ENGINE); `llm_stream`
streams tokens from the same engine through `triton_llm.link`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import triton_python_backend_utils as pb_utils

from contracts.errors import ErrorType
from textgen import (ConfigError, GenerationRequest, ModelLoadError, OutputSink, Overloaded,
                     ValidationError, create_engine, load_engine_config, parse_request)
from triton_llm.adapters import manage
from triton_llm.link import EngineLinkServer, LinkRefusal, engine_address
from triton_llm.metrics import TritonMetrics
from triton_llm.triton_io import (FINAL, Logged, UnaryResponder, error_response,
                                  forward_engine_logs, log_request, output_dtypes, read_inputs,
                                  refusal_kind, request_metadata)


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
        self._link = EngineLinkServer(engine_address(os.getppid()), self._submit_streamed,
                                      lambda command: manage(getattr(self._engine, "adapters",
                                                                     None), command))
        facts = self._engine.describe()
        pb_utils.Logger.log_info(f"llm: engine ready {json.dumps(facts)}")
        self._metrics.on_ready(facts)

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
            if generation.n > 1 and not streamed:
                raise ValidationError("n", (
                    f"above 1 needs a stream, whose responses name their sequence (`index`), "
                    f"got {generation.n}: use model llm_stream (generate_stream, gRPC "
                    "streaming) or the OpenAI API"))
            self._engine.submit(generation, Logged(make_sink(generation), meta, streamed,
                                                   generation.n))
        except ValidationError as exc:
            self._metrics.on_reject("invalid")
            log_request(meta, refusal_kind(exc).value, error=str(exc))
            raise
        except Overloaded as exc:
            log_request(meta, ErrorType.OVERLOADED.value, error=str(exc))
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
