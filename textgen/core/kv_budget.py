"""The running batch's token budget and the memory its key/value cache may take, for both engines.

Why one place: `max_batch_total_tokens` bounds what the scheduler admits (textgen/transformers_engine/scheduler.py
counts rows padded to the widest), what the transformers engine's cache may hold
(textgen/executors/kv_batch.py) and the KV space the vLLM engine reserves on a CPU. Computed
from the models' KV bytes per token, not measured: a default that fit the demo model (8,192
tokens) was 0.4 GB on SmolLM2 and nothing on a 7B model, and vLLM's own CPU default
(max_num_seqs full contexts) would be ~12 GB on SmolLM2.

`auto` (the default): room for `max_num_seqs` full contexts, capped at DEFAULT_KV_BYTES of
cache, the space vLLM reserves on a CPU by default (VLLM_CPU_KVCACHE_SPACE, 4 GiB), and never
below one full context. Set `max_batch_total_tokens` (LLM_MAX_BATCH_TOTAL_TOKENS) to choose.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

DEFAULT_KV_BYTES = 4 << 30


class TokenBudget(NamedTuple):
    tokens: int
    why: str  # for the load log


def kv_bytes_per_token(hf_config: Any, element_bytes: int) -> int:
    """Keys and values of every layer for one token."""
    c = hf_config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * element_bytes


def token_budget(configured: Optional[int], max_num_seqs: int, context: int,
                 per_token: int) -> TokenBudget:
    """The batch's token budget: as configured, or the `auto` rule in the module docstring."""
    if configured is not None:
        return TokenBudget(configured, "max_batch_total_tokens")
    full = max_num_seqs * context
    capped = max(context, min(full, DEFAULT_KV_BYTES // per_token))
    why = (f"auto: {max_num_seqs} full contexts of {context}" if capped == full else
           f"auto: {DEFAULT_KV_BYTES >> 30} GiB of cache at {per_token / 1024:.0f} KiB a token")
    return TokenBudget(capped, why)
