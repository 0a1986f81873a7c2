"""The tensors of the `llm` and `llm_stream` models: the one definition of their I/O schema.

Names follow Triton's LLM conventions (the vLLM and TensorRT-LLM backends), so genai-perf,
perf_analyzer input files and Triton's generate extension work unchanged. Every input but
the prompt is optional. Requests carry a batch dimension in front of `dims` (tritonclient
sends shape [1, 1] for one prompt; the generate extension adds it by itself).

Copies that Triton or clients need in their own formats, each checked against this module by
tests/contracts/test_tensors.py:
  * model_repository/llm/config.pbtxt and llm_stream/config.pbtxt (`input`, `output`);
  * gateway/openapi.yaml (`GenerateFields`, `InferInput`, `InferenceRequest`).
triton_llm/triton_io.py reads the tensors by the names defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_CHOICES = 8  # the most sequences (`n`) one request may ask for

# Triton's config.pbtxt type -> (KServe v2 datatype, numpy dtype).
_TYPES = {
    "TYPE_STRING": ("BYTES", "object"),
    "TYPE_INT32": ("INT32", "int32"),
    "TYPE_UINT64": ("UINT64", "uint64"),
    "TYPE_FP32": ("FP32", "float32"),
    "TYPE_BOOL": ("BOOL", "bool"),
}


@dataclass(frozen=True)
class Tensor:
    """One input or output tensor, as config.pbtxt declares it."""

    name: str
    data_type: str                # config.pbtxt's TYPE_*
    dims: tuple[int, ...] = (1,)  # without the batch dimension; -1: any number
    optional: bool = False
    ragged: bool = False          # allow_ragged_batch: rows of different lengths batch
    doc: str = field(default="", compare=False)  # what a client sends or gets

    @property
    def datatype(self) -> str:
        """The KServe v2 datatype (`BYTES`, `INT32`...), as HTTP and gRPC clients name it."""
        return _TYPES[self.data_type][0]

    @property
    def numpy_dtype(self) -> str:
        return _TYPES[self.data_type][1]


def _by_name(*tensors: Tensor) -> dict[str, Tensor]:
    return {tensor.name: tensor for tensor in tensors}


# The inputs of `llm`, in config.pbtxt's order.
INPUTS: dict[str, Tensor] = _by_name(
    Tensor("text_input", "TYPE_STRING", doc="the prompt, UTF-8, not empty"),
    Tensor("max_tokens", "TYPE_INT32", optional=True,
           doc="new tokens to generate, 1..max_new_tokens (default: default_max_tokens); 0 "
               "with prompt_logprobs only scores the prompt"),
    Tensor("temperature", "TYPE_FP32", optional=True, doc="0 (greedy, the default) .. 2"),
    Tensor("top_p", "TYPE_FP32", optional=True, doc="(0, 1], default 1"),
    Tensor("top_k", "TYPE_INT32", optional=True, doc="0 (off, the default) .. vocabulary size"),
    Tensor("seed", "TYPE_UINT64", optional=True, doc="makes a sampled request reproducible"),
    Tensor("stop", "TYPE_STRING", dims=(-1,), optional=True, ragged=True,
           doc="up to 8 stop strings; the text ends before the first found"),
    Tensor("exclude_input_in_output", "TYPE_BOOL", optional=True,
           doc="default false: text_output starts with the prompt"),
    Tensor("ignore_eos", "TYPE_BOOL", optional=True,
           doc="default false: keep going past end-of-sequence"),
    Tensor("min_tokens", "TYPE_INT32", optional=True,
           doc="0 (the default) .. max_tokens: neither EOS nor a stop string ends it sooner"),
    Tensor("presence_penalty", "TYPE_FP32", optional=True,
           doc="-2 .. 2, default 0: subtracted from every token already generated"),
    Tensor("frequency_penalty", "TYPE_FP32", optional=True,
           doc="-2 .. 2, default 0: subtracted once per time a token was generated"),
    Tensor("repetition_penalty", "TYPE_FP32", optional=True,
           doc="(0, 2], default 1: divides (or, if negative, multiplies) the logit of every "
               "token in the prompt or the output"),
    Tensor("logit_bias", "TYPE_STRING", optional=True,
           doc='a JSON object of token id -> bias in [-100, 100], e.g. {"50256": -100}'),
    Tensor("logprobs", "TYPE_INT32", optional=True,
           doc="0..20: return each generated token's log-probability and this many of the most "
               "likely tokens at its position, in token_logprobs"),
    Tensor("prompt_logprobs", "TYPE_INT32", optional=True,
           doc="0..20: the same for each prompt token, in prompt_token_logprobs"),
    Tensor("input_ids", "TYPE_INT32", dims=(-1,), optional=True, ragged=True,
           doc="the prompt as token ids, run as they are instead of text_input's tokens "
               "(text_input still gives the prompt's text)"),
    Tensor("n", "TYPE_INT32", optional=True,
           doc="1 (the default) .. 8 sequences from the prompt, prefilled once; above 1 only "
               "streamed (llm_stream), each response naming its sequence in `index`"),
    Tensor("adapter", "TYPE_STRING", optional=True,
           doc="the LoRA adapter to run (docs/adapters.md); absent or empty: the base model. "
               "The `x-llm-adapter` header says the same on every route"),
)

# `llm_stream` takes the same inputs and `stream` (false: one response with the whole text,
# what the generate endpoint needs).
STREAM_INPUTS: dict[str, Tensor] = {**INPUTS, **_by_name(
    Tensor("stream", "TYPE_BOOL", optional=True,
           doc="default true; false: one response with the whole text"))}

# The outputs of both models. A stream's last response carries `finish_reason` and the counts.
# The logprobs outputs are in a response only when the request asked for them.
OUTPUTS: dict[str, Tensor] = _by_name(
    Tensor("text_output", "TYPE_STRING",
           doc="the completion (after the prompt unless excluded); a stream's piece"),
    Tensor("finish_reason", "TYPE_STRING",
           doc='"stop" (EOS or a stop string) or "length"; empty until the end'),
    Tensor("num_input_tokens", "TYPE_INT32", doc="prompt tokens"),
    Tensor("num_output_tokens", "TYPE_INT32", doc="generated tokens"),
    Tensor("token_logprobs", "TYPE_STRING",
           doc="only with `logprobs`: JSON, one entry per generated token of this response "
               "(contracts/logprobs.py)"),
    Tensor("prompt_token_logprobs", "TYPE_STRING",
           doc="only with `prompt_logprobs`: JSON, one entry per prompt token, the first null; in "
               "the final response"),
    Tensor("index", "TYPE_INT32",
           doc="only with `n` above 1: the sequence (0 .. n-1) the response belongs to; each "
               "sequence ends with a response holding its finish_reason and counts"),
    Tensor("queue_ms", "TYPE_FP32",
           doc="in a sequence's last response: milliseconds from arrival to a slot in the batch"),
    Tensor("prefill_ms", "TYPE_FP32",
           doc="in a sequence's last response: milliseconds from its slot to its first token"),
    Tensor("decode_ms", "TYPE_FP32",
           doc="in a sequence's last response: milliseconds from its first token to its last"),
)

# Where a request's time went, in its last response (the outputs above): the gateway reads
# them from every HTTP answer into its access log (gateway/usage.lua), the OpenAI frontend
# passes them on as `llm_timing`.
TIMINGS = ("queue_ms", "prefill_ms", "decode_ms")
