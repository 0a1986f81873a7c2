"""The model this frontend serves: its id, context length and chat template.

Why the frontend loads the tokenizer: a chat request is rendered into one prompt with the
model's own chat template (`apply_chat_template(..., add_generation_prompt=True)`), so any
fine-tune's template works unchanged. Only the tokenizer is loaded, never the weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import invalid


@dataclass(frozen=True)
class ServedModel:
    id: str
    context_length: int
    created: int
    tokenizer: Any

    @classmethod
    def load(cls, model_dir: Path, served_name: str = "") -> "ServedModel":
        from transformers import AutoTokenizer  # heavy: only when the server starts

        if not (model_dir / "config.json").exists():
            raise SystemExit(f"{model_dir} holds no config.json: point LLM_MODEL_DIR at the "
                             "directory written by save_pretrained")
        config = json.loads((model_dir / "config.json").read_text())
        context = int(config.get("max_position_embeddings") or 2048)  # as the engine reads it
        return cls(id=served_name or model_dir.name, context_length=context,
                   created=int(time.time()), tokenizer=AutoTokenizer.from_pretrained(model_dir))

    def card(self, engine: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The model object of GET /v1/models, with vLLM's `max_model_len` (the context) and,
        once the model has loaded, what its engine chose (`engine`: dtype and why, executor,
        forward path; contracts/engine_info.py)."""
        card = {"id": self.id, "object": "model", "created": self.created,
                "owned_by": "llm-service", "max_model_len": self.context_length}
        return {**card, "engine": dict(engine)} if engine else card

    def adapter_card(self, name: str) -> dict[str, Any]:
        """An adapter's model object, as vLLM lists a LoRA: `parent` is the base model."""
        return {"id": name, "object": "model", "created": self.created,
                "owned_by": "llm-service", "root": name, "parent": self.id,
                "max_model_len": self.context_length}

    @property
    def vocab_size(self) -> int:
        """Token ids this tokenizer knows, added tokens included."""
        return len(self.tokenizer)

    def first_token_text(self, prompt: str, prompt_ids: Sequence[int] = ()) -> str:
        """The text of the prompt's first token (of its ids, or as the model tokenizes its
        text): the one token an echo's logprobs name without a logprob (nothing predicts it),
        so the model does not send it."""
        ids = list(prompt_ids) or self.tokenizer.encode(prompt)
        return self.tokenizer.decode(ids[:1])

    def chat_prompt(self, messages: Sequence[dict[str, str]],
                    add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise invalid(f"the model `{self.id}` has no chat template, so it cannot serve "
                          "/v1/chat/completions; use /v1/completions with a plain prompt, or "
                          "add a chat_template.jinja to the model directory", "messages")
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # the template itself refused these messages
            raise invalid(f"the model's chat template refused these messages: {exc}",
                          "messages") from exc
