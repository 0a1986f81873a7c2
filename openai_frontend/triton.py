"""Generation through Triton: one gRPC stream per request to the decoupled `llm_stream` model.

Why gRPC streaming: it is the one Triton transport that streams a decoupled model's responses
and propagates cancellation: when a client disconnects the call is cancelled, Triton marks the
request cancelled and the engine drops the sequence within one decode step. All requests share
one HTTP/2 connection. Per token this reads the raw output bytes directly, without building
numpy arrays.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Optional, Sequence, Union

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from contracts import adapters as adapter_commands, logprobs as logprobs_wire
from contracts.errors import ErrorType
from contracts.logprobs import TokenLogprobs
from contracts.tensors import STREAM_INPUTS, TIMINGS

from .errors import OpenAIError, from_model
from .protocol import Sampling

STREAM_MODEL = "llm_stream"
# Headers the gateway sets that the model's log line needs (Triton forwards them as request
# parameters); the frontend never sees API keys.
# OpenAI parameter names for the model's input names, so errors name what the client sent.
OPENAI_NAMES = {"text_input": "prompt", "input_ids": "prompt"}


@dataclass(frozen=True)
class Piece:
    """New text, and its tokens' logprobs when the request asked for them."""

    text: str
    logprobs: tuple[TokenLogprobs, ...] = ()
    index: int = 0  # which of the request's n sequences


@dataclass(frozen=True)
class Final:
    """The last event of a generation, with the model's own counts (and the prompt's
    logprobs when the request asked for them)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: Optional[tuple[Optional[TokenLogprobs], ...]] = None
    index: int = 0  # which of the request's n sequences ended
    # Where its time went (contracts/tensors.py's TIMINGS, in ms), passed on as `llm_timing`.
    timing_ms: dict[str, float] = field(default_factory=dict)


Event = Union[Piece, Final]  # new text, or a sequence's end


def _tensor(name: str, values: list[Any]) -> grpcclient.InferInput:
    """One input of `llm_stream` with its contract's datatype (contracts/tensors.py)."""
    spec = STREAM_INPUTS[name]
    if spec.datatype == "INT32":  # out of range is the model's to refuse, by name
        values = [min(value, 2**31 - 1) for value in values]
    elif spec.datatype == "BYTES":
        values = [value.encode() for value in values]
    array = np.array([values], dtype=spec.numpy_dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), spec.datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def model_inputs(prompt: str, sampling: Sampling, stream: bool,
                 prompt_ids: Sequence[int] = ()) -> list[grpcclient.InferInput]:
    """The `llm_stream` tensors for one request (batch dimension included): the prompt (and
    its token ids when the client sent those), and every sampling field that is set, under
    its input name."""
    values: dict[str, list[Any]] = {"text_input": [prompt], "exclude_input_in_output": [True],
                                    "stream": [stream]}
    if prompt_ids:
        values["input_ids"] = list(prompt_ids)
    for name, value in vars(sampling).items():
        if name == "stop":
            if value:
                values[name] = list(value)
        elif value is not None and value is not False:
            values[name] = [value]
    return [_tensor(name, row) for name, row in values.items()]


def _read(result: Any) -> tuple[Piece, Optional[Final]]:
    """The new text (and logprobs) and, on the last response, the end; read from the raw
    bytes (one element per output: BYTES are a 4-byte length then the bytes, INT32 four bytes,
    little-endian, FP32 likewise)."""
    response = result.get_response()
    raw = {out.name: data for out, data in zip(response.outputs, response.raw_output_contents)}
    text = raw["text_output"][4:].decode("utf-8") if "text_output" in raw else ""
    logprobs = ()
    if "token_logprobs" in raw:
        logprobs = tuple(p for p in logprobs_wire.loads(raw["token_logprobs"][4:].decode())
                         if p is not None)
    index = int.from_bytes(raw["index"][:4], "little") if "index" in raw else 0
    piece = Piece(text, logprobs, index)
    if "finish_reason" not in raw:
        return piece, None
    prompt = raw.get("prompt_token_logprobs")
    return piece, Final(raw["finish_reason"][4:].decode(),
                        int.from_bytes(raw["num_input_tokens"][:4], "little"),
                        int.from_bytes(raw["num_output_tokens"][:4], "little"),
                        None if prompt is None else tuple(logprobs_wire.loads(prompt[4:].decode())),
                        index, {name: round(struct.unpack("<f", raw[name][:4])[0], 2)
                                for name in TIMINGS if name in raw})


