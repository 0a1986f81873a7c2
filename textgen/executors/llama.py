"""A lean forward pass for the Llama family (Llama, Mistral, Qwen2), from the loaded HF weights.

Why: on a CPU a decode step of a small model is bound by per-operation overhead, not by
arithmetic. Hugging Face's modules spend ~50 tensor operations and many Python calls per layer
(mask building, cache objects, hooks, separate q/k/v and gate/up projections); this forward does
the same mathematics in ~15 per layer: one fused q/k/v projection, rotary embedding from a table
built once by the model's own rotary module (so every rope scaling it supports is honoured), one
`scaled_dot_product_attention` over the slot cache of `KVBatch`, one fused gate/up projection.
Fusing re-points the HF modules' weights at views of the fused matrices, so no weight is held
twice and the HF module still computes the same thing.

On a CPU with a C compiler, the decode step and prefill of a float32 or bfloat16 model (or of
one quantized to int8 as it is packed) run instead as calls into C (forward_kernel.c, compiled
at load in a moment: docs/performance.md, The decode step in C) over weights packed for it
once: the same mathematics without a tensor operation's dispatch per step and layer, on every
thread the engine has, faster than the tensor forward at every row count measured
(docs/performance.md, What made this: the packed C forward). The kernel then holds the
weights; the tensor forward's fused copies are never made.

In float32, greedy output stays token-identical to HF `generate`
(tests/textgen/executors/test_llama.py, on the demo model and on randomly initialised Llama,
Mistral and Qwen2 models). What it cannot run
exactly (other architectures, sliding windows, int8-quantized layers, biases on the MLP, ...)
is named by `unsupported_reason` and served by the HF executor instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from textgen.adapters.lora import StepLora
from textgen.adapters.peft_format import LoraAdapter
from textgen.executors.kv_batch import KVBatch, prefill_inputs, prefill_mask, prefill_positions
from textgen.executors.native import kernel as forward_kernel

log = logging.getLogger("textgen")

FAMILY = ("llama", "mistral", "qwen2")


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: Optional[torch.Tensor]
    out: torch.Tensor
    out_bias: Optional[torch.Tensor]
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _fuse(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One weight (and bias) for several projections of the same input; the modules' own
    parameters become views into it, so memory is not doubled."""
    weight = torch.cat([m.weight.detach() for m in modules])
    has_bias = modules[0].bias is not None
    bias = torch.cat([m.bias.detach() for m in modules]) if has_bias else None
    row = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[row:row + rows], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[row:row + rows], requires_grad=False)
        row += rows
    return weight, bias


