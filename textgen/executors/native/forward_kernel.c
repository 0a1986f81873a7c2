/* The forward pass of the Llama family in plain C, over the same float32 weights and slot cache
 * as textgen/executors/llama.py (which compiles this at load and calls it through ctypes): one
 * decode step of the running rows, or the prefill of one prompt.
 *
 * Why: a decode step of a small model on a CPU is bound by per-operation overhead, not by
 * arithmetic. Even the lean tensor forward spends ~100 tensor operations a step, each a
 * dispatch through Python and ATen for a few hundred floats, and the matrix library's
 * set-up costs as much as a 128-wide product. Here a step is one call: for each layer an RMS
 * norm, the fused q/k/v product, rotary embedding, one column of keys and values written into
 * the cache, attention over each row's own columns, the output projection, the fused gate/up
 * product, SiLU and the down projection; then the final norm and the vocabulary projection.
 * A prefill is the same layers with the prompt's tokens as the rows, each attending to the
 * columns the tokens before it wrote. On a real model, where a step is bound by memory (few
 * rows) or arithmetic (many), the packed panels below keep it ahead of the matrix library
 * too, at every row count measured (docs/performance.md, What made this: the packed C forward).
 *
 * Weights: every product's matrix arrives packed (kernel.py, `pack`, once at load)
 * into panels of 32 output rows, transposed ([in][32]), so a product streams each panel once
 * from memory in order and every row tile multiplies it from cache with no horizontal sums:
 * with AVX-512 intrinsics, with AVX2 ones for float32 weights (`avx2_block`), else in plain
 * loops the compiler vectorizes, which read the panel once per row.
 *
 * bfloat16 weights (compiled with -DWEIGHTS_BF16; `weight_t` below): the same panels hold
 * pairs of inputs, [in / 2][32][2], the layout of AVX512-BF16's pair dot product. Where the
 * CPU has it (__AVX512BF16__), each product first rounds its input rows to bfloat16 and
 * multiplies pairs natively (twice the multiply-adds an instruction, and half the weight
 * bytes); elsewhere each pair is widened to float32 in registers (a shift and a mask) and
 * multiplied with float32 inputs, so only the weight bytes halve. Everything else (norms,
 * the residual stream, rotary tables, the cache, attention, logits) stays float32.
 *
 * int8 weights (-DWEIGHTS_INT8): panels of quads of inputs, [in / 4][32][4], each output's
 * row quantized symmetrically with a float32 scale, stored after the matrix's panels
 * (`int8_scales`). A product quantizes its input rows on the fly in blocks of BLOCK inputs,
 * each block with its own scale (as llama.cpp's q8_0 does: one scale a row let an outlier
 * crush its neighbours), to -127..127 stored offset by 128 as unsigned bytes, and multiplies
 * quads of bytes into 32-bit sums: one AVX512-VNNI instruction does 64 multiply-adds where the
 * CPU has it (__AVX512VNNI__), plain loops elsewhere. Each block's sum, less the offset times
 * the block's weights (summed by the same instruction, once a tile), is scaled by the block's
 * scale into a float sum; the output's scale comes last. A quarter of float32's weight bytes;
 * the embedding of a token is its output row dequantized (a tied model) or its own quantized
 * table's row.
 * Packing per call instead cost a transposing pass over all the weights a step: on a 135M
 * model it was slower than the matrix library at larger row counts (docs/performance.md,
 * What made this: the packed C forward).
 *
 * The mathematics and the order of every operation follow llama_executor.py; only the order
 * of additions inside dot products differs (vector lanes), as it does between matrix
 * libraries. The caller holds every pointer alive for the call.
 *
 * Threads: a call runs `threads` OpenMP threads in one parallel region; each product splits
 * its outputs, attention its (row, head) pairs, and the row-wise steps their rows. The
 * library is linked to the libgomp that torch itself loaded (kernel.py), so the
 * kernel and torch's operations share one thread pool and never oversubscribe the cores.
 * Every thread computes whole outputs, so results do not depend on the thread count.
 */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* glibc's vector expf (libmvec) for the `omp simd` loops below: math.h declares it only under
 * -ffast-math, which would also license reordering the rest of this file's arithmetic. */
#pragma omp declare simd notinbranch
float expf(float);

#if defined(WEIGHTS_BF16)
typedef uint16_t weight_t; /* bfloat16: the high half of a float32's bits */
#define PAIRS 2            /* inputs a panel holds together for each output */
#elif defined(WEIGHTS_INT8)
typedef int8_t weight_t;   /* int8, scaled per output (int8_scales) */
#define PAIRS 4
#define BLOCK 32           /* inputs an activation scale covers */
#else
typedef float weight_t;
#define PAIRS 1
#endif

/* A product's weight as a float32 (a bfloat16 is the high half of a float32's bits), before
 * an int8 weight's scale. */
static inline float widen(weight_t w) {
#if defined(WEIGHTS_BF16)
    union { uint32_t bits; float value; } u = {.bits = (uint32_t)w << 16};
    return u.value;
#else
    return (float)w;
#endif
}

#if defined(WEIGHTS_INT8)
/* What follows an int8 matrix's panels: each output's scale (padded to whole panels). */
static inline const float *int8_scales(const weight_t *w, int in, int out) {
    return (const float *)(w + ((int64_t)out + 31) / 32 * 32 * in);
}
#endif

/* W[n, k] of a panel matrix [out, in] as a float32. */
static inline float weight_at(const weight_t *w, int in, int out, int64_t n, int k) {
    const weight_t *panel = w + (n / 32) * 32 * (int64_t)in;
    float value = widen(panel[(int64_t)(k - k % PAIRS) * 32 + (n % 32) * PAIRS + k % PAIRS]);
#if defined(WEIGHTS_INT8)
    value *= int8_scales(w, in, out)[n];
#else
    (void)out;
#endif
    return value;
}

/* The products' matrices are panels (see above): `W [out, in]` means out/32 (rounded up)
 * panels of [in / PAIRS][32][PAIRS] weights, zero past `out`. */
