"""The demo model's two bundled adapters (demo_model/adapters, written by tools/train_adapter)
and the reference they are held to: PEFT's own `merge_and_unload()` model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

ADAPTERS = ("notice", "tutorial")


@pytest.fixture(scope="session")
def adapter_dirs(demo_model_dir: Path) -> dict[str, Path]:
    return {name: demo_model_dir / "adapters" / name for name in ADAPTERS}


def merged_model(base: Path, adapter: Path) -> torch.nn.Module:
    """The base with the adapter merged into its weights, by PEFT."""
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
