"""The `transformers` engine: one thread that prefills newcomers and decodes all running rows.

Why a thread of its own: Triton's `execute()` only parses and hands requests over; the engine
runs at the token step, admitting waiting sequences between decode steps (iteration-level
scheduling) and retiring each row the step it finishes, so short answers never wait for long
ones. Everything here works without Triton and is driven directly by the unit tests.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from contracts.logprobs import TokenLogprobs
from textgen.adapters.peft_format import (AdapterError, LoraAdapter, UnknownAdapter, base_linears,
                                          read_adapter)
from textgen.adapters.registry import AdapterRegistry, check_served, start_registry
from textgen.core.config import EngineConfig, model_context
from textgen.core.cpus import run_in_passing_thread
from textgen.core.dtypes import resolve_dtype
from textgen.core.engine import EngineBase
from textgen.core.kv_budget import kv_bytes_per_token, token_budget
from textgen.core.loading import load_config, load_model, return_large_frees_to_the_os
from textgen.core.outputs import (EngineObserver, FinishReason, OutputSink, Pacer, Timeline,
                                  send_finish, send_text)
from textgen.core.validation import GenerationRequest, ValidationError, check_token_budget
from textgen.executors.hf import product_timer, select_executor
from textgen.executors.kv_batch import HEADROOM
from textgen.executors.native.kernel import logprob_pass
from textgen.transformers_engine.logprobs import check_prompt_logits, prompt_records, records, score
from textgen.transformers_engine.sampling import (RowControls, make_controls, make_rng,
                                                  sample_next_tokens)
from textgen.transformers_engine.scheduler import Budget, Scheduler, prefill_groups, prefill_share
from textgen.transformers_engine.tokenization import TextAssembler, TokenTexts, fast_decoder

log = logging.getLogger("textgen")


@dataclass(eq=False)
class SequenceState:
    """One request's state while it waits or runs."""

    request: GenerationRequest
    prompt_ids: list[int]
    sink: OutputSink
    assembler: TextAssembler
    rng: Optional[random.Random]
    controls: Optional[RowControls]  # logit_bias or penalties only (make_controls)
    pacer: Pacer
    timeline: Timeline = field(default_factory=Timeline)
    generated: int = 0
    last_token: int = -1
    finish_reason: Optional[FinishReason] = None
    # Only when the request asks for them (None otherwise).
    logprobs: Optional[list[TokenLogprobs]] = None
    prompt_logprobs: Optional[tuple[Optional[TokenLogprobs], ...]] = None
    index: int = 0  # which of its request's n sequences
    # The request's other sequences, until they join the batch beside this one: its prefill
    # is theirs (the executor copies this row's cache for each).
    forks: list["SequenceState"] = field(default_factory=list)
    # Its LoRA adapter, held from admission to its end (None: the base model); why one could
    # not be held, if so (it was unloaded while the request waited).
    lora: Optional[LoraAdapter] = None
    refusal: str = ""

    @property
    def token_budget(self) -> int:
        return len(self.prompt_ids) + self.request.max_tokens

    @property
    def width(self) -> int:
        """Rows it takes when it joins the batch: itself and its forks."""
        return 1 + len(self.forks)


def _prompt_length(seq: SequenceState) -> int:
    return len(seq.prompt_ids)