class LlamaExecutor:
    """Prefill and decode for the Llama family over a `KVBatch` (see executor.Executor)."""

    name = "llama"

    @property
    def kernel(self) -> Optional[forward_kernel.ForwardKernel]:
        """The C forward, where it runs (the benchmarks count the weights it holds)."""
        return self._kernel

    @property
    def forward_path(self) -> str:
        """`c` (forward_kernel.c) or `tensor` (this module's forward): for the start-up log."""
        return "tensor" if self._kernel is None else "c"

    @staticmethod
    def unsupported_reason(model: Any) -> Optional[str]:
        """Why this forward would not compute exactly what the HF module does; None if it does."""
        reason = LlamaExecutor.unsupported_config_reason(model.config)
        if reason:
            return reason
        projections = [model.get_output_embeddings()]
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                            mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in projections):
            return "quantized linear layers"  # e.g. torch's dynamic int8 modules
        return None

    @staticmethod
    def unsupported_config_reason(config: Any) -> Optional[str]:
        """What of `unsupported_reason` the model's config alone tells (before it loads)."""
        if config.model_type not in FAMILY:
            return f"architecture `{config.model_type}` is not one of {', '.join(FAMILY)}"
        if getattr(config, "hidden_act", "silu") != "silu":
            return f"activation `{config.hidden_act}` (only silu)"
        if getattr(config, "mlp_bias", False):
            return "biases on the MLP"
        layer_types = getattr(config, "layer_types", None) or []
        window = getattr(config, "sliding_window", None)
        if any(t != "full_attention" for t in layer_types) or (
                config.model_type == "mistral" and window is not None
                and window < config.max_position_embeddings):
            return "sliding-window attention"
        return None

    def __init__(self, model: Any, pad_id: int, device: torch.device,
                 context_length: int, kernel_target: Optional[str] = "native",
                 take_weights: bool = False, int8: bool = False) -> None:
        """`kernel_target`: the `-march` to compile the C forward for (None: the tensor
        forward, which the tests compare it with). `take_weights`: the C forward empties the
        HF module's projections as it packs them (the engine never runs the module beside this
        executor; tests that do keep it whole). `int8`: the C forward quantizes the weights to
        int8 panels as it packs them (where it does not build, the tensor forward serves the
        float weights and `select_executor` turns to the HF module's int8 instead)."""
        config = model.config
        self._pad_id = pad_id
        self._device = device
        self._heads = config.num_attention_heads
        self._kv_heads = config.num_key_value_heads or self._heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // self._heads
        self._hidden = (config.hidden_size,)
        self._eps = config.rms_norm_eps
        base = model.model
        self._embed = model.get_input_embeddings().weight.detach()
        self._cos, self._sin = self._rope_tables(base, context_length)
        half = self._head_dim // 2  # rotate_half as an index: the second half, then the first
        self._swap = torch.cat([torch.arange(half, self._head_dim), torch.arange(half)]) \
            .to(device)
        self._kv_tokens: Optional[int] = None
        self._batch = KVBatch()
        self._kernel: Optional[forward_kernel.ForwardKernel] = None
        self._layers: list[_Layer] = []
        self._lora_layout, self._lora_parts = self._adapted_projections(model)
        built = forward_kernel.build(
            model, self._cos, self._sin, self._heads, self._kv_heads, self._head_dim, self._eps,
            kernel_target, take_weights, int8) \
            if kernel_target else forward_kernel.KernelUnavailable("turned off")
        # Why the C forward is not used (None when it is): for the log and `forward_path` `c`.
        self.kernel_unavailable: Optional[str] = None
        if isinstance(built, forward_kernel.KernelUnavailable):
            self.kernel_unavailable = str(built)
            log.info("decode step and prefill in tensor operations: %s", built)
            # In the weights' dtype, as the HF module rounds them.
            self._cos, self._sin = self._cos.to(self._embed.dtype), self._sin.to(self._embed.dtype)
            self._fuse_layers(model)
        else:
            self._kernel = built
            self._embed = torch.empty(0)  # the kernel reads the embedding itself
        # The C forward keeps keys and values in float32 whatever the weights' dtype.
        self.kv_dtype = torch.float32 if self._kernel is not None else model.dtype

    def _fuse_layers(self, model: Any) -> None:
        """The tensor forward's weights: per layer one q/k/v and one gate/up matrix."""
        self._final_norm = model.model.norm.weight.detach()
        self._lm_head = model.get_output_embeddings().weight.detach()
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
            self._layers.append(_Layer(
                input_norm=layer.input_layernorm.weight.detach(), qkv=qkv, qkv_bias=qkv_bias,
                out=attn.o_proj.weight.detach(),
                out_bias=None if attn.o_proj.bias is None else attn.o_proj.bias.detach(),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=gate_up, down=mlp.down_proj.weight.detach()))

    @staticmethod
    def _adapted_projections(model: Any) -> tuple[dict[Any, list[tuple[str, int]]], list[Any]]:
        """Where an adapter's products come from: the fused projections' parts (lora.fuse),
        and per layer the four products an adapter adds to, in forward_kernel.c's LoraPart
        order (the q/k/v and gate/up keys fused, the others module names)."""
        layout: dict[Any, list[tuple[str, int]]] = {}
        parts: list[Any] = []
        for i, layer in enumerate(model.model.layers):
            attn, mlp, prefix = layer.self_attn, layer.mlp, f"model.layers.{i}."
            layout[(i, "qkv")] = [(prefix + "self_attn." + name, module.out_features)
                                  for name, module in (("q_proj", attn.q_proj),
                                                       ("k_proj", attn.k_proj),
                                                       ("v_proj", attn.v_proj))]
            layout[(i, "gate_up")] = [(prefix + "mlp." + name, module.out_features)
                                      for name, module in (("gate_proj", mlp.gate_proj),
                                                           ("up_proj", mlp.up_proj))]
            parts += [(i, "qkv"), prefix + "self_attn.o_proj", (i, "gate_up"),
                      prefix + "mlp.down_proj"]
        return layout, parts

    def _rope_tables(self, base: Any, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin per position, [positions, head_dim], float32, from the model's rotary
        module; the sin table carries rotate_half's signs, so rotating is
        `x * cos + x[..., swap] * sin`."""
        positions = torch.arange(context_length, device=self._device).unsqueeze(0)
        probe = self._embed[:1].unsqueeze(0).float()
        with torch.inference_mode():
            cos, sin = base.rotary_emb(probe, positions)
        sign = torch.ones(self._head_dim, dtype=sin.dtype, device=self._device)
        sign[:self._head_dim // 2] = -1
        return cos[0].contiguous(), (sin[0] * sign).contiguous()

    # ---- the Executor interface ---------------------------------------------------------

    def prefill(self, prompts: list[list[int]], every_position: Sequence[bool] = (),
                adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        if self._kernel is not None:
            layers, logits = self._kernel.prefill(
                prompts, every_position, self._kernel_lora(adapters, [len(p) for p in prompts]))
            self._batch.join(layers, prefill_mask(prompts))
            return logits
        ids, mask, positions = prefill_inputs(prompts, self._pad_id, self._device)
        length = ids.shape[1]
        if bool(mask.all()):
            attn_mask, causal = None, True  # no padding: the kernel's own causal path
        else:
            keep = torch.ones((length, length), dtype=torch.bool, device=self._device).tril()
            # A padding position attends to itself, so its (unused) output stays finite.
            attn_mask = ((keep & mask.bool().unsqueeze(1))
                         | torch.eye(length, dtype=torch.bool, device=self._device)).unsqueeze(1)
            causal = False
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            layers.append((k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                                  enable_gqa=self._kv_heads != self._heads)

        hidden = self._forward(ids, positions, attend, self._step_lora(adapters))
        self._batch.join(layers, mask)
        return self._logits(prefill_positions(hidden, prompts, every_position))

    def decode(self, last_tokens: list[int],
               adapters: Sequence[Optional[LoraAdapter]] = ()) -> torch.Tensor:
        mask, positions = self._batch.decode_inputs()
        if self._kernel is not None:
            logits = self._kernel.decode(torch.tensor(last_tokens), positions.view(-1), mask,
                                         self._batch.all_buffers(), self._batch.start,
                                         self._batch.end, self._kernel_lora(adapters))
            self._batch.commit_decode()
            return logits
        rows, start, end = len(last_tokens), self._batch.start, self._batch.end
        # One row has no padding (the cache trims it): the kernel's unmasked path is cheaper.
        attn_mask = None if rows == 1 else mask.bool()[:, None, None, :]
        # Grouped-query attention as plain attention: a KV head's `group` query heads are its
        # `group` query positions (one token each, no causality among them). Why: with a mask,
        # `enable_gqa` leaves only PyTorch's math backend on CUDA, which copies every key and
        # value `group` times per layer and step; this shape takes the fused kernels.
        group = self._heads // self._kv_heads

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self._batch.buffers(i)
            keys[:rows, :, end:end + 1] = k
            values[:rows, :, end:end + 1] = v
            grouped = q.reshape(rows, self._kv_heads, group, self._head_dim)
            out = F.scaled_dot_product_attention(
                grouped, keys[:rows, :, start:end + 1], values[:rows, :, start:end + 1],
                attn_mask=attn_mask)
            return out.reshape(rows, self._heads, 1, self._head_dim)

        ids = torch.tensor(last_tokens, device=self._device).unsqueeze(1)
        hidden = self._forward(ids, positions, attend, self._step_lora(adapters))
        self._batch.commit_decode()
        return self._logits(hidden[:, -1])

    def fork(self, rows: list[int]) -> None:
        self._batch.fork(rows)  # the C step reads the same buffers

    def drop(self, rows: list[int]) -> list[int]:
        return self._batch.drop(rows)

    def reset(self) -> None:
        self._batch = KVBatch(self._kv_tokens)

    def limit_cache(self, tokens: int) -> None:
        self._kv_tokens = tokens
        self.reset()

    # ---- the forward pass ---------------------------------------------------------------

    def _step_lora(self, adapters: Sequence[Optional[LoraAdapter]]) -> Optional[StepLora]:
        if not adapters:
            return None
        return StepLora.of(adapters, self._device, self._lora_layout)

    def prepare_adapter(self, adapter: LoraAdapter) -> None:
        """Build the adapter's fused products, and the C forward's copies of them, as it
        loads (on the loading thread, not in a step); yields the interpreter between layers
        so the engine thread's steps go on meanwhile."""
        for key in self._lora_parts:
            pair = StepLora.product_of(adapter, key, self._lora_layout)
            if self._kernel is not None:
                adapter.fused[("c", key)] = None if pair is None \
                    else forward_kernel.lora_matrices(*pair)
            time.sleep(0)
        if self._kernel is not None:  # the C forward reads its copies only: keep those alone
            adapter.keep_only(lambda key: isinstance(key, tuple) and key[0] == "c")

    def _kernel_lora(self, adapters: Sequence[Optional[LoraAdapter]],
                     lengths: Optional[Sequence[int]] = None) -> Any:
        """The C forward's argument for rows running `adapters` (`lengths`: a prefill's rows
        are its prompts' tokens), or None when none does."""
        step = StepLora.of(adapters, self._device, self._lora_layout, keep_slots=True) \
            if adapters else None
        if step is None:
            return None
        tables = step.cached("c", lambda: forward_kernel.LoraTables(
            [[adapter.fused[("c", key)] for key in self._lora_parts]
             for adapter in step.adapters]))
        slots = step.row_slots
        if lengths is not None:
            slots = [slot for slot, length in zip(slots, lengths) for _ in range(length)]
        return tables.call(slots)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: Any,
                 lora: Optional[StepLora] = None) -> torch.Tensor:
        """The decoder stack over `ids` ([rows, tokens]); `attend(layer, q, k, v)` stores the
        new keys and values and returns the attention output, [rows, heads, tokens, dim].
        `lora`: the adapters of the rows that use one. Returns the hidden state of every
        position, [rows, tokens, hidden]."""
        rows, tokens = ids.shape
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        qk_width = (heads + kv_heads) * dim
        cos = self._cos[positions].unsqueeze(1)  # [rows, 1, tokens, dim]
        sin = self._sin[positions].unsqueeze(1)
        x = F.embedding(ids, self._embed)
        for i, layer in enumerate(self._layers):
            h = F.rms_norm(x, self._hidden, layer.input_norm, self._eps)
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)
            if lora is not None:
                lora.add(qkv, h, (i, "qkv"))
            qk = qkv[..., :qk_width].view(rows, tokens, heads + kv_heads, dim).transpose(1, 2)
            qk = torch.addcmul(qk * cos, qk[..., self._swap], sin)
            v = qkv[..., qk_width:].view(rows, tokens, kv_heads, dim).transpose(1, 2)
            out = attend(i, qk[:, :heads], qk[:, heads:], v)
            attended = out.transpose(1, 2).reshape(rows, tokens, heads * dim)
            projected = F.linear(attended, layer.out, layer.out_bias)
            if lora is not None:
                lora.add(projected, attended, f"model.layers.{i}.self_attn.o_proj")
            x = x + projected
            h = F.rms_norm(x, self._hidden, layer.post_norm, self._eps)
            gate_up = F.linear(h, layer.gate_up)
            if lora is not None:
                lora.add(gate_up, h, (i, "gate_up"))
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
            down = F.linear(act, layer.down)
            if lora is not None:
                lora.add(down, act, f"model.layers.{i}.mlp.down_proj")
            x = x + down
        return x

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of the positions chosen (a prompt's last one unless it asked for all:
        the vocabulary projection of every prompt token would dominate the prefill)."""
        return F.linear(F.rms_norm(hidden, self._hidden, self._final_norm, self._eps),
                        self._lm_head)