typedef struct {
    const float *input_norm;  /* [hidden] */
    const weight_t *qkv;         /* W [(heads + 2 * kv_heads) * dim, hidden] */
    const float *qkv_bias;    /* [(heads + 2 * kv_heads) * dim] or NULL */
    const weight_t *out;         /* W [hidden, heads * dim] */
    const float *out_bias;    /* [hidden] or NULL */
    const float *post_norm;   /* [hidden] */
    const weight_t *gate_up;     /* W [2 * inter, hidden]: gate rows, then up rows */
    const weight_t *down;        /* W [hidden, inter] */
} Layer;

typedef struct {
    int32_t layers, hidden, heads, kv_heads, dim, inter, vocab;
    float eps;
    const weight_t *embed;    /* [vocab, hidden], or NULL: tied, read from lm_head's panels */
    const float *final_norm;  /* [hidden] */
    const weight_t *lm_head;     /* W [vocab, hidden] */
    const float *cos;         /* [positions, dim] */
    const float *sin;         /* [positions, dim], rotate_half's signs folded in */
    const Layer *layer;
} Model;

/* The LoRA adapters of a call's rows (textgen/adapters/lora.py has the arithmetic), grouped by
 * adapter (rows on the base model alone are in no group). For adapter s, layer i and
 * projection p (LoraPart),
 * entry k = (s * layers + i) * LORA_PARTS + p holds A [rank, in] and B transposed, [rank, out],
 * float32, B already scaled, with the fused projections' parts stacked (A) and block-diagonal
 * (B); rank
 * 0 where the adapter leaves the projection alone. NULL: no row runs one. */
typedef enum { LORA_QKV, LORA_OUT, LORA_GATE_UP, LORA_DOWN, LORA_PARTS } LoraPart;

typedef struct {
    int32_t adapters;
    const int32_t *order;     /* the rows that run an adapter, adapter by adapter */
    const int32_t *start;     /* [adapters + 1]: adapter s's rows are order[start[s]..start[s+1]) */
    const float *const *a;    /* [adapters * layers * LORA_PARTS] */
    const float *const *b;
    const int32_t *rank;
    float *t;                 /* scratch: [rows in `order`, t_stride >= the widest rank] */
    int32_t t_stride;
} Lora;

/* Each thread's own scores: `columns` floats rounded up to whole cache lines. */
static int64_t scores_floats(int32_t columns) { return ((int64_t)columns + 15) / 16 * 16; }

/* The widest input of a product: what a row of `Scratch.narrow` holds. */
static int64_t widest_input(const Model *m) {
    int64_t widest = m->hidden > m->inter ? m->hidden : m->inter;
    return widest > (int64_t)m->heads * m->dim ? widest : (int64_t)m->heads * m->dim;
}

/* Scratch floats a call over `rows` rows and `columns` columns on `threads` threads needs
 * (the caller allocates them once per size). */
int64_t textgen_scratch_floats(const Model *m, int32_t rows, int32_t columns, int32_t threads) {
    int64_t qkv = (int64_t)(m->heads + 2 * m->kv_heads) * m->dim;
    int64_t per_row = 2 * (int64_t)m->hidden + qkv + (int64_t)m->heads * m->dim
                      + 2 * (int64_t)m->inter + (widest_input(m) + 1) / 2 + 1;
    return threads * scores_floats(columns) + rows * per_row;
}

/* The scratch space of a call, carved as textgen_scratch_floats counts it. */
typedef struct {
    float *x;              /* [rows, hidden] residual stream */
    float *h;              /* [rows, hidden] normed, or a product's output */
    float *qkv;            /* [rows, (heads + 2 kv_heads) dim] */
    float *attn;           /* [rows, heads dim] */
    float *mlp;            /* [rows, 2 inter] */
    float *scores;         /* [threads, scores_floats(columns)] */
    int64_t scores_stride;
    void *narrow;          /* [rows, widest input]: a product's input rows in bfloat16, or
                              in bytes then a scale a row (int8) */
} Scratch;

static Scratch carve(const Model *m, float *base, int32_t rows, int32_t columns,
                     int32_t threads) {
    Scratch s;
    s.x = base;
    s.h = s.x + (int64_t)rows * m->hidden;
    s.qkv = s.h + (int64_t)rows * m->hidden;
    s.attn = s.qkv + (int64_t)rows * (m->heads + 2 * m->kv_heads) * m->dim;
    s.mlp = s.attn + (int64_t)rows * m->heads * m->dim;
    s.scores = s.mlp + (int64_t)rows * 2 * m->inter;
    s.scores_stride = scores_floats(columns);
    s.narrow = s.scores + s.scores_stride * threads;
    return s;
}

/* This thread's slice of a scratch array. */
static float *own(float *base, int64_t stride) { return base + omp_get_thread_num() * stride; }

static void rms_norm(const float *x, const float *weight, float *y, int n, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) sum += x[i] * x[i];
    float scale = 1.0f / sqrtf(sum / (float)n + eps);
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * weight[i];
}

/* AVX2 with FMA and no AVX-512 (AMD Zen 1-3, Intel before Skylake-SP and its client cores):
 * float32 panels get their own tile (`avx2_block`); the other builds keep the plain loops. */
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__) && !defined(WEIGHTS_BF16) \
    && !defined(WEIGHTS_INT8)
#define AVX2_F32 1
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>

/* The four sums of four vectors, as one vector: halving each vector and adding pairs
 * (~5 instructions a sum, against ~10 for four separate horizontal reductions). */
static inline __m128 sum4(const __m512 v[4]) {
    __m256 h[4];
    for (int j = 0; j < 4; j++)
        h[j] = _mm256_add_ps(_mm512_castps512_ps256(v[j]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[j]), 1)));
    __m128 q[4];
    for (int j = 0; j < 4; j++)
        q[j] = _mm_add_ps(_mm256_castps256_ps128(h[j]), _mm256_extractf128_ps(h[j], 1));
    return _mm_hadd_ps(_mm_hadd_ps(q[0], q[1]), _mm_hadd_ps(q[2], q[3]));
}
#endif

/* The rows of a product's tile: each panel is read from cache once per 8 rows (6 with AVX2,
 * whose 16 vector registers hold 6 rows' sums of half a panel). */
#if defined(AVX2_F32)
#define TILE_ROWS 6
#else
#define TILE_ROWS 8
#endif

