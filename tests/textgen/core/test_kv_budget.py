"""The batch's token budget: as configured, or max_num_seqs full contexts within 4 GiB of
key/value cache, and never less than one full context."""

from __future__ import annotations

from types import SimpleNamespace

from textgen.core.kv_budget import DEFAULT_KV_BYTES, kv_bytes_per_token, token_budget

SMOLLM2 = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                          hidden_size=576, num_hidden_layers=30)


def test_kv_bytes_per_token_count_keys_and_values_of_every_layer():
    assert kv_bytes_per_token(SMOLLM2, 4) == 2 * 30 * 3 * 64 * 4  # 46,080 bytes


def test_auto_fits_max_num_seqs_full_contexts_when_they_take_little_memory():
    assert token_budget(None, 32, 512, 4096).tokens == 32 * 512


def test_auto_caps_the_cache_at_4_gib_on_a_long_context_model():
    budget = token_budget(None, 32, 8192, kv_bytes_per_token(SMOLLM2, 4))
    assert budget.tokens == DEFAULT_KV_BYTES // 46080 < 32 * 8192
    assert "4 GiB" in budget.why


def test_auto_never_goes_below_one_full_context_and_a_setting_wins():
    assert token_budget(None, 32, 8192, 1 << 20).tokens == 8192
    assert token_budget(1000, 32, 8192, 4).tokens == 1000
