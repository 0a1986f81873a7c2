"""`textgen`'s facade names what the Triton models and tools use, and loads it lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import textgen


@pytest.mark.parametrize("name", textgen.__all__)
def test_every_facade_name_resolves_to_its_definition(name):
    value = getattr(textgen, name)
    assert value.__name__ == name


def test_importing_a_light_piece_does_not_load_torch():
    """`llm_stream`'s processes import validation and the link only: no torch, no weights."""
    code = ("import sys, textgen, textgen.core.validation, triton_llm.link; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