#if defined(AVX2_F32)
/* `rows` rows by `vectors` x 8 outputs of a panel from `part` (all 32, or a half: one cache
 * line an input), in at most 12 sums, the weight vectors and a broadcast in the 16 registers:
 * 6 or 4 rows by a half, 1 or 2 rows by the whole panel (4 chains of multiply-adds a row, as
 * one row needs to hide their latency). The sums of an output run over the inputs in order,
 * as in the plain loops. Stores the first `width` (<= vectors x 8) outputs a row. */
static inline __attribute__((always_inline)) void avx2_block(
        const float *part, const float *x, int x_stride, int in, const float *bias, float *y,
        int y_stride, const int rows, const int vectors, int width) {
    __m256 acc[6][4];
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < vectors; v++) acc[i][v] = _mm256_setzero_ps();
    for (int k = 0; k < in; k++) {
        __m256 w[4];
        for (int v = 0; v < vectors; v++) w[v] = _mm256_load_ps(part + (int64_t)k * 32 + v * 8);
        for (int i = 0; i < rows; i++) {
            __m256 xv = _mm256_broadcast_ss(x + (int64_t)i * x_stride + k);
            for (int v = 0; v < vectors; v++) acc[i][v] = _mm256_fmadd_ps(xv, w[v], acc[i][v]);
        }
    }
    /* The sums leave the registers in loops of constant bounds only: a loop of variable
     * bound (`width`) touching `acc` made GCC keep it in memory, storing every sum each input. */
    float sums[6][32];
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < vectors; v++) _mm256_storeu_ps(sums[i] + v * 8, acc[i][v]);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < width; j++)
            y[(int64_t)i * y_stride + j] = sums[i][j] + (bias ? bias[j] : 0.0f);
}
#endif

#if defined(__AVX512F__)
/* Stores a tile's sums (plus the bias) into the first `width` of its 32 outputs per row. */
static inline __attribute__((always_inline)) void store_tile(
        __m512 acc[TILE_ROWS][2], const float *bias, float *y, int y_stride, const int nr,
        int width) {
    uint32_t keep = width >= 32 ? 0xffffffffu : (1u << width) - 1u;
    __mmask16 k0 = (__mmask16)keep, k1 = (__mmask16)(keep >> 16);
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
    for (int i = 0; i < nr; i++) {
        _mm512_mask_storeu_ps(y + (int64_t)i * y_stride, k0, _mm512_add_ps(acc[i][0], b0));
        _mm512_mask_storeu_ps(y + (int64_t)i * y_stride + 16, k1, _mm512_add_ps(acc[i][1], b1));
    }
}
#endif

/* A product's input rows from row `r` on, as the build multiplies them. */
typedef struct {
    const float *x;          /* float32 rows, stride x_stride */
    int x_stride;
    const void *narrow;      /* bfloat16 (native pairs) or offset bytes (int8) rows, stride in */
    const float *row_scale;  /* int8: each row's scale for each block, [rows][in / BLOCK] */
} Inputs;

static inline Inputs from_row(Inputs rows, int r, int in) {
    rows.x += (int64_t)r * rows.x_stride;
#if defined(WEIGHTS_BF16)
    if (rows.narrow) rows.narrow = (const uint16_t *)rows.narrow + (int64_t)r * in;
#elif defined(WEIGHTS_INT8)
    rows.narrow = (const uint8_t *)rows.narrow + (int64_t)r * in;
    rows.row_scale += (int64_t)r * (in / BLOCK);
#else
    (void)in;
#endif
    return rows;
}

#if defined(WEIGHTS_INT8) && !(defined(__AVX512F__) && defined(__AVX512VNNI__))
/* One row of quantized inputs (`bytes`, its block scales `block_scale`) by the 32 outputs of
 * an int8 panel, in plain loops: the same sums as the VNNI path, in the same order of float
 * operations, so every CPU gives the same values. */
static void int8_row(const weight_t *panel, const float *scales, const uint8_t *bytes,
                     const float *block_scale, int in, float *value) {
    float acc[32] = {0};
    for (int b = 0; b < in / BLOCK; b++) {
        int32_t sum[32] = {0}, taken[32] = {0};
        for (int k = b * BLOCK; k < (b + 1) * BLOCK; k += 4)
            for (int e = 0; e < 4; e++) {
                const weight_t *wk = panel + (int64_t)k * 32 + e;
                int32_t xv = bytes[k + e];
#pragma omp simd
                for (int j = 0; j < 32; j++) {
                    sum[j] += xv * wk[j * 4];
                    taken[j] += 128 * wk[j * 4];
                }
            }
        for (int j = 0; j < 32; j++) acc[j] = fmaf((float)(sum[j] - taken[j]), block_scale[b], acc[j]);
    }
    for (int j = 0; j < 32; j++) value[j] = acc[j] * scales[j];
}
#endif

/* `nr` rows (up to TILE_ROWS) by the `width` (<= 32) outputs of one panel starting at output
 * `n`: per input (or pair or quad of inputs), one load of the panel's two vectors and one
 * broadcast a row feed two multiply-adds a row, with no horizontal sums at the end. */
