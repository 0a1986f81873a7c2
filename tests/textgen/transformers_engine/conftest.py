"""The engine on the demo model, once per test module and executor."""

from __future__ import annotations

import pytest

from textgen.core.config import EngineConfig
from textgen.transformers_engine.engine import TransformersEngine


@pytest.fixture(scope="module", params=["llama", "hf"])
def engine(request, demo_model_dir):
    """On each executor (the lean Llama forward and the HF module); every token is its own
    piece (stream interval 0). test_engine.py has its own, over both schedulers too. float32
    on every device: the tests compare exact tokens and logprobs (`auto` is bf16 on a GPU)."""
    engine = TransformersEngine(EngineConfig(model_dir=demo_model_dir, executor=request.param,
                                             dtype="float32", max_num_seqs=8,
                                             stream_interval_ms=0))
    yield engine
    engine.shutdown()
