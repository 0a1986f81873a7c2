"""Triton entry point of `llm_stream`: `llm`'s generation, streamed as it is produced.

Inputs and outputs: contracts/tensors.py (`STREAM_INPUTS`: `llm`'s plus `stream`, BOOL,
default true).
With `stream` true every response carries the new text in `text_output` and the last one,
flagged final, carries `finish_reason` and the token counts (its `text_output` is empty);
streamed text never repeats the prompt. With `stream` false one response carries the whole
text, as from `llm`. With `n` above 1 (streamed only) every response names its sequence in
`index`, each sequence ends with a response holding its `finish_reason` and counts, and the
last of those is flagged final. An error before the first token is an error response (HTTP 400/503);
after it, the stream ends with an error event (`data: {"error": ...}` under HTTP 200).

The engine and the weights live in `llm`'s process; each request is forwarded over the engine
link (one connection for all of this process's requests) and answered from a forwarding
thread, so `execute()` returns at once. When the client goes away the engine is told and drops
the sequence within one decode step.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import triton_python_backend_utils as pb_utils

from contracts.errors import ErrorType
from textgen.core.validation import ValidationError, parse_choices, parse_flag
from triton_llm.link import EngineClient, LinkRefusal, engine_address
from triton_llm.link_messages import Refused, Text
from triton_llm.triton_io import (FINAL, error_response, final_values, logprobs_values,
                                  output_dtypes, output_error, read_inputs, refusal_kind,
                                  request_metadata, tensors)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        self._dtypes = output_dtypes(model_config)
        params = model_config.get("parameters", {})
        streams = int(params.get("max_streams", {}).get("string_value", "512"))
        self._pool = ThreadPoolExecutor(streams, thread_name_prefix="llm-stream")
        self._engine = EngineClient(engine_address(os.getppid()))

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._pool.submit(self._forward, request)
        return None

    def _forward(self, request: Any) -> None:
        """Relay one request's messages from the engine; always ends with one FINAL."""
        sender = request.get_response_sender()
        try:
            inputs = read_inputs(request)
            stream_tensor = pb_utils.get_input_tensor_by_name(request, "stream")
            streaming = parse_flag("stream", None if stream_tensor is None
                                   else stream_tensor.as_numpy(), True)
            with_logprobs = inputs["logprobs"] is not None
            choices = parse_choices(inputs["n"])
            if choices > 1 and not streaming:
                raise ValidationError("n", f"above 1 needs `stream` true, whose responses name "
                                           f"their sequence (`index`), got {choices}")
            pieces: list[str] = []
            open_choices = choices
            for message in self._engine.stream(inputs, request_metadata(request),
                                               sender.is_cancelled, choices):
                if isinstance(message, Text) and streaming:
                    values = {"text_output": message.delta.encode("utf-8")}
                    if with_logprobs:
                        values.update(logprobs_values(message.logprobs))
                    if choices > 1:
                        values["index"] = message.index
                    sender.send(pb_utils.InferenceResponse(output_tensors=tensors(
                        values, self._dtypes)))
                elif isinstance(message, Text):
                    pieces.append(message.delta)
                elif isinstance(message, Refused):
                    sender.send(error_response(message.kind, message.message), flags=FINAL)
                else:  # one sequence ended; the request ends with the last, or a failure
                    open_choices -= 1
                    response = self._final(message.output, inputs, streaming, pieces,
                                           choices > 1)
                    if open_choices and not response.has_error():
                        sender.send(response)
                        continue
                    sender.send(response, flags=FINAL)
                    return  # the others of a failed request are cancelled on the way out
        except ValidationError as exc:
            sender.send(error_response(refusal_kind(exc), str(exc)), flags=FINAL)
        except LinkRefusal as exc:
            sender.send(error_response(exc.kind, str(exc)), flags=FINAL)
        except Exception as exc:  # never leave a request without its final response
            pb_utils.Logger.log_error(f"llm_stream: forwarding failed: {exc!r}")
            sender.send(error_response(ErrorType.INTERNAL, f"streaming failed: {exc}"),
                        flags=FINAL)

    def _final(self, output: Any, inputs: dict[str, Any], streaming: bool,
               pieces: list[str], indexed: bool) -> Any:
        failure = output_error(output)
        if failure:
            return error_response(*failure)
        if streaming:
            text = ""
        else:
            exclude = parse_flag("exclude_input_in_output", inputs["exclude_input_in_output"],
                                 False)
            prompt = bytes(inputs["text_input"].reshape(-1)[0]).decode("utf-8")
            text = ("" if exclude else prompt) + "".join(pieces)
        return pb_utils.InferenceResponse(output_tensors=tensors(
            final_values(output, text, streamed=streaming, indexed=indexed), self._dtypes))

    def finalize(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
