"""LoRA adapters over one base model: read from PEFT directories, kept resident within a bound,
and applied per row inside the shared batch (docs/adapters.md).

- `peft_format`: read and validate one PEFT LoRA directory against the base model.
- `registry`: the adapters a replica serves, the resident ones (least recently used evicted),
  and who is running on each (an unloaded adapter finishes its running requests).
- `lora`: the low-rank products of one step, grouped by adapter (as Punica and S-LoRA do), for
  the Llama executor's tensor forward and for the Hugging Face module's linear layers.
"""

from textgen.adapters.peft_format import AdapterError, LoraAdapter, UnknownAdapter
from textgen.adapters.registry import AdapterRegistry

__all__ = ["AdapterError", "AdapterRegistry", "LoraAdapter", "UnknownAdapter"]
