/* backend.h — the device interface the forward pass is written against.
 *
 * A backend is a table of functions plus a context (as in ggml-backend): one
 * implementation per device (backend_cpu.c, backend_cuda.c), chosen at
 * run time.  Activations, weights and the KV cache are backend memory; the
 * forward pass only passes pointers to the ops.  Every op has the same name
 * stem and argument order in every backend, and the CPU one is the reference.
 * Ops work on whole batches: the backend decides how to parallelise.
 */
#ifndef PPD_BACKEND_H
#define PPD_BACKEND_H

#include <stddef.h>
#include <stdint.h>

struct eng_batch;
struct eng_kv;
struct kq_rope;

/* A weight matrix of n_out rows of n_in elements, prepared by a backend. */
struct eng_weight {
    int type;               /* enum kq_type as stored in the GGUF */
    int64_t n_in, n_out;
    void *impl;             /* backend-owned */
};

struct eng_backend_i {
    const char *name;
    void (*free)(void *ctx);
    /* Optional (NULL: the host's CPU is the device): the device this context
     * runs on, e.g. "NVIDIA H200 (sm_90, 139.8 GiB)"; part of the calibration
     * cache's fingerprint, so a table measured on one GPU is not used on another. */
    const char *(*device_name)(void *ctx);

    /* memory */
    void *(*buf_alloc)(void *ctx, size_t bytes);        /* zeroed */
    void (*buf_free)(void *ctx, void *buf);
    void (*buf_upload)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*buf_download)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*buf_copy)(void *ctx, void *dst, const void *src, size_t bytes);   /* within the backend */
    void (*sync)(void *ctx);

    /* weights: data is host memory in GGUF layout (e.g. the mmap); the backend
     * may keep a pointer to it (CPU) or copy it (GPU). */
    int (*weight_init)(void *ctx, struct eng_weight *w, int type, const void *data, int64_t n_in, int64_t n_out);
    void (*weight_free)(void *ctx, struct eng_weight *w);
    /* Optional (NULL: nothing to do): the forward pass multiplies w[0..n-1]
     * (same n_in) with one input in one matmul call, in this order, so the
     * backend may keep them as one matrix and run one product (CUDA).  The
     * weights stay valid and separately usable either way. */
    void (*weight_fuse)(void *ctx, struct eng_weight *const *w, int n);

    /* out[r] = row ids[r] of table; ids[r] < 0 selects row -1-ids[r] of extra (f32, n_embd wide). */
    void (*embed)(void *ctx, const struct eng_weight *table, const int32_t *ids, int n_tok,
                  const float *extra, int n_extra, float *out);
    /* out[r] = rmsnorm(x[r]) * w, rows of n. */
    void (*rmsnorm)(void *ctx, const float *x, const float *w, int n_tok, int n, float eps, float *out);
    /* out_i[r] = x[r] · W_iᵀ for n_w weights sharing the same input (one quantization of x). */
    void (*matmul)(void *ctx, const struct eng_weight *const *w, float *const *out, int n_w,
                   const float *x, int n_tok);
    /* RoPE (kernels/cpu/ops.h; its frequency factors are host memory) on rows of q
     * (n_head heads) and k (n_head_kv heads) at positions pos, then store k and v rows
     * into the cache at (layer, slot[r], kv_idx[r]). */
    void (*rope_kv_store)(void *ctx, float *q, float *k, const float *v, const struct eng_batch *b,
                          struct eng_kv *kv, int layer, int n_head, int n_head_kv, int head_dim,
                          const struct kq_rope *rope);
    /* out[r] = attention of q[r] over the entries of its slot that batch row r sees,
     * cut to the sliding window of `window` positions (batch.h; 0: none). */
    void (*attention)(void *ctx, const float *q, const struct eng_batch *b, const struct eng_kv *kv,
                      int layer, int n_head, int n_head_kv, int head_dim, float scale, int window, float *out);
    /* out = silu(gate) * up, n_tok rows of n. */
    void (*swiglu)(void *ctx, const float *gate, const float *up, int n_tok, int n, float *out);
    /* x += y, n_tok rows of n. */
    void (*add)(void *ctx, float *x, const float *y, int n_tok, int n);
    /* x[r] += bias, n_tok rows of n (one bias row for all). */
    void (*add_bias)(void *ctx, float *x, const float *bias, int n_tok, int n);
    /* x[r] += row -1-ids[r] of table (host f32, n wide) for the rows with ids[r] < 0 and
     * -1-ids[r] < n_table: a deep prompt vector into the PPD prompt rows.  NULL where
     * the backend has no such op yet (deep-prompt adapters are then refused). */
    void (*add_rows)(void *ctx, float *x, const int32_t *ids, int n_tok, const float *table, int n_table, int n);
};

struct eng_backend {
    const struct eng_backend_i *iface;
    void *ctx;
};

/* The CPU backend with n_threads threads (the calling thread included). */
int eng_backend_cpu_init(struct eng_backend *be, int n_threads);
void eng_backend_free(struct eng_backend *be);    /* accepts NULL / already freed */

/* The CUDA backend on GPU `device` (backend_cuda.c): weights dequantized to f16
 * on the device, matrix products through cuBLAS.  ENG_E_UNSUPPORTED in a build
 * without CUDA (backend_cuda_stub.c) or when no usable GPU exists; err (when
 * cap > 0) says which. */
int eng_backend_cuda_init(struct eng_backend *be, int device, char *err, size_t cap);
/* Usable CUDA GPUs: 0 without CUDA, without a driver or without a GPU.  The
 * only CUDA call a CPU run makes, and only when asked (--device auto). */
int eng_backend_cuda_count(void);
/* 1 when this binary contains the CUDA backend (whether or not a GPU exists). */
int eng_backend_cuda_built(void);

#endif