static inline __attribute__((always_inline)) void tile(
        const weight_t *w, int n, const float *bias, Inputs rows, float *y, int in, int out,
        int y_stride, const int nr, int width) {
    const weight_t *panel = w + (int64_t)n * in;
    const float *x = rows.x;
    const int x_stride = rows.x_stride;
#if defined(WEIGHTS_INT8)
    const float *scales = int8_scales(w, in, out) + n;
    const uint8_t *bytes = rows.narrow;
    const int blocks = in / BLOCK;
    (void)x; (void)x_stride;  /* the rows' bytes serve instead */
#else
    (void)out;
#endif
#if defined(__AVX512F__)
    __m512 acc[TILE_ROWS][2];
#if defined(WEIGHTS_INT8) && defined(__AVX512VNNI__)
    /* Rows in groups of 4 within each block, the float sums waiting in L1 between blocks: 8
     * rows' integer and float sums at once outnumbered the 32 vector registers, and the block
     * loop spilled on every input quad. A group re-reads the block's weights from L1. */
    float total[TILE_ROWS][32] __attribute__((aligned(64)));
    memset(total, 0, sizeof(float) * 32 * (size_t)nr);
    const __m512i offset = _mm512_set1_epi8((char)128);
    for (int b = 0; b < blocks; b++) {
        const weight_t *block = panel + (int64_t)b * BLOCK * 32;
        __m512i taken0 = _mm512_setzero_si512(), taken1 = taken0;
        for (int k = 0; k < BLOCK; k += 4) {  /* 128 * the block's weights */
            taken0 = _mm512_dpbusd_epi32(taken0, offset, _mm512_load_si512(block + k * 32));
            taken1 = _mm512_dpbusd_epi32(taken1, offset, _mm512_load_si512(block + k * 32 + 64));
        }
        for (int g = 0; g < nr; g += 4) {
            const int rows_here = nr - g < 4 ? nr - g : 4;
            __m512i sums[4][2];
            for (int i = 0; i < rows_here; i++) sums[i][0] = sums[i][1] = _mm512_setzero_si512();
            for (int k = 0; k < BLOCK; k += 4) {
                __m512i w0 = _mm512_load_si512(block + k * 32);
                __m512i w1 = _mm512_load_si512(block + k * 32 + 64);
                for (int i = 0; i < rows_here; i++) {
                    int32_t quad;
                    memcpy(&quad, bytes + (int64_t)(g + i) * in + b * BLOCK + k, sizeof quad);
                    __m512i xv = _mm512_set1_epi32(quad);
                    sums[i][0] = _mm512_dpbusd_epi32(sums[i][0], xv, w0);
                    sums[i][1] = _mm512_dpbusd_epi32(sums[i][1], xv, w1);
                }
            }
            for (int i = 0; i < rows_here; i++) {
                float *t = total[g + i];
                __m512 scale = _mm512_set1_ps(rows.row_scale[(int64_t)(g + i) * blocks + b]);
                _mm512_store_ps(t, _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[i][0], taken0)), scale,
                    _mm512_load_ps(t)));
                _mm512_store_ps(t + 16, _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[i][1], taken1)), scale,
                    _mm512_load_ps(t + 16)));
            }
        }
    }
    __m512 scale0 = _mm512_loadu_ps(scales), scale1 = _mm512_loadu_ps(scales + 16);
    for (int i = 0; i < nr; i++) {
        acc[i][0] = _mm512_mul_ps(_mm512_load_ps(total[i]), scale0);
        acc[i][1] = _mm512_mul_ps(_mm512_load_ps(total[i] + 16), scale1);
    }
#elif defined(WEIGHTS_INT8)
    for (int i = 0; i < nr; i++) {
        float value[32];
        int8_row(panel, scales, bytes + (int64_t)i * in, rows.row_scale + (int64_t)i * blocks,
                 in, value);
        acc[i][0] = _mm512_loadu_ps(value);
        acc[i][1] = _mm512_loadu_ps(value + 16);
    }
#else
    for (int i = 0; i < nr; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#if !defined(WEIGHTS_BF16)
    for (int k = 0; k < in; k++) {
        __m512 w0 = _mm512_load_ps(panel + (int64_t)k * 32);
        __m512 w1 = _mm512_load_ps(panel + (int64_t)k * 32 + 16);
        for (int i = 0; i < nr; i++) {
            __m512 xv = _mm512_set1_ps(x[(int64_t)i * x_stride + k]);
            acc[i][0] = _mm512_fmadd_ps(xv, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(xv, w1, acc[i][1]);
        }
    }
#elif defined(__AVX512BF16__)
    (void)x; (void)x_stride;
    const uint16_t *narrow = rows.narrow;
    for (int k = 0; k < in; k += 2) {
        __m512bh w0 = (__m512bh)_mm512_load_si512(panel + (int64_t)k * 32);
        __m512bh w1 = (__m512bh)_mm512_load_si512(panel + (int64_t)k * 32 + 32);
        for (int i = 0; i < nr; i++) {
            int32_t pair;
            memcpy(&pair, narrow + (int64_t)i * in + k, sizeof pair);
            __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], w0, xv);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], w1, xv);
        }
    }
#else
    const __m512i high = _mm512_set1_epi32((int32_t)0xffff0000u);
    for (int k = 0; k < in; k += 2) {  /* each lane holds inputs k (low half) and k + 1 */
        __m512i p0 = _mm512_load_si512(panel + (int64_t)k * 32);
        __m512i p1 = _mm512_load_si512(panel + (int64_t)k * 32 + 32);
        __m512 w00 = _mm512_castsi512_ps(_mm512_slli_epi32(p0, 16));
        __m512 w01 = _mm512_castsi512_ps(_mm512_and_si512(p0, high));
        __m512 w10 = _mm512_castsi512_ps(_mm512_slli_epi32(p1, 16));
        __m512 w11 = _mm512_castsi512_ps(_mm512_and_si512(p1, high));
        for (int i = 0; i < nr; i++) {
            __m512 x0 = _mm512_set1_ps(x[(int64_t)i * x_stride + k]);
            __m512 x1 = _mm512_set1_ps(x[(int64_t)i * x_stride + k + 1]);
            acc[i][0] = _mm512_fmadd_ps(x1, w01, _mm512_fmadd_ps(x0, w00, acc[i][0]));
            acc[i][1] = _mm512_fmadd_ps(x1, w11, _mm512_fmadd_ps(x0, w10, acc[i][1]));
        }
    }
#endif
#endif
    store_tile(acc, bias, y, y_stride, nr, width);
#elif defined(AVX2_F32)
    (void)out;
    if (nr <= 2) {  /* nr is TILE_ROWS, 4 or 1 here (matmul_rows), a constant once inlined */
        avx2_block(panel, x, x_stride, in, bias, y, y_stride, nr, 4, width);
    } else {
        for (int h = 0; h * 16 < width; h++)
            avx2_block(panel + h * 16, x, x_stride, in, bias ? bias + h * 16 : NULL, y + h * 16,
                       y_stride, nr, 2, width - h * 16 < 16 ? width - h * 16 : 16);
    }
