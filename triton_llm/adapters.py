"""The operator's adapter commands, carried out on the engine's registry (in `llm`'s process).

`llm_adapters` (model_repository/llm_adapters) receives them from Triton and sends them over
the engine link (link.py); `llm` answers them here. Why this way round: the registry lives
with the engine and its weights, in `llm`'s process, and Triton runs each model in its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from contracts.adapters import AdapterAction
from contracts.errors import ErrorType
from textgen.core.validation import UnknownAdapter
from triton_llm.link import LinkRefusal
from triton_llm.link_messages import Adapters, ManageAdapters

NO_LORA = ("this replica serves no LoRA adapters: start it with LLM_ENABLE_LORA=1 (or name "
           "adapters in LLM_LORA_ADAPTERS)")


def manage(registry: Optional[Any], command: ManageAdapters) -> Adapters:
    """Carry out `command` on the engine's AdapterRegistry (None: LoRA is off) and return the
    served list after it; raises LinkRefusal naming what is wrong."""
    from textgen.adapters.peft_format import AdapterError  # the engine's process has torch

    try:
        action = AdapterAction(command.action)
    except ValueError:
        raise LinkRefusal(ErrorType.INVALID_REQUEST, f"`action` must be one of "
                          f"{', '.join(a.value for a in AdapterAction)}, got "
                          f"{command.action!r:.40}") from None
    if registry is None:
        if action is AdapterAction.LIST:
            return Adapters((), 0)
        raise LinkRefusal(ErrorType.INVALID_REQUEST, NO_LORA)
    try:
        if action is AdapterAction.LOAD:
            path = Path(command.path)
            if not path.is_absolute():
                raise AdapterError(f"adapter `{command.name}`: the path must be absolute, got "
                                   f"{command.path!r:.200}")
            registry.load(command.name, path)
        elif action is AdapterAction.UNLOAD:
            registry.unload(command.name)
    except UnknownAdapter as exc:
        raise LinkRefusal(ErrorType.NOT_FOUND, str(exc)) from None
    except AdapterError as exc:
        raise LinkRefusal(ErrorType.INVALID_REQUEST, str(exc)) from None
    resident = set(registry.resident())
    return Adapters(tuple((name, str(path), name in resident)
                          for name, path in registry.served().items()), registry.max_loras)


def adapters_json(adapters: Adapters) -> str:
    """The `adapters` output (contracts.adapters.OUTPUTS)."""
    return json.dumps({"adapters": [{"name": name, "path": path, "resident": resident}
                                    for name, path, resident in adapters.served],
                       "max_loras": adapters.max_loras})
