"""Generate once with the engine, without Triton: does this model load and generate here?

The quickest check of a model directory on a machine (or in an image): the engine, device and
dtype the service would pick, with the engine's defaults and every LLM_* override the model
reads (LLM_DEVICE, LLM_DTYPE, LLM_ENGINE, LLM_EXECUTOR, ...). Prints one JSON line: what ran
and what it wrote.

  python -m textgen --model-dir demo_model --prompt "The Python language" --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from textgen.core.config import ConfigError, load_engine_config
from textgen.core.loading import ModelLoadError, resolve_device
from textgen.core.outputs import Collector, EngineObserver
from textgen.core.validation import GenerationRequest
from textgen.engines import choose_engine, create_engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textgen", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("LLM_MODEL_DIR", "demo_model")),
                        help="a save_pretrained directory [$LLM_MODEL_DIR, else demo_model]")
    parser.add_argument("--prompt", default="The Python language")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    model_dir = args.model_dir.resolve()
    env = {**os.environ, "LLM_MODEL_DIR": str(model_dir)}
    start = time.monotonic()
    try:
        config = load_engine_config({}, model_dir, env)
        engine = create_engine(config, EngineObserver())
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loaded = time.monotonic() - start
    try:
        sink = Collector()
        engine.submit(GenerationRequest(prompt=args.prompt, max_tokens=args.max_tokens), sink)
        output, = sink.wait()
    finally:
        engine.shutdown()
    print(json.dumps({
        "python": sys.version.split()[0], "engine": choose_engine(config),
        "device": str(resolve_device(config.device)), "load_seconds": round(loaded, 2),
        "finish_reason": output.finish_reason.value, "error": output.error,
        "completion_tokens": output.completion_tokens, "text": output.text}))
    return 0 if not output.error else 1


if __name__ == "__main__":
    sys.exit(main())