#else
    for (int i = 0; i < nr; i++) {
        float acc[32] = {0};
#if defined(WEIGHTS_INT8)
        int8_row(panel, scales, bytes + (int64_t)i * in, rows.row_scale + (int64_t)i * blocks,
                 in, acc);
#else
        const float *xi = x + (int64_t)i * x_stride;
        for (int k = 0; k < in; k += PAIRS)
            for (int e = 0; e < PAIRS; e++) {
                const weight_t *wk = panel + (int64_t)k * 32 + e;
                float xv = xi[k + e];
#pragma omp simd
                for (int j = 0; j < 32; j++) acc[j] += widen(wk[j * PAIRS]) * xv;
            }
#endif
        for (int j = 0; j < width; j++) y[(int64_t)i * y_stride + j] = acc[j] + (bias ? bias[j] : 0.0f);
    }
#endif
}

/* The product's inputs as the build multiplies them, into `narrow` where it needs a copy:
 * bfloat16 rounded to nearest even (native pairs), or int8 (each block scaled to -127..127,
 * offset by 128, then a scale each block a row). Inside the parallel region; ends with its
 * barrier. */
static Inputs prepare_inputs(const float *x, void *narrow, int rows, int in, int x_stride) {
    Inputs prepared = {x, x_stride, NULL, NULL};
#if defined(WEIGHTS_BF16) && defined(__AVX512BF16__)
#pragma omp for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * x_stride;
        uint16_t *nr = (uint16_t *)narrow + (int64_t)r * in;
        int k = 0;
        for (; k + 16 <= in; k += 16)
            _mm256_storeu_si256((__m256i *)(nr + k),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xr + k)));
        for (; k < in; k++) nr[k] = (uint16_t)_mm_cvtness_sbh(xr[k]);
    }
    prepared.narrow = narrow;
#elif defined(WEIGHTS_INT8)
    float *row_scale = (float *)((uint8_t *)narrow + (int64_t)rows * in);
#pragma omp for schedule(static)
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < in / BLOCK; b++) {
            const float *xb = x + (int64_t)r * x_stride + b * BLOCK;
            uint8_t *q = (uint8_t *)narrow + (int64_t)r * in + b * BLOCK;
            float top = 0.0f;
#pragma omp simd reduction(max : top)
            for (int k = 0; k < BLOCK; k++) {  /* not fmaxf: GCC calls it per element */
                float magnitude = fabsf(xb[k]);
                top = magnitude > top ? magnitude : top;
            }
            float scale = top > 0.0f ? top / 127.0f : 1.0f, inverse = 1.0f / scale;
#pragma omp simd
            for (int k = 0; k < BLOCK; k++) q[k] = (uint8_t)(nearbyintf(xb[k] * inverse) + 128.0f);
            row_scale[(int64_t)r * (in / BLOCK) + b] = scale;
        }
    prepared.narrow = narrow;
    prepared.row_scale = row_scale;
#else
    (void)narrow; (void)rows; (void)in;
#endif
    return prepared;
}

/* y[r, n] = sum_k W[n, k] x[r, k] (+ bias[n]) for every row r, W as panels. Panels outside,
 * rows inside: each panel is read from memory once a call, however many rows. Called inside
 * the parallel region by every thread, which each take a share of the panels (the `omp for`,
 * whose end is the barrier after which `y` is complete). `narrow`: scratch for the inputs as
 * the build multiplies them (Scratch.narrow). */
static void matmul_rows(const weight_t *w, const float *bias, const float *x, float *y,
                        int rows, int in, int out, int x_stride, int y_stride, void *narrow) {
    Inputs inputs = prepare_inputs(x, narrow, rows, in, x_stride);
#pragma omp for schedule(static)
    for (int n = 0; n < out; n += 32) {
        const float *bn = bias ? bias + n : NULL;
        int width = out - n < 32 ? out - n : 32, r = 0;
        for (; r + TILE_ROWS <= rows; r += TILE_ROWS)
            tile(w, n, bn, from_row(inputs, r, in), y + (int64_t)r * y_stride + n, in, out,
                 y_stride, TILE_ROWS, width);
        for (; r + 4 <= rows; r += 4)
            tile(w, n, bn, from_row(inputs, r, in), y + (int64_t)r * y_stride + n, in, out,
                 y_stride, 4, width);
        for (; r < rows; r++)
            tile(w, n, bn, from_row(inputs, r, in), y + (int64_t)r * y_stride + n, in, out,
                 y_stride, 1, width);
    }
}

/* x * cos + x[swap] * sin, where swap exchanges the two halves of the head (rotate_half). */
static void rotate(float *x, const float *cos, const float *sin, int dim) {
    float rotated[1024];
    int half = dim / 2;
    for (int d = 0; d < dim; d++) rotated[d] = x[d < half ? d + half : d - half];
    for (int d = 0; d < dim; d++) x[d] = x[d] * cos[d] + rotated[d] * sin[d];
}

/* scores[c] = q . keys[c] for `n` consecutive columns of `dim` floats. */
static void dots(const float *q, const float *keys, int n, int dim, float *scores) {
    int c = 0;
#if defined(__AVX512F__)
    if (dim % 16 == 0) {
        for (; c + 4 <= n; c += 4) {  /* four columns a reduction tree, as in `block` */
            __m512 acc[4];
            for (int j = 0; j < 4; j++) acc[j] = _mm512_setzero_ps();
            for (int d = 0; d < dim; d += 16) {
                __m512 qv = _mm512_loadu_ps(q + d);
                for (int j = 0; j < 4; j++)
                    acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(keys + (int64_t)(c + j) * dim + d),
                                             acc[j]);
            }
            _mm_storeu_ps(scores + c, sum4(acc));
        }
    }
#endif
    for (; c < n; c++) {
        const float *k = keys + (int64_t)c * dim;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < dim; d++) dot += q[d] * k[d];
        scores[c] = dot;
    }
}

#if defined(__AVX512F__)
/* out = inverse * sum_c scores[c] values[c] over the kept columns, for a head of 16 * `nv`
 * floats held in `nv` registers (a plain loop would load and store `out` every column, as
 * it may alias the values). */
static inline __attribute__((always_inline)) void weigh_values(
        const float *scores, const float *values, const int64_t *mask, int start, int end,
        float inverse, float *out, const int nv) {
    __m512 acc[8];
    for (int j = 0; j < nv; j++) acc[j] = _mm512_setzero_ps();
    for (int c = start; c <= end; c++) {
        if (mask && !mask[c - start]) continue;
        const float *v = values + (int64_t)c * nv * 16;
        __m512 p = _mm512_set1_ps(scores[c - start]);
        for (int j = 0; j < nv; j++) acc[j] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * j), acc[j]);
    }
    __m512 scale = _mm512_set1_ps(inverse);
    for (int j = 0; j < nv; j++) _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(acc[j], scale));
}
#endif

