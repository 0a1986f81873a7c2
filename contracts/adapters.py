"""The operator's adapter commands: the one definition of their actions, who may send them,
the `llm_adapters` model's tensors and the answer's shape.

Who reads this module:
  * model_repository/llm_adapters (config.pbtxt is checked against `INPUTS`/`OUTPUTS` by
    tests/contracts/test_adapters.py) and triton_llm/adapters.py, which carries them out;
  * openai_frontend (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, and the
    adapters /v1/models lists) and tools/serve.py (`make adapter`);
  * gateway/tiers.yaml names `ADMIN_TIER` (a test checks it).
"""

from __future__ import annotations

from enum import Enum

from contracts.tensors import Tensor

# The tier whose keys may load and unload adapters through the gateway. The gateway sets the
# caller's tier (contracts.headers.Header.TIER) from its key store, never from the client.
ADMIN_TIER = "admin"

MODEL = "llm_adapters"  # the Triton model that takes the commands


class AdapterAction(str, Enum):
    LIST = "list"      # anyone: what /v1/models shows
    LOAD = "load"      # admin tier only: serve the adapter at `path` as `name`
    UNLOAD = "unload"  # admin tier only: stop serving `name`; running requests finish


INPUTS: dict[str, Tensor] = {t.name: t for t in (
    Tensor("action", "TYPE_STRING", doc="list, load or unload"),
    Tensor("name", "TYPE_STRING", optional=True, doc="the adapter (load, unload)"),
    Tensor("path", "TYPE_STRING", optional=True,
           doc="load: the absolute path of a PEFT LoRA directory on the replica"),
)}

# JSON: {"adapters": [{"name", "path", "resident"}, ...] by name, "max_loras": n}
OUTPUTS: dict[str, Tensor] = {t.name: t for t in (
    Tensor("adapters", "TYPE_STRING", doc="the adapters served after the command, as JSON"),
)}
