"""The forward pass in C (forward_kernel.c): compiled when the model loads, called through ctypes.

Why: see forward_kernel.c. It runs both the decode step and the prefill of a prompt. Compiling
takes a moment at load (docs/performance.md, The decode step in C) with the system's C
compiler, for the CPU it runs on (`-march=native`), into a private temporary directory, so no
binary built for another machine is ever loaded.
Where there is no compiler, the model is not float32 or bfloat16 on a CPU, or the build fails,
`build` says why and the executor keeps its tensor forward: the kernel is a speed-up, never a
requirement. A bfloat16 model gets a build of its own (`-DWEIGHTS_BF16`): bfloat16 panels,
everything else float32; so does `quantization` `int8` (`-DWEIGHTS_INT8`): int8 panels with a
scale per output, quantized here from the loaded weights (forward_kernel.c says how each CPU
multiplies them).
ctypes releases the GIL for the call, so the step's Python neighbours (the link, the metrics
thread) run on the other core meanwhile.

Weights: `pack` lays each product's matrix out as forward_kernel.c reads it (panels of 32
output rows, transposed; bfloat16 ones in pairs of inputs, int8 ones in quads) once at load.
The kernel then owns the only copy the engine needs:
with `take_weights` the HF module's projections are emptied layer by layer as they are packed,
so the process never holds the weights twice (not even while loading).

Threads: each call runs on `torch.get_num_threads()` OpenMP threads. The library needs
`libgomp.so.1`, the soname of the OpenMP runtime torch loaded before it, so the dynamic linker
hands it torch's copy: one runtime and one thread pool for the kernel and torch's operations
(two runtimes would each keep spinning workers and fight over the cores).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

log = logging.getLogger("textgen")

SOURCE = Path(__file__).with_name("forward_kernel.c")
FLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC")
MAX_HEAD_DIM = 1024  # forward_kernel.c's `rotate` buffer
PANEL = 32  # output rows of a panel (forward_kernel.c)
# The weight dtypes it is built for: the `-D` flag each needs, and the inputs a panel groups.
WEIGHT_BUILDS = {torch.float32: (), torch.bfloat16: ("-DWEIGHTS_BF16",),
                 torch.int8: ("-DWEIGHTS_INT8",)}
_PAIRS = {torch.float32: 1, torch.bfloat16: 2, torch.int8: 4}
# What a product's input width must be a multiple of: the pairs or quads, and for int8 the
# block of inputs an activation scale covers (forward_kernel.c's BLOCK).
_WIDTH_MULTIPLE = {torch.float32: 1, torch.bfloat16: 2, torch.int8: 32}
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MADV_DONTNEED = 4
try:
    _LIBC: Optional[ctypes.CDLL] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                               use_errno=True)
except OSError:  # not glibc: the pages go when the mapping does
    _LIBC = None


class _LayerPointers(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "input_norm", "qkv", "qkv_bias", "out", "out_bias", "post_norm", "gate_up", "down")]


class _Model(ctypes.Structure):
    _fields_ = [*[(name, ctypes.c_int32) for name in (
        "layers", "hidden", "heads", "kv_heads", "dim", "inter", "vocab")],
        ("eps", ctypes.c_float),
        *[(name, ctypes.c_void_p) for name in (
            "embed", "final_norm", "lm_head", "cos", "sin")],
        ("layer", ctypes.POINTER(_LayerPointers))]


class _Lora(ctypes.Structure):
    """forward_kernel.c's `Lora`: the adapters of one call's rows."""

    _fields_ = [("adapters", ctypes.c_int32), ("order", ctypes.c_void_p),
                ("start", ctypes.c_void_p), ("a", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("rank", ctypes.c_void_p), ("t", ctypes.c_void_p), ("t_stride", ctypes.c_int32)]


LORA_PARTS = 4  # per layer: q/k/v fused, the output projection, gate/up fused, down


class LoraTables:
    """The matrices of a set of adapters as forward_kernel.c reads them: for adapter s, layer
    i and part p (LORA_PARTS, in forward_kernel.c's LoraPart order), `pairs[s][i *
    LORA_PARTS + p]` is (A [rank, in], B^T [rank, out]) as `lora_matrices` made them, or None.
    Only pointers are gathered here: a new set of adapters in the batch costs no copy."""

    def __init__(self, pairs: Sequence[Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]]]
                 ) -> None:
        flat = [pair for adapter in pairs for pair in adapter]
        self._kept = flat
        self._a = (ctypes.c_void_p * len(flat))(*(
            None if pair is None else pair[0].data_ptr() for pair in self._kept))
        self._b = (ctypes.c_void_p * len(flat))(*(
            None if pair is None else pair[1].data_ptr() for pair in self._kept))
        self._rank = torch.tensor([0 if pair is None else pair[0].shape[0]
                                   for pair in self._kept], dtype=torch.int32)
        self._adapters = len(pairs)
        self._widest = int(self._rank.max()) if len(flat) else 0

    def call(self, slots: Sequence[int]) -> "_Lora":
        """The argument of one call whose row r runs adapter `slots[r]` (-1: none): its rows
        grouped by adapter, and scratch for their low-rank products."""
        by_adapter: list[list[int]] = [[] for _ in range(self._adapters)]
        for row, slot in enumerate(slots):
            if slot >= 0:
                by_adapter[slot].append(row)
        order = torch.tensor([row for rows in by_adapter for row in rows], dtype=torch.int32)
        start = torch.tensor([0] + [len(rows) for rows in by_adapter],
                             dtype=torch.int32).cumsum(0, dtype=torch.int32)
        scratch = torch.empty((max(1, len(order)), max(1, self._widest)), dtype=torch.float32)
        lora = _Lora(self._adapters, order.data_ptr(), start.data_ptr(),
                     ctypes.addressof(self._a), ctypes.addressof(self._b), self._rank.data_ptr(),
                     scratch.data_ptr(), scratch.shape[1])
        lora.kept = (order, start, scratch)  # alive as long as the argument
        return lora


def lora_matrices(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One product's (A, B) as forward_kernel.c's add_lora reads them: float32, contiguous, B
    transposed (it adds B's rows along the outputs)."""
    return a.float().contiguous(), b.float().t().contiguous()


class KernelUnavailable(Exception):
    """Why the C forward cannot be used here; the tensor forward runs instead."""


def compile_library(target: str, dtype: torch.dtype = torch.float32) -> ctypes.CDLL:
    """The kernel built for `-march=target` and `dtype` weights with the system's compiler,
    once per process and compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise KernelUnavailable("no C compiler (cc or gcc) on PATH")
    return _compile(compiler, target, dtype)


@functools.lru_cache(maxsize=None)
def _compile(compiler: str, target: str, dtype: torch.dtype) -> ctypes.CDLL:
    # The library stays mapped after its directory is gone.
    with tempfile.TemporaryDirectory(prefix="textgen-kernel-") as build:
        library = Path(build) / "forward_kernel.so"
        command = [compiler, *FLAGS, *WEIGHT_BUILDS[dtype], f"-march={target}", str(SOURCE),
                   "-o", str(library), "-lmvec", "-lm"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise KernelUnavailable(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        return ctypes.CDLL(str(library))


class ForwardKernel:
    """The compiled decode step and prefill, bound to one model's packed weights."""

    def __init__(self, library: ctypes.CDLL, model: _Model, layers: ctypes.Array,
                 tensors: list[torch.Tensor], positions: int) -> None:
        # `tensors`: what the records point into (packed weights among them), kept alive here.
        self._model, self._layers, self._tensors = model, layers, tensors
        self._positions = positions
        self._decode = library.textgen_decode
        self._decode.restype = ctypes.c_int
        self._decode.argtypes = [
            ctypes.POINTER(_Model), ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
            ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_Lora)]
        self._prefill = library.textgen_prefill
        self._prefill.restype = ctypes.c_int
        self._prefill.argtypes = [
            ctypes.POINTER(_Model), ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_Lora)]
        self._scratch_floats = library.textgen_scratch_floats
        self._scratch_floats.restype = ctypes.c_int64
        self._scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int32, ctypes.c_int32,
                                         ctypes.c_int32]
        self._model_p = ctypes.byref(model)
        self._scratch = torch.empty(0)
        self._kv: Sequence[torch.Tensor] = ()
        self._kv_pointers = (ctypes.c_void_p * 0)()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
               kv: Sequence[torch.Tensor], start: int, end: int,
               lora: Optional[_Lora] = None) -> torch.Tensor:
        """Logits [rows, vocab] for one token per row; writes column `end` of `kv`.

        tokens, positions: int64 [rows], contiguous; mask: int64 [rows, end - start + 1], the
        live rows' columns `start..end` (column `end` set), rows contiguous; kv: per layer key
        then value buffer, float32 [row capacity, kv_heads, columns, dim], contiguous; lora:
        the rows' adapters (LoraTables.call), None when no row runs one."""
        rows = tokens.shape[0]
        capacity, columns = kv[0].shape[0], kv[0].shape[2]
        if len(kv) != len(self._kv) or any(a is not b for a, b in zip(kv, self._kv)):
            self._kv = list(kv)
            self._kv_pointers = (ctypes.c_void_p * len(kv))(*(t.data_ptr() for t in kv))
        logits = torch.empty((rows, self._model.vocab), dtype=torch.float32)
        threads = torch.get_num_threads()
        failed = self._decode(self._model_p, rows, start, end, tokens.data_ptr(),
                              positions.data_ptr(), mask.data_ptr(), mask.stride(0),
                              self._kv_pointers, capacity, columns, self._positions,
                              logits.data_ptr(), self._scratch_for(rows, columns, threads),
                              threads, None if lora is None else ctypes.byref(lora))
        if failed:
            raise ValueError("a token id or position is outside the model's tables, or a row "
                             "or column outside the cache")
        return logits

    def prefill(self, prompts: Sequence[Sequence[int]],
                every_position: Sequence[bool] = (), lora: Optional[_Lora] = None) -> tuple[
            list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The prompts' keys and values, per layer [prompts, kv_heads, length, dim] left padded
        to the longest (padding columns zero: the mask hides them), and the logits of each
        prompt's last token or, where `every_position` is set, of each of its tokens, prompt
        after prompt ([rows, vocab], the layout of executors.hf.Executor.prefill).

        All prompts are the rows of one call, so the weights are read once for the group (a
        call per prompt read them once per prompt), and none pays for another's padding.
        `lora`: the adapter of each token row, prompt after prompt (None: no prompt runs one)."""
        count, length = len(prompts), max(map(len, prompts))
        model = self._model
        shape = (count, model.kv_heads, length, model.dim)
        kv = [torch.zeros(shape) for _ in range(2 * model.layers)]
        every = torch.tensor([bool(e) for e in every_position] or [False] * count,
                             dtype=torch.int32)
        rows = sum(len(p) if e else 1 for p, e in zip(prompts, every.tolist()))
        logits = torch.empty((rows, model.vocab), dtype=torch.float32)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
        tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
        pointers = (ctypes.c_void_p * len(kv))(*(t.data_ptr() for t in kv))
        threads = torch.get_num_threads()
        if self._prefill(self._model_p, count, lengths.data_ptr(), tokens.data_ptr(),
                         every.data_ptr(), pointers, length, self._positions, logits.data_ptr(),
                         self._scratch_for(int(lengths.sum()), length, threads), threads,
                         None if lora is None else ctypes.byref(lora)):
            raise ValueError("a token id is outside the model's table, or a prompt is empty "
                             "or longer than its rotary table")
        return list(zip(kv[0::2], kv[1::2])), logits

    def bytes_by_dtype(self) -> dict[str, int]:
        """Bytes of what the kernel holds (packed weights, norms, rotary tables) by dtype; an
        int8 matrix's buffer, scales included, counts as int8."""
        totals: dict[str, int] = {}
        for tensor in self._tensors:
            name = "int8" if tensor.dtype == torch.uint8 else str(tensor.dtype)[6:]
            totals[name] = totals.get(name, 0) + tensor.numel() * tensor.element_size()
        return totals

    def _scratch_for(self, rows: int, columns: int, threads: int) -> int:
        """The address of scratch space for a call over `rows` rows and `columns` columns on
        `threads` threads."""
        needed = self._scratch_floats(self._model_p, rows, columns, threads)
        if self._scratch.numel() < needed:
            self._scratch = torch.empty(needed, dtype=torch.float32)
        return self._scratch.data_ptr()


def pack(weight: torch.Tensor) -> torch.Tensor:
    """W [out, in] as forward_kernel.c's panels, in W's dtype: [ceil(out / 32), in / pairs,
    32, pairs], panel p holding W[32p + j, pairs * k + e] at [p, k, j, e], zeros past `out`
    (pairs: 1 for float32, 2 for bfloat16, 4 for int8)."""
    out, width = weight.shape
    pairs = _PAIRS[weight.dtype]
    full, rest = divmod(out, PANEL)
    padded = torch.zeros((full + (rest > 0)) * PANEL, width, dtype=weight.dtype)
    padded[:out] = weight
    return padded.view(-1, PANEL, width // pairs, pairs).transpose(1, 2).contiguous()


def pack_int8(weight: torch.Tensor) -> torch.Tensor:
    """W [out, in] quantized for the int8 build, as one byte buffer: its int8 panels (`pack`),
    then a float32 scale for each output, padded to whole panels (forward_kernel.c's
    int8_scales). Each output's row is quantized symmetrically: scale max|row| / 127, weights
    round(w / scale) in -127..127."""
    weight = weight.detach().float()
    out = weight.shape[0]
    outputs = -(-out // PANEL) * PANEL
    scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    scales = torch.zeros(outputs)
    scales[:out] = scale
    return torch.cat([pack(quantized).view(-1).view(torch.uint8), scales.view(torch.uint8)])


def pack_as(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W [out, in] packed for the build of `dtype` (WEIGHT_BUILDS): `pack_int8` for int8,
    `pack` of W in `dtype` otherwise."""
    return pack_int8(weight) if dtype == torch.int8 else pack(weight.detach().to(dtype))


def _empty(modules: Sequence[torch.nn.Module]) -> None:
    """Frees the modules' weights (their packed copy serves instead), and their pages now:
    transformers maps the checkpoint file and its tensors are views of one mapping, which
    stays until the last view is gone, so every page packing read would stay resident until
    the whole model is packed (a second copy of the weights at the load's peak). Only pages
    wholly inside a weight are given back, so no neighbouring tensor is touched."""
    for module in modules:
        weight = module.weight.detach()
        first = -(-weight.data_ptr() // _PAGE) * _PAGE
        last = (weight.data_ptr() + weight.numel() * weight.element_size()) // _PAGE * _PAGE
        module.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        if _LIBC is not None and last > first:
            _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _own_the_rest(model: Any, packed: Sequence[torch.nn.Module]) -> None:
    """Copies every parameter that is not packed (the norms; an untied embedding) out of the
    checkpoint. transformers leaves parameters as views of the safetensors file's mapping, and
    one small view keeps the whole mapping alive: the pages packing read would stay resident
    as the weights' second copy (file-backed, but counted in the process's and the cgroup's
    memory)."""
    skip = {id(m.weight) for m in packed}
    for parameter in model.parameters():
        if id(parameter) not in skip:
            parameter.data = parameter.data.clone()


def _check(model: Any, heads: int, kv_heads: int, dim: int,
           weights: torch.dtype) -> Optional[KernelUnavailable]:
    dtypes = {t.dtype for t in model.parameters()}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.bfloat16} \
            or any(t.device.type != "cpu" for t in model.parameters()):
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return KernelUnavailable(f"it takes float32 or bfloat16 weights on the CPU, not {names}")
    if dim > MAX_HEAD_DIM or heads % kv_heads:
        return KernelUnavailable(f"head layout {heads}/{kv_heads}x{dim} not supported")
    inputs = (model.config.hidden_size, heads * dim,
              model.model.layers[0].mlp.down_proj.in_features)
    multiple = _WIDTH_MULTIPLE[weights]
    if any(width % multiple for width in inputs):
        return KernelUnavailable(f"{str(weights).removeprefix('torch.')} products take input "
                                 f"widths that are multiples of {multiple}, and these are not "
                                 f"({', '.join(map(str, inputs))})")
    return None


def build(model: Any, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
          dim: int, eps: float, target: str = "native", take_weights: bool = False,
          int8: bool = False) -> Union[ForwardKernel, KernelUnavailable]:
    """The compiled step over a Llama-family HF model's weights, packed, or why not (logged by
    the caller).

    `target` is the compiler's `-march` (the tests also build a generic x86-64 one, the path of
    CPUs without AVX-512). `take_weights` empties the HF module's projections as they are
    packed (see the module docstring); without it the module stays usable beside the kernel.
    `int8`: quantize the projections (and the embedding) to int8 panels as they are packed.
    The norms, biases and an untied float embedding are read in place, so the model must
    outlive the kernel."""
    dtype = torch.int8 if int8 else next(model.parameters()).dtype
    unavailable = _check(model, heads, kv_heads, dim, dtype)
    if unavailable:
        return unavailable
    started = time.monotonic()
    try:
        library = compile_library(target, dtype)
    except (KernelUnavailable, OSError, subprocess.SubprocessError) as error:
        return error if isinstance(error, KernelUnavailable) else KernelUnavailable(str(error))
    compiled = time.monotonic()
    base = model.model
    embed_module, head_module = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head_module.weight is embed_module.weight
    projections = [head_module] + [m for layer in base.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    if take_weights:
        _own_the_rest(model, projections)
    keep: list[torch.Tensor] = []  # every tensor the kernel points into

    def held(tensor: Optional[torch.Tensor]) -> Optional[int]:
        if tensor is None:
            return None
        tensor = tensor.detach().contiguous()
        keep.append(tensor)
        return tensor.data_ptr()

    def held_float(tensor: Optional[torch.Tensor]) -> Optional[int]:
        """Norms, biases and rotary tables: float32 whatever the weights' dtype."""
        return held(None if tensor is None else tensor.detach().float())

    def cat(tensors: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])

    records = []
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        records.append(_LayerPointers(
            held_float(layer.input_layernorm.weight),
            held(pack_as(cat([m.weight for m in qkv]), dtype)),
            held_float(cat([m.bias for m in qkv])), held(pack_as(attn.o_proj.weight, dtype)),
            held_float(attn.o_proj.bias), held_float(layer.post_attention_layernorm.weight),
            held(pack_as(cat([mlp.gate_proj.weight, mlp.up_proj.weight]), dtype)),
            held(pack_as(mlp.down_proj.weight, dtype))))
        if take_weights:
            _empty([*qkv, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj])
    vocab, hidden = head_module.weight.shape
    lm_head = held(pack_as(head_module.weight, dtype))
    embed = None if tied else held(pack_as(embed_module.weight, dtype) if int8
                                   else embed_module.weight)
    if take_weights:
        _empty([head_module, embed_module] if tied else [head_module])
    layer_array = (_LayerPointers * len(records))(*records)
    inter = base.layers[0].mlp.gate_proj.out_features
    model_record = _Model(len(records), hidden, heads, kv_heads, dim, inter, vocab, eps,
                          embed, held_float(base.norm.weight), lm_head, held_float(cos),
                          held_float(sin),
                          ctypes.cast(layer_array, ctypes.POINTER(_LayerPointers)))
    log.info("forward kernel for %s weights compiled in %.1f s, weights packed in %.1f s",
             str(dtype).removeprefix("torch."), compiled - started, time.monotonic() - compiled)
    return ForwardKernel(library, model_record, layer_array, keep, positions=cos.shape[0])


@functools.lru_cache(maxsize=None)
def _logprobs_function(target: str) -> Any:
    """textgen_logprobs with its signature declared, once per target (it runs every step)."""
    call = compile_library(target).textgen_logprobs
    call.restype = None
    call.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                     ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                     ctypes.c_int32]
    return call


def logprob_pass(rows: torch.Tensor, k: int, target: str = "native"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's log-sum-exp and its `k` best tokens with their log-probabilities, best
    first, for float32 CPU logits `rows` ([rows, vocab]), in one C pass on the calling
    thread's OpenMP threads (textgen_logprobs). Raises KernelUnavailable where the kernel
    does not build."""
    call = _logprobs_function(target)
    rows = rows.float()
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    count, vocab = rows.shape
    lse = torch.empty(count)
    ids = torch.empty((count, k), dtype=torch.int64)
    values = torch.empty((count, k))
    call(rows.data_ptr(), count, vocab, rows.stride(0), k, lse.data_ptr(), ids.data_ptr(),
         values.data_ptr(), torch.get_num_threads())
    return lse, ids, values


def product(panels: torch.Tensor, x: torch.Tensor, out: int, dtype: torch.dtype,
            threads: int = 1, target: str = "native") -> Any:
    """A callable computing y = x W^T ([rows, out]) through the kernel's own product, as the
    layers run it, for W packed in `dtype` (`pack`, `pack_int8`) and float32 rows `x`: what
    `dtype` `auto` times at load, and what the tests compare with a reference. Raises
    KernelUnavailable where the kernel does not build."""
    call = compile_library(target, dtype).textgen_product
    call.restype = None
    call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                     ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32]
    rows, width = x.shape
    y = torch.empty((rows, out))
    scratch = torch.empty(rows * ((width + 1) // 2 + 1))

    def run() -> torch.Tensor:
        call(panels.data_ptr(), x.data_ptr(), y.data_ptr(), rows, width, out,
             scratch.data_ptr(), threads)
        return y

    return run