/* One head of one row: softmax(q k^T / sqrt(dim)) v over columns `start..end`, skipping
 * those `mask` (mask[0] is column `start`) zeroes; a NULL mask keeps them all. */
static void attend(const float *q, const float *keys, const float *values, const int64_t *mask,
                   int start, int end, int dim, float *scores, float *out) {
    float scale = 1.0f / sqrtf((float)dim), top = -INFINITY;
    dots(q, keys + (int64_t)start * dim, end - start + 1, dim, scores);
    for (int c = 0; c <= end - start; c++) {
        if (mask && !mask[c]) continue;
        scores[c] *= scale;
        if (scores[c] > top) top = scores[c];
    }
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int c = 0; c <= end - start; c++) {
        scores[c] = (!mask || mask[c]) ? expf(scores[c] - top) : 0.0f;
        total += scores[c];
    }
    float inverse = 1.0f / total;
#if defined(__AVX512F__)
    switch (dim) {  /* the common head sizes: the sum in registers, not in `out` */
        case 32: weigh_values(scores, values, mask, start, end, inverse, out, 2); return;
        case 64: weigh_values(scores, values, mask, start, end, inverse, out, 4); return;
        case 128: weigh_values(scores, values, mask, start, end, inverse, out, 8); return;
    }
#endif
    memset(out, 0, sizeof(float) * dim);
    for (int c = start; c <= end; c++) {
        if (mask && !mask[c - start]) continue;
        const float *v = values + (int64_t)c * dim;
        float p = scores[c - start];
#pragma omp simd
        for (int d = 0; d < dim; d++) out[d] += p * v[d];
    }
#pragma omp simd
    for (int d = 0; d < dim; d++) out[d] *= inverse;
}

/* The columns row `row_mask` attends to: from its first kept column to `end`. A row is left
 * padded (KVBatch), so they are normally all kept and the mask is not needed (NULL); else
 * the mask from that column. Skipping the padding matters: one long prompt in the batch
 * widens every row's columns. */
static const int64_t *row_columns(const int64_t *row_mask, int start, int end, int *first) {
    int c = start;
    while (c < end && !row_mask[c - start]) c++;
    *first = c;
    for (int k = c; k <= end; k++)
        if (!row_mask[k - start]) return row_mask + (c - start);
    return NULL;
}

/* Where one row of a forward pass keeps its keys and values and what it attends to. */
typedef struct {
    int64_t kv_offset;     /* floats from a layer buffer's start to the row's [kv_heads, columns, dim] */
    int32_t column;        /* the column its key and value are written to */
    int32_t first;         /* the first column it attends to; the last is `column` */
    const int64_t *kept;   /* the mask from `first` (0: skip the column), or NULL: all kept */
    int64_t position;      /* its rotary position */
} Place;

/* x[j] += y[j] for `n` floats, the threads sharing them. */
static void add_into(float *x, const float *y, int64_t n) {
#pragma omp for simd schedule(static)
    for (int64_t j = 0; j < n; j++) x[j] += y[j];
}

/* y += B (A x) for each row that runs an adapter (rows of `in` inputs at stride `x_stride`,
 * of `out` outputs at stride `y_stride`), right after the base product wrote y. Adapter by
 * adapter, so each of its matrices is read once for all of its rows (a row at a time read
 * them once a row, and with many adapters they left the cache between rows): first T = X A^T
 * for its rows, each row of A against every row, then each row's outputs from B^T's rows. A
 * few hundred multiply-adds per output, beside the thousands of the base product. Runs
 * inside the caller's parallel region. */
static void add_lora(const Lora *lora, int layers, int i, LoraPart p, const float *x,
                     int x_stride, int in, float *y, int y_stride, int out) {
    if (lora == NULL) return;
    for (int s = 0; s < lora->adapters; s++) {
        const int first = lora->start[s], count = lora->start[s + 1] - first;
        const int64_t k = ((int64_t)s * layers + i) * LORA_PARTS + p;
        const int rank = lora->rank[k];
        if (count == 0 || rank == 0) continue;
        const float *a = lora->a[k], *bt = lora->b[k];
#pragma omp for collapse(2) schedule(static)
        for (int j = 0; j < rank; j++)
            for (int g = 0; g < count; g++) {
                const float *aj = a + (int64_t)j * in;
                const float *xr = x + (int64_t)lora->order[first + g] * x_stride;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int c = 0; c < in; c++) acc += aj[c] * xr[c];
                lora->t[(int64_t)(first + g) * lora->t_stride + j] = acc;
            }
#pragma omp for schedule(static)
        for (int g = 0; g < count; g++) {
            float *yr = y + (int64_t)lora->order[first + g] * y_stride;
            const float *tg = lora->t + (int64_t)(first + g) * lora->t_stride;
            for (int j = 0; j < rank; j++) {  /* B^T's rows: each a run along the outputs */
                const float *bj = bt + (int64_t)j * out, tj = tg[j];
#pragma omp simd
                for (int o = 0; o < out; o++) yr[o] += bj[o] * tj;
            }
        }
    }
}

/* The decoder layers over `rows` rows whose embeddings are in scratch's `x`, each row placed in
 * the cache by `place`; a row may attend to the columns the rows before it wrote in the same
 * layer (a prompt's tokens, in prefill): every row writes its keys and values before any row
 * attends. Leaves the residual stream in `x`. Runs inside the caller's parallel region. */
