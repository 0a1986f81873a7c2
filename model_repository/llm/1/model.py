"""Triton entry point of `llm`: parse each request, hand it to the engine, answer.

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

An invalid request fails alone with INVALID_ARG (HTTP 400) and a message naming the input;
the other requests of its batch are unaffected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from textgen.config import ConfigError, load_engine_config
from textgen.engine import Engine
from textgen.loading import ModelLoadError
from textgen.validation import ValidationError, parse_request
from triton_io import (UnaryResponse, error_response, log_request, output_dtypes, read_inputs,
                       request_metadata)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        self._dtypes = output_dtypes(model_config)
        try:
            config = load_engine_config(model_config, Path(args["model_repository"]))
            self._engine = Engine(config)
        except (ConfigError, ModelLoadError) as exc:
            raise pb_utils.TritonModelException(f"llm: {exc}") from exc
        pb_utils.Logger.log_info(f"llm: engine ready {json.dumps(self._engine.describe())}")

    def execute(self, requests: list[Any]) -> list[Any]:
        pending = [self._submit(request) for request in requests]
        return [p.wait() if isinstance(p, UnaryResponse) else p for p in pending]

    def _submit(self, request: Any) -> Any:
        """Queue one request; a request that fails validation is answered on its own."""
        meta = request_metadata(request)
        try:
            parsed = read_inputs(request)
            generation = parse_request(parsed, self._engine.limits)
            sink = UnaryResponse(generation.prompt, not generation.exclude_input_in_output,
                                 self._dtypes, meta)
            self._engine.submit(generation, sink)
            return sink
        except (ValidationError, RuntimeError) as exc:
            log_request(meta, "invalid" if isinstance(exc, ValidationError) else "error",
                        error=str(exc))
            return error_response(exc)

    def finalize(self) -> None:
        self._engine.shutdown()