class Triton:
    """Generation on Triton's gRPC endpoint; create inside the server's event loop."""

    def __init__(self, url: str) -> None:
        # Round robin over every address the name resolves to: in compose, `triton` scaled
        # to several replicas is one name with several addresses; a replica that stops
        # answering is skipped until it reconnects. (Beside its own Triton, as in a
        # Kubernetes pod, there is one address and this changes nothing.)
        self._client = grpcaio.InferenceServerClient(url, channel_args=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_send_message_length", grpcaio.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcaio.MAX_GRPC_MESSAGE_SIZE)])

    async def adapters(self, action: str = "list", name: str = "", path: str = "",
                       headers: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """An adapter command on this frontend's Triton (manage_adapters)."""
        return await manage_adapters(self._client, action, name, path, headers)

    async def ready(self) -> bool:
        try:
            return await self._client.is_model_ready(STREAM_MODEL)
        except (InferenceServerException, grpc.RpcError):
            return False

    async def generate(self, prompt: str, sampling: Sampling, stream: bool,
                       headers: Mapping[str, str],
                       prompt_ids: Sequence[int] = ()) -> AsyncIterator[Event]:
        """Pieces of text, and a `Final` as each of the request's `sampling.n` sequences
        ends; raises OpenAIError. Closing the iterator early (the client left) cancels the
        generation. More than one sequence is always streamed from Triton."""
        done = asyncio.Event()
        choices = sampling.n or 1
        stream = stream or choices > 1
        request = {"model_name": STREAM_MODEL,
                   "inputs": model_inputs(prompt, sampling, stream, prompt_ids)}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await done.wait()  # keep the stream open until the last response

        call = self._client.stream_infer(requests(), headers=dict(headers))
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    raise from_model(error.message(), OPENAI_NAMES)
                piece, final = _read(result)
                if piece.text or piece.logprobs:
                    yield piece
                if final is not None:
                    choices -= 1
                    finished = not choices
                    yield final
                    if finished:
                        return
            raise OpenAIError(ErrorType.UNAVAILABLE, "the model server ended the stream "
                              "before the generation finished; retry later")
        except grpc.RpcError as exc:
            raise OpenAIError(ErrorType.UNAVAILABLE, "the model server is unavailable or "
                              f"restarting ({_code(exc)}); retry later") from None
        finally:
            done.set()
            if not finished:
                call.cancel()  # the client left or the call failed: stop the generation


async def manage_adapters(client: grpcaio.InferenceServerClient, action: str, name: str = "",
                          path: str = "", headers: Optional[Mapping[str, str]] = None
                          ) -> dict[str, Any]:
    """One adapter command on a replica's `llm_adapters` model (contracts/adapters.py): the
    served list after it, as the model's JSON; raises OpenAIError."""
    values = {"action": action, "name": name, "path": path}
    inputs = []
    for input_name, value in values.items():
        if value or input_name == "action":
            tensor = grpcclient.InferInput(input_name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
            inputs.append(tensor)
    try:
        result = await client.infer(adapter_commands.MODEL, inputs, headers=dict(headers or {}))
    except InferenceServerException as exc:
        raise from_model(exc.message() or str(exc), {"name": "lora_name",
                                                     "path": "lora_path"}) from None
    except grpc.RpcError as exc:
        raise OpenAIError(ErrorType.UNAVAILABLE, "the model server is unavailable or "
                          f"restarting ({_code(exc)}); retry later") from None
    return json.loads(result.as_numpy(next(iter(adapter_commands.OUTPUTS)))[0])


def _code(exc: grpc.RpcError) -> Optional[str]:
    code = getattr(exc, "code", None)
    return code().name if callable(code) else None
