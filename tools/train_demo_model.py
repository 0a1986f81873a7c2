#!/usr/bin/env python3
"""Train the bundled demo model: a tiny Llama on the Python 3.11 documentation.

Why this exists: the service must run out of the box on a machine that cannot reach a model
hub, so the repository ships its own small causal LM. The model is trained from scratch on the
reStructuredText sources of Debian's ``python3.11-doc`` package (PSF licence, see NOTICE) and
saved with ``save_pretrained`` so it loads exactly like a fine-tuned Hugging Face model.

Tests and CI use the committed model; this script is only re-run on purpose
(``make demo-model``). It needs ``apt-get download`` (Debian's archive) and takes a few
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DOC_PACKAGE = "python3.11-doc"
SOURCES_DIR = "usr/share/doc/python3.11/html/_sources"
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
HELD_OUT_FILES = ("tutorial/controlflow.rst.txt", "tutorial/datastructures.rst.txt")

# A small chat format, so /v1/chat/completions works with the demo model out of the box; the
# trailing space after "Assistant:" is what gets this documentation-trained model talking.
CHAT_TEMPLATE = """\
{#- A plain-text chat format for the demo model (trained on documentation, not on chats):
    system text first, then "User:" / "Assistant:" turns, each ended by the EOS token. -#}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] }}

{% elif message['role'] == 'user' -%}
User: {{ message['content'] }}
{% else -%}
Assistant: {{ message['content'] }}{{ eos_token }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ 'Assistant: ' }}
{%- endif -%}
"""

NOTICE = """\
Demo model for this repository: a small Llama-architecture causal language model trained from
scratch by tools/train_demo_model.py.

Training text: the reStructuredText sources of the Python 3.11 documentation, as shipped in
Debian's `{package}` package (version {version}).
Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved.
Licensed under the PSF License Agreement and the Zero-Clause BSD license for code examples:
https://docs.python.org/3/license.html

heldout.txt holds paragraphs of {held_out} that were excluded from training; the benchmarks
use it to measure perplexity.
"""


def fetch_corpus(workdir: Path) -> tuple[Path, str]:
    """Download and unpack the documentation package without installing it."""
    subprocess.run(["apt-get", "download", DOC_PACKAGE], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    deb = next(workdir.glob(f"{DOC_PACKAGE}_*.deb"))
    version = deb.name.split("_")[1]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    return workdir / "root" / SOURCES_DIR, version


_MARKUP = [
    (re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`"), r"\1"),  # :func:`x` -> x
    (re.compile(r"``([^`]*)``"), r"\1"),
    (re.compile(r"`([^`<]*?)(?:\s*<[^>]*>)?`_*"), r"\1"),
    (re.compile(r"\*\*?([^*]+)\*\*?"), r"\1"),
]


def rst_to_prose(text: str) -> str:
    """Keep prose paragraphs; drop directives, headings, tables and indented code blocks.

    The model is meant to write English, so code and markup are noise at this size.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t", "..", "+", "=", "-", "*")):
            continue
        if any(set(line.strip()) <= set("=-~^*#+`'\"") for line in lines):
            continue
        para = " ".join(line.strip() for line in lines)
        for pattern, repl in _MARKUP:
            para = pattern.sub(repl, para)
        if len(para) > 60 and para.count(" ") > 8:
            paragraphs.append(para)
    return "\n\n".join(paragraphs)


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL_TOKENS[0],
                                   bos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1],
                                   model_max_length=512)


def train(model: LlamaForCausalLM, data: torch.Tensor, minutes: float, seq_len: int,
          batch_size: int, lr: float) -> None:
    """Plain AdamW with warm-up and cosine decay, bounded by wall time rather than steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    deadline = time.monotonic() + minutes * 60
    start = time.monotonic()
    step = 0
    model.train()
    while (now := time.monotonic()) < deadline:
        progress = (now - start) / (deadline - start)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * progress))
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,))
        batch = torch.stack([data[s:s + seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"  step {step:5d}  loss {loss.item():.3f}  {now - start:5.0f}s / "
                  f"{minutes * 60:.0f}s", flush=True)
        step += 1
    model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_model"),
                        help="output directory (replaced)  [%(default)s]")
    parser.add_argument("--minutes", type=float, default=7.0,
                        help="training wall time  [%(default)s]")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"[1/4] fetching {DOC_PACKAGE} from Debian's archive", flush=True)
        sources, version = fetch_corpus(Path(tmp))
        files = sorted(p for p in sources.rglob("*.rst.txt")
                       if p.relative_to(sources).parts[0] in {"tutorial", "howto", "faq",
                                                               "library", "reference", "using"})
        held, texts = [], []
        for path in files:
            prose = rst_to_prose(path.read_text(encoding="utf-8", errors="replace"))
            (held if str(path.relative_to(sources)) in HELD_OUT_FILES else texts).append(prose)
    corpus_chars = sum(map(len, texts))
    print(f"      {len(files)} files, {corpus_chars / 1e6:.1f} M characters of prose", flush=True)

    print(f"[2/4] training a {args.vocab_size}-token byte-level BPE tokenizer", flush=True)
    tokenizer = build_tokenizer(texts, args.vocab_size)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        for para in text.split("\n\n"):
            ids.extend(tokenizer(para)["input_ids"] + [eos])
    data = torch.tensor(ids, dtype=torch.long)
    print(f"      {data.numel() / 1e6:.2f} M training tokens", flush=True)

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[3/4] training a {n_params / 1e6:.2f} M-parameter Llama for {args.minutes} min",
          flush=True)
    train(model, data, args.minutes, seq_len=128, batch_size=32, lr=3e-3)

    print(f"[4/4] saving to {args.out}", flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (args.out / "heldout.txt").write_text("\n\n".join(held) + "\n", encoding="utf-8")
    (args.out / "NOTICE").write_text(NOTICE.format(package=DOC_PACKAGE, version=version,
                                                   held_out=", ".join(HELD_OUT_FILES)))
    prompt = tokenizer("The list", return_tensors="pt")
    sample = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    print("      greedy sample:", repr(tokenizer.decode(sample[0], skip_special_tokens=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
