"""Triton entry point of `llm_adapters`: list, load and unload LoRA adapters.

Each command goes over the engine link to `llm`'s process, where the engine and its adapter
registry live (triton_llm/adapters.py carries it out), and the answer is the list served
after it (contracts/adapters.py). Load and unload are refused unless the caller's tier is the
admin tier: the gateway sets the tier from the caller's key and drops any client copy, so an
ordinary key gets 403 however it reaches this model (HTTP, gRPC or the OpenAI routes).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from contracts.adapters import ADMIN_TIER, OUTPUTS, AdapterAction
from contracts.errors import ErrorType
from triton_llm.adapters import adapters_json
from triton_llm.link import EngineClient, LinkRefusal, engine_address
from triton_llm.triton_io import error_response, log_request, request_metadata

EVENT = "llm_adapter_command"  # its log lines (metadata only, as every request's)


def _text(request: Any, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    return bytes(np.asarray(tensor.as_numpy()).reshape(-1)[0]).decode("utf-8", "replace").strip()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        self._dtype = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(
            model_config, next(iter(OUTPUTS)))["data_type"])
        self._engine = EngineClient(engine_address(os.getppid()))

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        meta = request_metadata(request)
        action, name = _text(request, "action"), _text(request, "name")
        if action != AdapterAction.LIST.value and meta.get("tier") != ADMIN_TIER:
            log_request(meta, ErrorType.FORBIDDEN.value, error=f"{action:.20} refused",
                        event=EVENT)
            return error_response(ErrorType.FORBIDDEN, f"`{action:.20}` of adapters needs a "
                                  f"key of the `{ADMIN_TIER}` tier")
        try:
            served = self._engine.manage(action, name, _text(request, "path"))
        except LinkRefusal as exc:
            log_request(meta, exc.kind.value, error=f"{action:.20} of {name!r:.80}: {exc}",
                        event=EVENT)
            return error_response(exc.kind, str(exc))
        if action != AdapterAction.LIST.value:
            log_request(meta, f"{action} {name:.80}", event=EVENT)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            next(iter(OUTPUTS)), np.array([adapters_json(served).encode()], dtype=self._dtype))])