static void layers(const Model *m, int32_t rows, const Place *place, float *const *kv,
                   int32_t columns, const Scratch *s, const Lora *lora) {
    const int hidden = m->hidden, dim = m->dim, heads = m->heads, kv_heads = m->kv_heads;
    const int qkv_width = (heads + 2 * kv_heads) * dim, attn_width = heads * dim;
    const int group = heads / kv_heads;
    float *x = s->x, *h = s->h, *qkv = s->qkv, *attn = s->attn, *mlp = s->mlp;
    float *scores = own(s->scores, s->scores_stride);
    for (int i = 0; i < m->layers; i++) {
        const Layer *layer = &m->layer[i];
        float *keys = kv[2 * i], *values = kv[2 * i + 1];
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++)
            rms_norm(x + (int64_t)r * hidden, layer->input_norm, h + (int64_t)r * hidden, hidden,
                     m->eps);
        matmul_rows(layer->qkv, layer->qkv_bias, h, qkv, rows, hidden, qkv_width, hidden,
                    qkv_width, s->narrow);
        add_lora(lora, m->layers, i, LORA_QKV, h, hidden, hidden, qkv, qkv_width, qkv_width);
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const Place *p = &place[r];
            float *row = qkv + (int64_t)r * qkv_width;
            const float *cos = m->cos + p->position * dim, *sin = m->sin + p->position * dim;
            for (int head = 0; head < heads + kv_heads; head++)
                rotate(row + head * dim, cos, sin, dim);
            for (int kh = 0; kh < kv_heads; kh++) {
                int64_t slot = p->kv_offset + ((int64_t)kh * columns + p->column) * dim;
                memcpy(keys + slot, row + (heads + kh) * dim, sizeof(float) * dim);
                memcpy(values + slot, row + (heads + kv_heads + kh) * dim, sizeof(float) * dim);
            }
        }
        /* Round-robin: in a prefill a later row attends to more columns. */
#pragma omp for collapse(2) schedule(static, 1)
        for (int r = 0; r < rows; r++)
            for (int head = 0; head < heads; head++) {
                const Place *p = &place[r];
                int64_t base = p->kv_offset + (int64_t)(head / group) * columns * dim;
                attend(qkv + (int64_t)r * qkv_width + head * dim, keys + base, values + base,
                       p->kept, p->first, p->column, dim, scores,
                       attn + (int64_t)r * attn_width + head * dim);
            }
        /* x += attn W_out^T (+ bias), through h as the product's output */
        matmul_rows(layer->out, layer->out_bias, attn, h, rows, attn_width, hidden, attn_width,
                    hidden, s->narrow);
        add_lora(lora, m->layers, i, LORA_OUT, attn, attn_width, attn_width, h, hidden, hidden);
        add_into(x, h, (int64_t)rows * hidden);
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++)
            rms_norm(x + (int64_t)r * hidden, layer->post_norm, h + (int64_t)r * hidden, hidden,
                     m->eps);
        matmul_rows(layer->gate_up, NULL, h, mlp, rows, hidden, 2 * m->inter, hidden,
                    2 * m->inter, s->narrow);
        add_lora(lora, m->layers, i, LORA_GATE_UP, h, hidden, hidden, mlp, 2 * m->inter,
                 2 * m->inter);
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            float *gate = mlp + (int64_t)r * 2 * m->inter, *up = gate + m->inter;
#pragma omp simd
            for (int j = 0; j < m->inter; j++) gate[j] = gate[j] / (1.0f + expf(-gate[j])) * up[j];
        }
        matmul_rows(layer->down, NULL, mlp, h, rows, m->inter, hidden, 2 * m->inter, hidden,
                    s->narrow);
        add_lora(lora, m->layers, i, LORA_DOWN, mlp, 2 * m->inter, m->inter, h, hidden, hidden);
        add_into(x, h, (int64_t)rows * hidden);
    }
}

/* The final norm and the vocabulary projection of `rows` consecutive rows of the residual
 * stream from `x`, through the scratch's `h`. */
static void project(const Model *m, const float *x, const Scratch *s, int32_t rows,
                    float *logits) {
#pragma omp for schedule(static)
    for (int r = 0; r < rows; r++)
        rms_norm(x + (int64_t)r * m->hidden, m->final_norm, s->h + (int64_t)r * m->hidden,
                 m->hidden, m->eps);
    matmul_rows(m->lm_head, NULL, s->h, logits, rows, m->hidden, m->vocab, m->hidden, m->vocab,
                s->narrow);
}

/* Copies each row's embedding into `x`, from the embedding table or, when the output layer is
 * tied to it, from the output layer's panels (an int8 table is panels too); -1 when a token
 * is outside the table. */
static int embed(const Model *m, int32_t rows, const int64_t *tokens, float *x) {
    for (int r = 0; r < rows; r++) {
        int64_t t = tokens[r];
        float *xr = x + (int64_t)r * m->hidden;
        if (t < 0 || t >= m->vocab) return -1;
#if defined(WEIGHTS_INT8)
        const int plain = 0;  /* an untied int8 embedding is a panel matrix too */
#else
        const int plain = m->embed != NULL;
#endif
        if (plain) {
            for (int k = 0; k < m->hidden; k++) xr[k] = widen(m->embed[t * m->hidden + k]);
        } else {
            const weight_t *table = m->embed ? m->embed : m->lm_head;
            for (int k = 0; k < m->hidden; k++)
                xr[k] = weight_at(table, m->hidden, m->vocab, t, k);
        }
    }
    return 0;
}

/* One token for each of `rows` rows. tokens, positions: [rows]; mask: the live rows' mask
 * from column `start` to `end` inclusive (row stride `mask_stride`); kv: per
 * layer its key then its value buffer, [row capacity, kv_heads, columns, dim]. Writes
 * column `end` of the cache and the logits [rows, vocab]. Returns 0, or -1 when a
 * token or position is outside the tables or a row or column outside the cache (the caller
 * raises; nothing was written). */
int textgen_decode(const Model *m, int32_t rows, int32_t start, int32_t end,
                   const int64_t *tokens, const int64_t *positions, const int64_t *mask,
                   int32_t mask_stride, float *const *kv, int32_t row_capacity,
                   int32_t columns, int32_t table_positions, float *logits, float *scratch,
                   int32_t threads, const Lora *lora) {
    if (rows < 1 || rows > row_capacity || start < 0 || start > end || end >= columns
            || threads < 1)
        return -1;
    for (int r = 0; r < rows; r++)
        if (positions[r] < 0 || positions[r] >= table_positions) return -1;
    Scratch s = carve(m, scratch, rows, columns, threads);
    if (embed(m, rows, tokens, s.x)) return -1;
    Place *place = malloc(sizeof(Place) * (size_t)rows);
    if (!place) return -1;
    for (int r = 0; r < rows; r++) {
        place[r].kv_offset = (int64_t)r * m->kv_heads * columns * m->dim;
        place[r].column = end;
        place[r].kept = row_columns(mask + (int64_t)r * mask_stride, start, end, &place[r].first);
        place[r].position = positions[r];
    }
#pragma omp parallel num_threads(threads)
    {
        layers(m, rows, place, kv, columns, &s, lora);
        project(m, s.x, &s, rows, logits);
    }
    free(place);
    return 0;
}

