#!/usr/bin/env python3
"""BASELINE ONLY, not part of the service: the naive design this project replaces.

One FastAPI app in one uvicorn worker whose async endpoint calls `tokenizer(...)` and
`model.generate(...)` for each request (`do_sample=True`, temperature 0.7), on the same model
directory as the service. `generate()` blocks the event loop, so requests run strictly one
after another: that is the point of the comparison in `make bench`, which drives this server
with the same load generator and workload as the real service.

It answers the two routes the load generator uses, in the shapes Triton's generate extension
uses: `POST /v2/models/llm/generate` (one JSON object) and `POST /v2/models/llm/generate_stream`
(server-sent events; here a single event with the whole text, since `generate()` returns it all
at once). `ignore_eos` is honoured with `min_new_tokens`, so output lengths match the service's.
The benchmark uses the JSON route, as the seed design did: the SSE reply is only sent once the
blocked event loop is free, so under load SSE replies leave in waves.

  python benchmarks/naive_server.py --port 8090 [--model-dir demo_model]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TEMPERATURE = 0.7


class GenerateBody(BaseModel):
    text_input: str
    max_tokens: int = Field(64, ge=1, le=1024)
    ignore_eos: bool = False
    exclude_input_in_output: bool = False
    # Accepted so the benchmark can send the service's body unchanged; the baseline always
    # samples at TEMPERATURE with an unseeded generator, as the seed design did.
    temperature: float = TEMPERATURE
    seed: int | None = None


def create_app(model_dir: Path) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    app = FastAPI(title="naive baseline: one model.generate() per request (not the service)")

    def generate(body: GenerateBody) -> dict[str, Any]:
        inputs = tokenizer(body.text_input, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=body.max_tokens, do_sample=True,
                                    temperature=TEMPERATURE, pad_token_id=pad_id,
                                    min_new_tokens=body.max_tokens if body.ignore_eos else 0)
        prompt_len = inputs["input_ids"].shape[1]
        new_ids = output[0, prompt_len:]
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        ended = tokenizer.eos_token_id is not None and tokenizer.eos_token_id in new_ids.tolist()
        return {"text_output": text if body.exclude_input_in_output else body.text_input + text,
                "finish_reason": "stop" if ended and not body.ignore_eos else "length",
                "num_input_tokens": prompt_len, "num_output_tokens": int(new_ids.shape[0])}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "role": "naive baseline"}

    @app.post("/v2/models/llm/generate")
    async def generate_json(body: GenerateBody) -> dict[str, Any]:
        return generate(body)  # blocks the event loop: one request at a time

    @app.post("/v2/models/llm/generate_stream")
    async def generate_stream(body: GenerateBody) -> StreamingResponse:
        event = f"data: {json.dumps(generate(body))}\n\n"
        return StreamingResponse(iter([event]), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("LLM_MODEL_DIR", ROOT / "demo_model")))
    args = parser.parse_args()
    uvicorn.run(create_app(args.model_dir.resolve()), host=args.host, port=args.port,
                workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