class TransformersEngine(EngineBase):
    """Owns the model, the tokenizer and the scheduling loop (textgen/core/engine.py)."""

    name = "transformers"

    def __init__(self, config: EngineConfig, observer: Optional[EngineObserver] = None) -> None:
        super().__init__(config, observer)
        if self.device.type == "cpu":
            return_large_frees_to_the_os()
            self._use_cpu_threads(torch.set_num_threads)
        # On a passing thread: the loading's OpenMP pool must not outlive it (cpus.py says why).
        run_in_passing_thread(self._load)

        # Every sequence's place (shared with submitting threads, guarded by `_wakeup`).
        self._scheduler: Scheduler[SequenceState] = Scheduler(Budget(
            config.max_num_seqs, self.budget.tokens, static=config.scheduling == "static"))
        self._start_thread("textgen-engine")

    def _load(self) -> None:
        """The model, its tokenizer, limits, token budget and executor (packing the weights
        for the C forward, where it runs)."""
        config = self.config
        if config.dtype == "auto" and self.device.type == "cpu":  # timed on these threads
            timer = product_timer(config.executor, config.forward_path,
                                  load_config(config.model_dir))
            self.dtype, self.dtype_why = resolve_dtype(
                "auto", self.device, timer, config.max_num_seqs, quantization=config.quantization)
        log.info("dtype %s (%s)", str(self.dtype).removeprefix("torch."), self.dtype_why)
        self.model, self.tokenizer = load_model(config.model_dir, self.device, self.dtype,
                                                config.quantization)
        self.limits = self._narrow_limits(model_context(self.model.config),
                                          int(self.model.config.vocab_size))
        self._parameters = sum(p.numel() for p in self.model.parameters())  # before packing
        self._detokenize = fast_decoder(self.tokenizer)
        self._token_texts = TokenTexts(self.tokenizer, self.limits.vocab_size)
        self._eos_id = self.tokenizer.eos_token_id
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else (self._eos_id or 0)
        linears = base_linears(self.model)  # before the executor wraps or packs them
        self.executor = select_executor(config.executor, self.model, pad_id, self.device,
                                        self.limits.context_length, config.forward_path,
                                        take_weights=True, quantization=config.quantization,
                                        lora=config.enable_lora)
        self.adapters = self._adapter_registry(linears) if config.enable_lora else None
        # Logprobs' log-sum-exp and best tokens in one C pass where the C forward runs.
        self._native_scores = logprob_pass if self.executor.forward_path == "c" else None
        per_token = kv_bytes_per_token(self.model.config, self.executor.kv_dtype.itemsize)
        self.budget = token_budget(config.max_batch_total_tokens, config.max_num_seqs,
                                   self.limits.context_length, per_token)
        self.executor.limit_cache(self.budget.tokens)
        bound = self.budget.tokens + HEADROOM * config.max_num_seqs
        self._kv_bound_mib = bound * per_token / 2**20
        log.info("token budget %d (%s); KV cache (%s) at most %d tokens, %.0f MiB",
                 self.budget.tokens, self.budget.why,
                 str(self.executor.kv_dtype).removeprefix("torch."), bound, self._kv_bound_mib)

    def _adapter_registry(self, linears: dict[str, tuple[int, int]]) -> AdapterRegistry:
        """The adapters served from the start, checked against the base model's linear
        layers; each made ready for the executor as it loads (never in a step)."""
        config = self.config

        def read(name: str, path: Any) -> LoraAdapter:
            adapter = read_adapter(name, path, linears, config.max_lora_rank, self.model.dtype,
                                   self.device)
            self.executor.prepare_adapter(adapter)
            return adapter

        return start_registry(config, read, self.observer.on_adapters)

    # ---- called from Triton's threads -------------------------------------------------

    def submit(self, request: GenerationRequest, sink: OutputSink) -> None:
        """Tokenise (unless the client sent token ids), check the limits and queue.

        Raises ValidationError for a request that can never run and Overloaded when the
        waiting queue is full; both before anything is queued.
        """
        check_served(self.adapters, request.adapter)
        prompt_ids = list(request.prompt_ids) or self.tokenizer.encode(request.prompt)
        check_token_budget(len(prompt_ids), request, self.limits)
        if request.prompt_logprobs is not None:
            check_prompt_logits(len(prompt_ids), self.limits.vocab_size,
                                self.config.max_prompt_logits_mib)
        seq = self._sequence(request, prompt_ids, sink, 0)
        seq.forks = [self._sequence(request, prompt_ids, sink, i) for i in range(1, request.n)]
        if seq.width > self.config.max_num_seqs:
            raise ValidationError("n", f"must be at most this server's max_num_seqs "
                                       f"({self.config.max_num_seqs}), got {request.n}")
        if not self._scheduler.fits_ever(seq):
            raise ValidationError("max_tokens", (
                f"plus the prompt needs {seq.token_budget} tokens"
                + (f" for each of {seq.width} sequences" if seq.width > 1 else "")
                + f", more than this server's max_batch_total_tokens ({self.budget.tokens})"))
        with self._wakeup:
            self._admission.admit(len(self._scheduler.waiting))
            self._scheduler.add(seq)
            self._wakeup.notify()

    def _sequence(self, request: GenerationRequest, prompt_ids: list[int], sink: OutputSink,
                  index: int) -> SequenceState:
        """Sequence `index` of a request: its own text, random stream, controls and pacing."""
        return SequenceState(request=request, prompt_ids=prompt_ids, sink=sink,
                             assembler=TextAssembler(self._detokenize, request.stop,
                                                     request.min_tokens),
                             rng=make_rng(request, index),
                             controls=make_controls(request, prompt_ids),
                             pacer=Pacer(self._stream_interval_s),
                             logprobs=None if request.logprobs is None else [], index=index)

    def _has_unfinished(self) -> bool:
        return self._scheduler.has_unfinished()

    # ---- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._scheduler.has_unfinished():
                    self._wakeup.wait()
                if self._stopping:
                    break
                cancelled, expired = self._leaving_the_queue()
                self._scheduler.drop_waiting(cancelled + expired)
                admitted = self._scheduler.schedule(self._hold_adapter)
                refused = [seq for seq in admitted if seq.refusal]
                self._scheduler.finish(refused)
                self._report_queue()
            for seq in refused:
                self._finish(seq, FinishReason.ERROR, seq.refusal)
            for seq in cancelled:
                self._finish(seq, FinishReason.CANCELLED)
            for seq in expired:
                self._finish(seq, FinishReason.REJECTED, self._admission.expired())
            now = time.monotonic()
            for seq in admitted:
                seq.timeline.admitted_at = now
            try:
                with torch.inference_mode():
                    if self._scheduler.admitted:
                        self._prefill()
                    if self._scheduler.rows:
                        self._decode()
            except Exception as exc:  # a failed step must not kill the engine thread
                log.exception("generation step failed; failing %d running sequences",
                              len(self._scheduler.running))
                self._fail_running(f"generation failed: {exc}")
        self._fail_running("the server is shutting down")
        with self._wakeup:
            for seq in self._scheduler.waiting:
                self._finish(seq, FinishReason.ERROR, "the server is shutting down")

    def _hold_adapter(self, seq: SequenceState) -> bool:
        """Whether `seq` may join now: its adapter is made resident and held (False while no
        room can be made; one that went away is admitted with a `refusal`, ended at once)."""
        if not seq.request.adapter or self.adapters is None:
            return True
        try:
            seq.lora = self.adapters.acquire(seq.request.adapter)
        except (UnknownAdapter, AdapterError) as exc:
            seq.refusal = str(exc)
            return True
        return seq.lora is not None

    def _report_queue(self) -> None:
        """Called with `_wakeup` held."""
        self.observer.on_queue(len(self._scheduler.running), len(self._scheduler.waiting))
        self.observer.on_cache_usage(self._scheduler.token_usage)

    def _leaving_the_queue(self) -> tuple[list[SequenceState], list[SequenceState]]:
        """Waiting sequences whose client left, and those that waited too long."""
        cutoff = self._admission.expiry_cutoff()
        cancelled = [s for s in self._scheduler.waiting if s.sink.is_cancelled()]
        expired = [s for s in self._scheduler.waiting
                   if s.timeline.arrival < cutoff and s not in cancelled]
        return cancelled, expired

    def _prefill(self) -> None:
        """Prefill the oldest admitted prompts, up to max_prefill_tokens of them per step (at
        least one prompt); the rest wait for the next step, after the running rows decoded.

        Why not all of them now: 32 arrivals at once would all wait for the whole 32 x 64
        tokens, then decode in step and finish in step, and arrive again all at once. A step's
        worth of prompts at a time spreads them out, as chunked prefill does in vLLM. Static
        scheduling keeps its one batch: it prefills everything admitted together."""
        admitted = self._scheduler.admitted
        share = (admitted if self.config.scheduling == "static" else
                 prefill_share(admitted, _prompt_length, self.config.max_prefill_tokens))
        for group in prefill_groups(share, _prompt_length, self.config.max_prefill_tokens):
            every = [s.request.prompt_logprobs is not None for s in group]
            logits = self.executor.prefill([s.prompt_ids for s in group], every,
                                           self._row_adapters(group))
            if any(every):
                logits = self._score_prompts(group, logits)
            forks = [(j, fork) for j, seq in enumerate(group) for fork in seq.forks]
            if forks:  # n sequences: one prefill, its cache copied for the others
                first = len(self._scheduler.rows)  # the group's first row
                self.executor.fork([first + j for j, _ in forks])
                logits = torch.cat([logits, logits[[j for j, _ in forks]]])
                for j, fork in forks:
                    fork.prompt_logprobs = group[j].prompt_logprobs
                    fork.lora = group[j].lora
                    if fork.lora is not None and self.adapters is not None:
                        self.adapters.hold(fork.lora)
                    fork.timeline.admitted_at = group[j].timeline.admitted_at
            with self._wakeup:
                rows = self._scheduler.join_batch(group + [fork for _, fork in forks])
                for seq in group:
                    seq.forks = []
            self._advance(rows, logits)

    def _score_prompts(self, group: list[SequenceState], logits: torch.Tensor) -> torch.Tensor:
        """Keep the prompt logprobs of the prompts that asked, from the logits of each of
        their positions; returns each prompt's last logits, [prompts, vocab]."""
        last, at = [], 0
        for seq in group:
            if seq.request.prompt_logprobs is None:
                last.append(logits[at])
                at += 1
                continue
            positions = logits[at:at + len(seq.prompt_ids)]
            seq.prompt_logprobs = prompt_records(positions, seq.prompt_ids,
                                                 seq.request.prompt_logprobs, self._token_texts)
            last.append(positions[-1])
            at += len(seq.prompt_ids)
        return torch.stack(last)

    def _decode(self) -> None:
        rows = self._scheduler.rows
        logits = self.executor.decode([s.last_token for s in rows], self._row_adapters(rows))
        self._advance(range(len(rows)), logits)

    def _row_adapters(self, seqs: list[SequenceState]) -> list[Optional[LoraAdapter]]:
        """Each row's adapter for the executor; empty (no per-row work) with LoRA off."""
        return [s.lora for s in seqs] if self.adapters is not None else []

    def _advance(self, rows: range, logits: torch.Tensor) -> None:
        """Sample one token for each of `rows` and retire the rows that finished."""
        seqs = [self._scheduler.rows[r] for r in rows]
        asking = [i for i, s in enumerate(seqs) if s.logprobs is not None]
        # Before sampling: its controls change the logits in place.
        scores = None if not asking else score(
            logits, asking, [seqs[i].request.logprobs or 0 for i in asking],
            [seqs[i].request.reshapes_logits for i in asking], self._native_scores)
        tokens = sample_next_tokens(logits, [s.request for s in seqs], [s.rng for s in seqs],
                                    self._eos_id, [s.generated for s in seqs],
                                    [s.controls for s in seqs])
        entries: dict[int, TokenLogprobs] = {}
        if scores is not None:
            entries = dict(zip(asking, records(scores, [tokens[i] for i in asking],
                                               self._token_texts)))
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            if seq.request.max_tokens == 0:  # it only scored its prompt
                seq.finish_reason = FinishReason.LENGTH
                continue
            seq.generated += 1
            seq.last_token = token
            if seq.controls is not None:
                seq.controls.add(token)
            if seq.timeline.first_token_at is None:
                seq.timeline.first_token_at = now
                self.observer.on_first_token(now - seq.timeline.arrival)
            entry = entries.get(i)
            if entry is not None and seq.logprobs is not None:
                seq.logprobs.append(entry)
            delta = ""
            if token == self._eos_id and not seq.request.ignore_eos:
                seq.finish_reason = FinishReason.STOP
            else:
                delta = seq.assembler.add(token)
                if seq.assembler.stopped:
                    seq.finish_reason = FinishReason.STOP
            self._emit(seq, delta, now, logprobs=() if entry is None else (entry,))
            if seq.finish_reason is None and seq.generated >= seq.request.max_tokens:
                seq.finish_reason = FinishReason.LENGTH
            if seq.finish_reason is None and seq.sink.is_cancelled():
                seq.finish_reason = FinishReason.CANCELLED
        self._retire()

    def _emit(self, seq: SequenceState, delta: str, now: float, final: bool = False,
              logprobs: tuple[TokenLogprobs, ...] = ()) -> None:
        if not send_text(seq.sink, seq.pacer, delta, now, final, logprobs, seq.index):
            seq.finish_reason = FinishReason.CANCELLED

    def _retire(self) -> None:
        rows = self._scheduler.rows
        gone = [i for i, s in enumerate(rows) if s.finish_reason is not None]
        if not gone:
            return
        finished = [rows[i] for i in gone]
        kept = self.executor.drop(gone)
        with self._wakeup:
            self._scheduler.finish(finished, kept)
            self._report_queue()
        now = time.monotonic()
        for seq in finished:
            if seq.finish_reason is not FinishReason.CANCELLED:
                self._emit(seq, seq.assembler.flush(), now, final=True)
            self._finish(seq, seq.finish_reason or FinishReason.ERROR)

    def _fail_running(self, message: str) -> None:
        failed = self._scheduler.running
        self.executor.reset()
        with self._wakeup:
            self._scheduler.finish(failed)
            self._report_queue()
        for seq in failed:
            self._finish(seq, FinishReason.ERROR, message)

    def _finish(self, seq: SequenceState, reason: FinishReason, error: str = "") -> None:
        """End `seq`, and the forks that never joined it (it left before its prefill)."""
        for one in (seq, *seq.forks):
            if one.lora is not None and self.adapters is not None:
                self.adapters.release(one.lora)
                one.lora = None
            send_finish(one.sink, one.timeline.output(
                one.assembler.text, reason, len(one.prompt_ids), one.generated, error,
                one.logprobs, one.prompt_logprobs, one.index, one.request.adapter),
                self.observer)
        seq.forks = []

    def _facts(self) -> dict[str, Any]:
        return {"parameters": self._parameters, "scheduling": self.config.scheduling,
                "executor": self.executor.name, "forward_path": self.executor.forward_path,
                "max_batch_total_tokens": self.budget.tokens,
                "kv_cache_max_mib": round(self._kv_bound_mib),
                "cpu_threads": torch.get_num_threads()}
