/* kcuda.h — the CUDA kernels' launchers, callable from C (backend_cuda.c).
 *
 * One launcher per op, one op per .cu file, each with the name stem and the
 * argument order of its CPU twin (kernels/cpu, engine/model/backend_cpu.c).  Every
 * pointer is device memory unless its comment says otherwise; every launcher
 * enqueues on `st` and returns at once (no synchronisation, no allocation).
 * Each (row, head) or row is computed by one fixed group of threads in a fixed
 * order, so a row's result never depends on which other rows share the batch.
 * It does not manage memory or streams: backend_cuda.c does.
 */
#ifndef PPD_KCUDA_H
#define PPD_KCUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* struct eng_batch's per-row arrays as device copies (batch.h defines them). */
struct kc_batch {
    int n_tok, vis_words;
    const int32_t *pos, *slot, *kv_idx, *n_prefix, *grp_first, *grp_len;
    const int32_t *prefix_lo;   /* first committed entry each row sees (a sliding window: batch.h; else 0) */
    const uint64_t *vis;    /* [n_tok][vis_words], cut to the window */
};

/* The KV cache's geometry (kv_cache.h): element offset of (layer, slot, pos) is
 * ((layer * n_slot + slot) * max_seq + pos) * kv_dim. */
struct kc_kv {
    float *k, *v;
    int n_slot, max_seq, kv_dim;
};

/* GGUF weight bytes (n_out rows of n_in elements of `type`, enum kq_type) to
 * row-major f16.  Returns 0, or -1 for a type it does not know (nothing launched). */
int kc_dequant_f16(int type, const void *src, int64_t n_in, int64_t n_out, uint16_t *dst, cudaStream_t st);
/* 1 when kc_dequant_f16 knows the type. */
int kc_dequant_supported(int type);

/* out[r] = f16 table row ids[r]; ids[r] < 0 selects row -1-ids[r] of extra
 * (f32, n wide, n_extra rows), beyond n_extra a zero row. */
void kc_embed(const uint16_t *table, int64_t n, const int32_t *ids, int n_tok, const float *extra, int n_extra,
              float *out, cudaStream_t st);
/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of n.  Here and in
 * kc_attention and kc_swiglu, out16 (NULL: none) also gets out as f16, as
 * kc_f32_to_f16 would make it: the next matrix product's input. */
void kc_rmsnorm(const float *x, const float *w, int n_tok, int n, float eps, float *out, uint16_t *out16,
                cudaStream_t st);
/* RoPE on q (n_head heads) and k (n_head_kv heads) at the batch's positions, then
 * K and V rows into the cache at (layer, slot[r], kv_idx[r]).  neox: pairs
 * (i, i + n_rot/2), else (2i, 2i+1). */
/* The RoPE of kernels/cpu/ops.h (struct kq_rope) in the terms the kernel
 * uses; the host computes theta_scale and mscale with the CPU's expressions. */
struct kc_rope {
    int n_rot, neox;
    float theta_scale;          /* freq_base^(-2/n_rot) */
    float freq_scale, ext_factor, mscale, corr0, corr1;
    const float *freq_factors;  /* device, n_rot/2 values, or NULL */
};
void kc_rope_kv_store(float *q, float *k, const float *v, const struct kc_batch *b, const struct kc_kv *kv,
                      int layer, int n_head, int n_head_kv, int head_dim, const struct kc_rope *rope,
                      cudaStream_t st);
/* Largest head_dim kc_attention supports. */
#define KC_ATTN_MAX_HEAD_DIM 256
#ifdef __CUDACC__
#define KC_HOST_DEVICE __host__ __device__
#else
#define KC_HOST_DEVICE
#endif
/* Blocks that share one (row, head)'s keys: one below 1024 visible keys,
 * then one per 512 (2 chunks of 32 keys for each of a block's 8 warps), at
 * most KC_ATTN_MAX_SPLIT, so a long context's decode row keeps several SMs
 * busy (one block took 77 us a layer for a 7B model at 2048 keys on an
 * H200).  A function of the row's visible keys alone: a row sums alike in any
 * batch, and a tree row and its plainly decoded twin see the same keys. */
#define KC_ATTN_MAX_SPLIT 8
static KC_HOST_DEVICE inline int kc_attn_splits(int n_vis) {
    const int s = n_vis / 512;
    return s < 1 ? 1 : s > KC_ATTN_MAX_SPLIT ? KC_ATTN_MAX_SPLIT : s;
}
/* out[r] = softmax(q[r] K^T * scale) V over the entries row r sees (its slot's
 * [0, n_prefix) and the set bits of its group), online softmax split over the
 * keys; GQA: query head h reads KV head h / (n_head / n_head_kv).  tile_rows:
 * the mean length of the batch's runs of rows sharing slot, prefix and group
 * (a block then serves several rows of a run); the results do not depend on it.
 * n_split: the most kc_attn_splits of any row; above 1, ws holds n_tok *
 * n_head * n_split * (head_dim + 2) floats of partial states. */
void kc_attention(const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer, int n_head,
                  int n_head_kv, int head_dim, float scale, int tile_rows, int n_split, float *ws, float *out,
                  uint16_t *out16, cudaStream_t st);
/* out = silu(gate) * up over n_tok * n elements (out may be gate). */
void kc_swiglu(const float *gate, const float *up, int n_tok, int n, float *out, uint16_t *out16, cudaStream_t st);
/* x += y over n_tok * n elements. */
void kc_add(float *x, const float *y, int n_tok, int n, cudaStream_t st);
/* x[r] += bias for n_tok rows of n. */
void kc_add_bias(float *x, const float *bias, int n_tok, int n, cudaStream_t st);
/* x[r] += rows[map[r]] (rows of n) for the batch rows with map[r] >= 0: deep
 * prompt vectors into the PPD prompt rows (the CPU backend's add_rows). */
void kc_add_rows(float *x, const int32_t *map, int n_tok, const float *rows, int n, cudaStream_t st);
/* out[i][r][j] = src[r][width[0] + ... + width[i-1] + j]: a fused product's
 * rows (n_tok rows of sum(width)) dealt out to its n parts. */
#define KC_SPLIT_MAX 4
struct kc_split {
    float *out[KC_SPLIT_MAX];
    int width[KC_SPLIT_MAX];
    int n;
};
void kc_split(const float *src, int n_tok, const struct kc_split *parts, cudaStream_t st);
/* f32 to f16 (round to nearest even) over n elements. */
void kc_f32_to_f16(const float *x, int64_t n, uint16_t *out, cudaStream_t st);
/* out[r][o] = sum_i x16[r][i] * w16[o][i]: f16 inputs, f32 accumulation and
 * output (matmul.cu): cuBLASLt with one algorithm per weight shape whatever
 * the row count, so a row's result does not depend on the batch.  init takes
 * the cuBLAS handle (for the PPD_CUDA_GEMM=cublas comparison path) and the
 * stream; run returns 0 or a cublasStatus_t. */
struct kc_gemm;
int kc_gemm_init(struct kc_gemm **g, void *cublas_handle, cudaStream_t st);
void kc_gemm_free(struct kc_gemm *g);
/* Choose the algorithm for w16's shape now (timing it on w16), not at its first run. */
int kc_gemm_prepare(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out);
int kc_gemm_run(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out, const uint16_t *x16, int n_tok,
                float *out);
const char *kc_gemm_describe(const struct kc_gemm *g);

#ifdef __cplusplus
}
#endif

#endif