/* The prefill of `count` prompts in one forward pass: their tokens are the rows, one prompt
 * after another (`tokens`, `lengths`), each token at its position in its prompt and attending
 * to its own prompt's columns up to its own; the weights are read once for all of them. kv:
 * per layer its key then its value buffer, [count, kv_heads, columns, dim]; prompt i goes to
 * its row of the buffers, right-aligned at `columns` (left padding before it is not touched).
 * Writes the logits of each prompt's last token only, [count, vocab]: the vocabulary
 * projection of every prompt token would cost as much as the layers. A prompt whose
 * `every_position` is set (NULL: none is) gets the logits of each of its tokens instead, so
 * the logits hold, prompt after prompt, one row or `lengths[i]` rows. Returns 0, or -1
 * (nothing written) when a token is outside the table or a prompt does not fit the columns or
 * the rotary table. */
int textgen_prefill(const Model *m, int32_t count, const int32_t *lengths,
                    const int64_t *tokens, const int32_t *every_position, float *const *kv,
                    int32_t columns, int32_t table_positions, float *logits, float *scratch,
                    int32_t threads, const Lora *lora) {
    if (count < 1 || threads < 1) return -1;
    int32_t rows = 0;
    for (int i = 0; i < count; i++) {
        if (lengths[i] < 1 || lengths[i] > columns || lengths[i] > table_positions) return -1;
        rows += lengths[i];
    }
    Scratch s = carve(m, scratch, rows, columns, threads);
    if (embed(m, rows, tokens, s.x)) return -1;
    int32_t projected = 0; /* rows of logits written; shared by the parallel region */
    Place *place = malloc(sizeof(Place) * (size_t)rows);
    if (!place) return -1;
    for (int i = 0, r = 0; i < count; i++) {
        int32_t first = columns - lengths[i];
        for (int t = 0; t < lengths[i]; t++, r++)
            place[r] = (Place){.kv_offset = (int64_t)i * m->kv_heads * columns * m->dim,
                               .column = first + t, .first = first, .kept = NULL,
                               .position = t};
    }
#pragma omp parallel num_threads(threads)
    {
        layers(m, rows, place, kv, columns, &s, lora);
#pragma omp single
        {   /* the rows to project to the front, in order (each moves down or stays) */
            for (int i = 0, end = 0; i < count; i++) {
                int32_t keep = every_position && every_position[i] ? lengths[i] : 1;
                end += lengths[i];
                memmove(s.x + (int64_t)projected * m->hidden,
                        s.x + (int64_t)(end - keep) * m->hidden,
                        sizeof(float) * m->hidden * (size_t)keep);
                projected += keep;
            }
        }
        project(m, s.x, &s, projected, logits);
    }
    free(place);
    return 0;
}

/* y = x W^T for `rows` rows of `in` floats, W [out, in] as panels, on `threads` threads: one
 * product alone, as the layers run it. Why: `dtype` `auto` times it with float32 and with
 * bfloat16 panels at load, at the model's own widths, to pick the faster (textgen/core/dtypes.py).
 * `scratch`: rows * ((in + 1) / 2 + 1) floats. */
void textgen_product(const weight_t *w, const float *x, float *y, int32_t rows, int32_t in,
                     int32_t out, float *scratch, int32_t threads) {
#pragma omp parallel num_threads(threads)
    matmul_rows(w, NULL, x, y, rows, in, out, in, out, scratch);
}

/* Log-probabilities for the rows that ask (textgen/transformers_engine/logprobs.py), from raw
 * logits in one call: for each row of `logits` ([rows][vocab], `stride` floats apart) its
 * log-sum-exp and its `k` most likely tokens with their log-probabilities, best first.
 * Ties: the lower token id first. Why here: torch's log-sum-exp and top-k are two general
 * passes over the batch with their own set-up; this reads each row three times from cache
 * (its maximum, its sum of exponentials, a top-k kept by insertion above the k-th value) and
 * writes only what is asked. Rows are shared among the threads. */
static void row_logprobs(const float *row, int vocab, int k, float *lse_out, int64_t *top_ids,
                         float *top_values) {
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int i = 0; i < vocab; i++) top = row[i] > top ? row[i] : top;  /* fmaxf: a call each */
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < vocab; i++) sum += expf(row[i] - top);
    const float lse = top + logf(sum);
    *lse_out = lse;
    int found = 0;
    float floor_value = -INFINITY;  /* the k-th best value so far, once k are held */
    for (int base = 0; base < vocab && k > 0; base += 16) {
        const int end = base + 16 < vocab ? base + 16 : vocab;
        if (found == k) {  /* most chunks hold nothing above the k-th: one vector max each */
            float most = -INFINITY;
            for (int i = base; i < end; i++) most = row[i] > most ? row[i] : most;
            if (!(most > floor_value)) continue;
        }
        for (int i = base; i < end; i++) {
            float v = row[i];
            if (found == k && !(v > floor_value)) continue;
            int at = found < k ? found++ : k - 1;  /* drop the k-th when full */
            while (at > 0 && top_values[at - 1] < v) {
                top_values[at] = top_values[at - 1];
                top_ids[at] = top_ids[at - 1];
                at--;
            }
            top_values[at] = v;
            top_ids[at] = i;
            if (found == k) floor_value = top_values[k - 1];
        }
    }
    for (int j = 0; j < found; j++) top_values[j] -= lse;
}

void textgen_logprobs(const float *logits, int rows, int vocab, int64_t stride, int k,
                      float *lse, int64_t *top_ids, float *top_values, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int r = 0; r < rows; r++)
        row_logprobs(logits + (int64_t)r * stride, vocab, k, lse + r, top_ids + (int64_t)r * k,
                     top_values + (int64_t)r * k);
}
