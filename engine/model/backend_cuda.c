/* backend_cuda.c — the CUDA implementation of backend.h.
 *
 * Memory is device memory (cudaMalloc), all work goes in order on one stream,
 * and the ops are the kernels of kernels/cuda (kcuda.h).  Weights are
 * dequantized to f16 on the device once, at weight_init (the GGUF bytes go up
 * through one reused staging buffer), and q/k/v and gate/up are then kept as
 * one matrix each (weight_fuse); matrix products are cuBLASLt with f16 inputs
 * and f32 accumulation, one algorithm per weight shape chosen at load so a
 * row's result does not depend on the batch (matmul.cu).  A product's f16
 * input comes from the op before it (rmsnorm, attention and swiglu write an
 * f16 twin of their output: x16_of) or is converted into a reused buffer.
 * Attention gets the batch's runs of rows sharing a prefix (tiles) and the
 * number of blocks long rows' keys are split over.  The batch's per-row arrays (host
 * memory, batch.h) go up once per forward pass: a host copy of what was last
 * uploaded is compared with the batch at each op that needs it.  Per step the
 * host sends token ids, the batch arrays and any PPD prompt rows, and gets the
 * logit rows back; scratch grows to the largest batch seen and is then reused.
 * A CUDA failure in the middle of a step cannot be undone: it is logged and the
 * process aborts (as the CPU backend does when memory runs out mid-step).
 * It does not do KV compaction, sampling or CUDA graphs.
 * Nothing here runs unless the CUDA backend is asked for: a binary built with
 * CUDA starts and runs on the CPU on a machine without a GPU or driver.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/model/backend.h"
#include "engine/model/batch.h"
#include "engine/err.h"
#include "engine/model/kv_cache.h"
#include "engine/log.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/ops.h"
#include "common/qtypes.h"
#include "kernels/cuda/kcuda.h"

struct cuda_ctx {
    int device;
    cudaStream_t st;
    cublasHandle_t blas;
    struct kc_gemm *gemm;   /* matrix products (matmul.cu) */
    void *stage;            /* device: raw GGUF bytes of the weight being loaded */
    size_t stage_cap;
    uint16_t *x16;          /* device: f16 copy of a matmul's input */
    size_t x16_cap;         /* elements */
    const float *x16_of;    /* whose f16 copy x16 holds (NULL: none): the output of the op */
    size_t x16_elems;       /* just before, which wrote both (cuda_x16_out); every other op forgets it */
    int32_t *ids_dev;       /* device: embed's ids, remapped */
    int32_t *ids_host;
    size_t ids_cap;
    int32_t *map_dev;       /* device: add_rows' row -> packed vector (-1: none) */
    int32_t *map_host;
    size_t map_cap;
    float *rows_dev;        /* device: the deep-prompt vectors one add_rows call uses, packed */
    float *rows_host;
    size_t rows_cap;
    float *extra_dev;       /* device: the PPD prompt rows one embed call uses */
    float *extra_host;
    size_t extra_cap;       /* floats */
    /* The batch as last uploaded: six int arrays of n_tok, then the visibility words. */
    void *b_dev, *b_host;
    size_t b_cap;           /* bytes */
    size_t b_bytes;         /* bytes of the current upload (0: none) */
    struct kc_batch kb;
    int window;             /* the sliding window attention last ran with (rope's uploads use it too) */
    int32_t *win_lo;        /* [win_cap] host: each row's first visible committed entry */
    uint64_t *win_vis;      /* [win_cap * win_words] host: the visibility cut to the window */
    size_t win_cap, win_words;
    int att_tile_rows;      /* of the batch in kb: mean run of rows sharing slot, prefix and group */
    int att_n_split;        /* of the batch in kb: the most kc_attn_splits of any row */
    /* Fused weights (cuda_weight_fuse): one allocation holding n matrices
     * side by side, freed when its last member is. */
    struct cuda_fused {
        uint16_t *base;
        size_t bytes;
        int64_t n_in, n_out;    /* the whole: n_out = the members' sum */
        int n, live;
    } *fused;
    int n_fused, fused_cap;
    const float *ff_host;   /* the RoPE frequency factors ff_dev holds a copy of (NULL: none) */
    float *ff_dev;
    float *att_ws;          /* device: attention's partial states (kc_attention's ws) */
    size_t att_ws_cap;      /* bytes */
    float *fused_out;       /* device: a fused product's rows before kc_split */
    size_t fused_out_cap;   /* bytes */
    int no_fuse;            /* PPD_CUDA_FUSE=0: keep every weight apart (for comparison) */
    char device_desc[320];  /* device_name's answer */
};

#define CUDA_CHECK(call)                                                                              \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) cuda_fatal(#call, cudaGetErrorString(e_), __LINE__);                   \
    } while (0)

static void cuda_fatal(const char *what, const char *why, int line) {
    LOG_ERROR("cuda: %s failed: %s (backend_cuda.c:%d); the step cannot continue", what, why, line);
    abort();
}

/* A launch error shows up at the next call; check after each op so a bad
 * launch is reported where it happened. */
static void cuda_check_launch(const char *op) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) cuda_fatal(op, cudaGetErrorString(e), __LINE__);
}

/* Grow a device buffer (and optionally its host twin) to at least `need` bytes;
 * 1 when it grew (the device contents are gone), else 0. */
static int cuda_grow(struct cuda_ctx *c, void **dev, void **host, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = need + need / 4 + 256;
    CUDA_CHECK(cudaStreamSynchronize(c->st));
    if (*dev) CUDA_CHECK(cudaFree(*dev));
    *dev = NULL;
    CUDA_CHECK(cudaMalloc(dev, n));
    if (host) {
        void *h = realloc(*host, n);
        if (!h) cuda_fatal("realloc", "out of host memory", __LINE__);
        *host = h;
    }
    *cap = n;
    return 1;
}

/* x16 as the f16 twin of `out` (elems elements) that the op about to run
 * writes along with out, so the matmul that reads out next skips converting. */
static uint16_t *cuda_x16_out(struct cuda_ctx *c, const float *out, size_t elems) {
    size_t cap_bytes = c->x16_cap * sizeof(uint16_t);
    cuda_grow(c, (void **)&c->x16, NULL, &cap_bytes, elems * sizeof(uint16_t));
    c->x16_cap = cap_bytes / sizeof(uint16_t);
    c->x16_of = out;
    c->x16_elems = elems;
    return c->x16;
}

/* ---- memory ---- */

static void *cuda_buf_alloc(void *vctx, size_t bytes) {
    struct cuda_ctx *c = vctx;
    void *p = NULL;
    if (cudaSetDevice(c->device) != cudaSuccess) return NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();   /* an allocation failure is not sticky: clear it */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes, c->st) != cudaSuccess) {
        (void)cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_buf_free(void *vctx, void *buf) {
    struct cuda_ctx *c = vctx;
    if (!buf) return;
    CUDA_CHECK(cudaStreamSynchronize(c->st));
    CUDA_CHECK(cudaFree(buf));
}

/* From pageable host memory the copy is staged before cudaMemcpyAsync returns:
 * the caller may reuse src at once. */
static void cuda_buf_upload(void *vctx, void *dst, const void *src, size_t bytes) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st));
}

static void cuda_buf_download(void *vctx, void *dst, const void *src, size_t bytes) {
    struct cuda_ctx *c = vctx;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st));
    CUDA_CHECK(cudaStreamSynchronize(c->st));
}

static void cuda_buf_copy(void *vctx, void *dst, const void *src, size_t bytes) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->st));
}

static void cuda_sync(void *vctx) {
    struct cuda_ctx *c = vctx;
    CUDA_CHECK(cudaStreamSynchronize(c->st));
}

/* ---- weights: f16 on the device ---- */

/* A weight of a type the device cannot dequantize, expanded to f16 rows on the
 * host with the CPU's dequantization (the same values), to go up as F16. */
static uint16_t *cuda_host_f16(int type, const void *data, int64_t n_in, int64_t n_out) {
    const struct kq_weight hw = {.type = type, .n_in = n_in, .n_out = n_out, .data = data};
    uint16_t *h = malloc((size_t)n_in * (size_t)n_out * sizeof(uint16_t));
    float *row = malloc((size_t)n_in * sizeof(float));
    if (!h || !row) {
        free(h);
        free(row);
        return NULL;
    }
    for (int64_t o = 0; o < n_out; o++) {
        kq_weight_row_f32(&hw, o, row);
        for (int64_t k = 0; k < n_in; k++) h[(size_t)o * (size_t)n_in + (size_t)k] = kq_f32_to_f16(row[k]);
    }
    free(row);
    return h;
}

static int cuda_weight_init(void *vctx, struct eng_weight *w, int type, const void *data, int64_t n_in, int64_t n_out) {
    struct cuda_ctx *c = vctx;
    if (!kq_type_is_weight(type) || !kq_row_bytes(type, n_in)) return ENG_E_UNSUPPORTED;
    uint16_t *host16 = NULL;
    int up_type = type;
    if (!kc_dequant_supported(type)) {
        if (n_in > INT32_MAX || n_out < 1 || n_out > INT32_MAX) return ENG_E_RANGE;
        if (!(host16 = cuda_host_f16(type, data, n_in, n_out))) return ENG_E_NOMEM;
        data = host16;
        up_type = KQ_F16;
    }
    const size_t row = kq_row_bytes(up_type, n_in);
    const size_t raw = row * (size_t)n_out;
    uint16_t *d16 = NULL;
    int rc = 0;
    if (n_out < 1 || n_in > INT32_MAX || n_out > INT32_MAX) {
        rc = ENG_E_RANGE;
    } else if (raw > c->stage_cap) {
        if (cudaStreamSynchronize(c->st) != cudaSuccess) {
            rc = ENG_E_INTERNAL;
        } else {
            if (c->stage) cudaFree(c->stage);
            c->stage = NULL;
            c->stage_cap = 0;
            if (cudaMalloc(&c->stage, raw) != cudaSuccess) {
                (void)cudaGetLastError();
                rc = ENG_E_NOMEM;
            } else {
                c->stage_cap = raw;
            }
        }
    }
    if (!rc && cudaMalloc((void **)&d16, (size_t)n_in * (size_t)n_out * sizeof(uint16_t)) != cudaSuccess) {
        (void)cudaGetLastError();
        d16 = NULL;
        rc = ENG_E_NOMEM;
    }
    if (!rc && (cudaMemcpyAsync(c->stage, data, raw, cudaMemcpyHostToDevice, c->st) != cudaSuccess ||
                kc_dequant_f16(up_type, c->stage, n_in, n_out, d16, c->st) != 0 ||
                cudaGetLastError() != cudaSuccess)) {
        cudaFree(d16);
        d16 = NULL;
        rc = ENG_E_INTERNAL;
    }
    if (host16) { /* the copy reads it until the stream reaches this point */
        if (!rc && cudaStreamSynchronize(c->st) != cudaSuccess) rc = ENG_E_INTERNAL;
        free(host16);
    }
    if (rc) {
        if (d16) cudaFree(d16);
        return rc;
    }
    /* The matrix product's algorithm for this shape is chosen here, at load,
     * not in the first step (it times candidates on this weight); should that
     * fail, the first product of this shape meets the failure again and says so. */
    (void)kc_gemm_prepare(c->gemm, d16, n_in, n_out);
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->impl = d16;
    return 0;
}

/* The fused block holding p, or NULL. */
static struct cuda_fused *cuda_fused_of(struct cuda_ctx *c, const void *p) {
    for (int i = 0; i < c->n_fused; i++)
        if ((const char *)p >= (const char *)c->fused[i].base &&
            (const char *)p < (const char *)c->fused[i].base + c->fused[i].bytes)
            return &c->fused[i];
    return NULL;
}

static void cuda_weight_free(void *vctx, struct eng_weight *w) {
    struct cuda_ctx *c = vctx;
    if (!w || !w->impl) return;
    CUDA_CHECK(cudaStreamSynchronize(c->st));
    struct cuda_fused *f = cuda_fused_of(c, w->impl);
    if (!f) {
        cudaFree(w->impl);
    } else if (--f->live == 0) {
        cudaFree(f->base);
        *f = c->fused[--c->n_fused];
    }
    w->impl = NULL;
}

/* q/k/v and gate/up as one matrix each: one product instead of three or two
 * (at one row a 4096 x 4096 product ran at 1.6x its bytes over the copy
 * bandwidth, an 11008 x 4096 one at 1.27x: fewer, larger products waste less
 * at the start and the tail).  The members are copied side by side into one
 * allocation and their own freed, so memory does not grow; on any failure
 * they simply stay apart. */
static void cuda_weight_fuse(void *vctx, struct eng_weight *const *w, int n) {
    struct cuda_ctx *c = vctx;
    if (c->no_fuse || n < 2 || n > KC_SPLIT_MAX) return;
    int64_t n_out = 0;
    for (int i = 0; i < n; i++) {
        if (!w[i]->impl || w[i]->n_in != w[0]->n_in || cuda_fused_of(c, w[i]->impl)) return;
        n_out += w[i]->n_out;
    }
    if (c->n_fused == c->fused_cap) {
        const int cap = c->fused_cap ? 2 * c->fused_cap : 64;
        struct cuda_fused *f = realloc(c->fused, sizeof *f * (size_t)cap);
        if (!f) return;
        c->fused = f;
        c->fused_cap = cap;
    }
    const size_t bytes = (size_t)w[0]->n_in * (size_t)n_out * sizeof(uint16_t);
    uint16_t *base = NULL;
    if (cudaMalloc((void **)&base, bytes) != cudaSuccess) { (void)cudaGetLastError(); return; }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const size_t b = (size_t)w[i]->n_in * (size_t)w[i]->n_out * sizeof(uint16_t);
        if (cudaMemcpyAsync((char *)base + off, w[i]->impl, b, cudaMemcpyDeviceToDevice, c->st) != cudaSuccess) {
            (void)cudaStreamSynchronize(c->st);
            cudaFree(base);
            (void)cudaGetLastError();
            return;
        }
        off += b;
    }
    if (kc_gemm_prepare(c->gemm, base, w[0]->n_in, n_out) || cudaStreamSynchronize(c->st) != cudaSuccess) {
        cudaFree(base);
        (void)cudaGetLastError();
        return;
    }
    off = 0;
    for (int i = 0; i < n; i++) {
        cudaFree(w[i]->impl);
        w[i]->impl = (char *)base + off;
        off += (size_t)w[i]->n_in * (size_t)w[i]->n_out * sizeof(uint16_t);
    }
    c->fused[c->n_fused++] = (struct cuda_fused){base, bytes, w[0]->n_in, n_out, n, n};
}

/* The fused block that w[0..n-1] are, in order, the whole of; else NULL. */
static const struct cuda_fused *cuda_fused_whole(struct cuda_ctx *c, const struct eng_weight *const *w, int n) {
    if (n < 2) return NULL;
    const struct cuda_fused *f = cuda_fused_of(c, w[0]->impl);
    if (!f || f->base != w[0]->impl || f->n != n) return NULL;
    const char *next = (const char *)f->base;
    for (int i = 0; i < n; i++) {
        if (w[i]->impl != next || w[i]->n_in != f->n_in) return NULL;
        next += (size_t)w[i]->n_in * (size_t)w[i]->n_out * sizeof(uint16_t);
    }
    return next == (const char *)f->base + f->bytes ? f : NULL;
}

/* ---- the batch on the device ---- */

/* Upload b's per-row arrays, cut to the sliding window c->window (batch.h),
 * unless the device copy already holds them. */
static void cuda_batch_sync(struct cuda_ctx *c, const struct eng_batch *b) {
    const size_t n = (size_t)b->n_tok, ints = 7 * n * sizeof(int32_t);
    const size_t bytes = ints + n * (size_t)b->vis_words * sizeof(uint64_t);
    if (cuda_grow(c, &c->b_dev, &c->b_host, &c->b_cap, bytes)) c->b_bytes = 0;
    if (n > c->win_cap || (size_t)b->vis_words > c->win_words) {
        const size_t rows = n > c->win_cap ? n : c->win_cap;
        const size_t words = (size_t)b->vis_words > c->win_words ? (size_t)b->vis_words : c->win_words;
        int32_t *l = realloc(c->win_lo, sizeof *l * rows);
        if (l) c->win_lo = l;
        uint64_t *v = realloc(c->win_vis, sizeof *v * rows * words);
        if (v) c->win_vis = v;
        if (!l || !v) cuda_fatal("realloc", "out of host memory", __LINE__);
        c->win_cap = rows;
        c->win_words = words;
    }
    const int cut = eng_batch_window(b, c->window, c->win_lo, c->win_vis);
    const uint64_t *vis = cut ? c->win_vis : b->vis;
    /* The host copy is compared array by array and rewritten only on a change. */
    const int32_t *src[7] = {b->pos, b->slot, b->kv_idx, b->n_prefix, b->grp_first, b->grp_len, c->win_lo};
    int same = bytes == c->b_bytes && c->kb.n_tok == b->n_tok && c->kb.vis_words == b->vis_words;
    char *h = c->b_host;
    for (int i = 0; i < 7 && same; i++) same = !memcmp(h + i * n * sizeof(int32_t), src[i], n * sizeof(int32_t));
    if (same) same = !memcmp(h + ints, vis, bytes - ints);
    if (same) return;
    for (int i = 0; i < 7; i++) memcpy(h + i * n * sizeof(int32_t), src[i], n * sizeof(int32_t));
    memcpy(h + ints, vis, bytes - ints);
    CUDA_CHECK(cudaMemcpyAsync(c->b_dev, c->b_host, bytes, cudaMemcpyHostToDevice, c->st));
    c->b_bytes = bytes;
    const int32_t *d = c->b_dev;
    c->kb.n_tok = b->n_tok;
    c->kb.vis_words = b->vis_words;
    c->kb.pos = d;
    c->kb.slot = d + n;
    c->kb.kv_idx = d + 2 * n;
    c->kb.n_prefix = d + 3 * n;
    c->kb.grp_first = d + 4 * n;
    c->kb.grp_len = d + 5 * n;
    c->kb.prefix_lo = d + 6 * n;
    c->kb.vis = (const uint64_t *)((const char *)c->b_dev + ints);
    /* What attention's launch needs of this batch, once per upload, not per layer:
     * runs of rows sharing slot, prefix and group (a PPD tree, a prefill chunk)
     * are served a tile at a time, and long rows' keys go to several blocks. */
    struct eng_batch bw = *b;
    bw.vis = (uint64_t *)vis;
    int runs = 1, n_split = 1;
    for (int r = 0; r < b->n_tok; r++) {
        if (r > 0)
            runs += b->slot[r] != b->slot[r - 1] || b->n_prefix[r] != b->n_prefix[r - 1] ||
                    b->grp_first[r] != b->grp_first[r - 1] || b->grp_len[r] != b->grp_len[r - 1] ||
                    c->win_lo[r] != c->win_lo[r - 1];
        const int s = kc_attn_splits(eng_batch_row_visible(&bw, r) - c->win_lo[r]);
        if (s > n_split) n_split = s;
    }
    c->att_tile_rows = b->n_tok / runs;
    c->att_n_split = n_split;
}

static struct kc_kv cuda_kv(const struct eng_kv *kv) {
    struct kc_kv k = {kv->k, kv->v, kv->n_slot, kv->max_seq, kv->kv_dim};
    return k;
}

/* ---- ops ---- */

static void cuda_embed(void *vctx, const struct eng_weight *table, const int32_t *ids, int n_tok,
                       const float *extra, int n_extra, float *out) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    if (n_tok < 1) return;
    CUDA_CHECK(cudaSetDevice(c->device));
    const int64_t n = table->n_in;
    cuda_grow(c, (void **)&c->ids_dev, (void **)&c->ids_host, &c->ids_cap, sizeof(int32_t) * (size_t)n_tok);
    /* Prompt-token rows: the rows this call uses go up, packed, in row order. */
    int n_used = 0;
    for (int r = 0; r < n_tok; r++) {
        if (ids[r] >= 0) {
            c->ids_host[r] = ids[r];
        } else if (-1 - (int64_t)ids[r] < n_extra && extra) {
            const size_t need = sizeof(float) * (size_t)(n_used + 1) * (size_t)n;
            if (need > c->extra_cap) {
                /* Keep the rows packed so far across the host buffer's growth. */
                float *h = realloc(c->extra_host, need + need / 4 + 256);
                if (!h) cuda_fatal("realloc", "out of host memory", __LINE__);
                c->extra_host = h;
                CUDA_CHECK(cudaStreamSynchronize(c->st));
                if (c->extra_dev) CUDA_CHECK(cudaFree(c->extra_dev));
                c->extra_dev = NULL;
                CUDA_CHECK(cudaMalloc((void **)&c->extra_dev, need + need / 4 + 256));
                c->extra_cap = need + need / 4 + 256;
            }
            memcpy(c->extra_host + (size_t)n_used * (size_t)n, extra + (-1 - (int64_t)ids[r]) * n,
                   sizeof(float) * (size_t)n);
            c->ids_host[r] = -1 - n_used++;
        } else {
            c->ids_host[r] = INT32_MIN;     /* beyond the extra table: a zero row */
        }
    }
    CUDA_CHECK(cudaMemcpyAsync(c->ids_dev, c->ids_host, sizeof(int32_t) * (size_t)n_tok, cudaMemcpyHostToDevice,
                               c->st));
    if (n_used)
        CUDA_CHECK(cudaMemcpyAsync(c->extra_dev, c->extra_host, sizeof(float) * (size_t)n_used * (size_t)n,
                                   cudaMemcpyHostToDevice, c->st));
    kc_embed(table->impl, n, c->ids_dev, n_tok, c->extra_dev, n_used, out, c->st);
    cuda_check_launch("embed");
}

static void cuda_rmsnorm(void *vctx, const float *x, const float *w, int n_tok, int n, float eps, float *out) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    kc_rmsnorm(x, w, n_tok, n, eps, out, cuda_x16_out(c, out, (size_t)n_tok * (size_t)n), c->st);
    cuda_check_launch("rmsnorm");
}

/* out = x16 · Wᵀ for n_tok rows; a cuBLAS failure mid-step is fatal (file header). */
static void cuda_gemm(struct cuda_ctx *c, const void *w16, int64_t n_in, int64_t n_out, int n_tok, float *out) {
    const int s = kc_gemm_run(c->gemm, w16, n_in, n_out, c->x16, n_tok, out);
    if (s) {
        char why[96];
        snprintf(why, sizeof why, "cublasStatus %d (%lld x %lld, %d rows)", s, (long long)n_out, (long long)n_in, n_tok);
        cuda_fatal("kc_gemm_run", why, __LINE__);
    }
}

static void cuda_matmul(void *vctx, const struct eng_weight *const *w, float *const *out, int n_w,
                        const float *x, int n_tok) {
    struct cuda_ctx *c = vctx;
    if (n_w < 1 || n_tok < 1) return;
    const size_t elems = (size_t)n_tok * (size_t)w[0]->n_in;
    if (c->x16_of != x || c->x16_elems != elems) {   /* no f16 twin from the op before: convert */
        size_t cap_bytes = c->x16_cap * sizeof(uint16_t);
        cuda_grow(c, (void **)&c->x16, NULL, &cap_bytes, elems * sizeof(uint16_t));
        c->x16_cap = cap_bytes / sizeof(uint16_t);
        kc_f32_to_f16(x, (int64_t)elems, c->x16, c->st);
        cuda_check_launch("f32_to_f16");
        c->x16_of = x;   /* a second product of the same input needs no second conversion */
        c->x16_elems = elems;
    }
    const struct cuda_fused *f = cuda_fused_whole(c, w, n_w);
    if (f) {   /* one product, then its columns dealt out */
        cuda_grow(c, (void **)&c->fused_out, NULL, &c->fused_out_cap, sizeof(float) * (size_t)n_tok * (size_t)f->n_out);
        cuda_gemm(c, f->base, f->n_in, f->n_out, n_tok, c->fused_out);
        struct kc_split parts = {.n = n_w};
        for (int i = 0; i < n_w; i++) {
            parts.out[i] = out[i];
            parts.width[i] = (int)w[i]->n_out;
            if (out[i] == x) c->x16_of = NULL;
        }
        kc_split(c->fused_out, n_tok, &parts, c->st);
        cuda_check_launch("split");
        return;
    }
    for (int i = 0; i < n_w; i++) {
        cuda_gemm(c, w[i]->impl, w[i]->n_in, w[i]->n_out, n_tok, out[i]);
        if (out[i] == x) c->x16_of = NULL;   /* written over: the twin is stale */
    }
}

static void cuda_rope_kv_store(void *vctx, float *q, float *k, const float *v, const struct eng_batch *b,
                               struct eng_kv *kv, int layer, int n_head, int n_head_kv, int head_dim,
                               const struct kq_rope *rope) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    cuda_batch_sync(c, b);
    struct kc_kv kk = cuda_kv(kv);
    const int n_rot = rope->n_rot < KQ_ROPE_MAX_ROT ? rope->n_rot : KQ_ROPE_MAX_ROT;
    if (rope->freq_factors && rope->freq_factors != c->ff_host) {   /* the model's, once */
        const size_t bytes = sizeof(float) * (size_t)(n_rot / 2);
        cudaFree(c->ff_dev);
        c->ff_dev = NULL;
        c->ff_host = NULL;
        if (cudaMalloc((void **)&c->ff_dev, bytes) != cudaSuccess ||
            cudaMemcpy(c->ff_dev, rope->freq_factors, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
            cuda_fatal("rope_kv_store", "cannot upload the RoPE frequency factors", __LINE__);
        c->ff_host = rope->freq_factors;
    }
    /* theta_scale and mscale with kq_rope_angles' expressions */
    float mscale = rope->attn_factor;
    if (rope->ext_factor != 0.0f) mscale *= 1.0f + 0.1f * logf(1.0f / rope->freq_scale);
    const struct kc_rope rp = {.n_rot = n_rot, .neox = rope->neox,
                               .theta_scale = powf(rope->freq_base, -2.0f / (float)n_rot),
                               .freq_scale = rope->freq_scale, .ext_factor = rope->ext_factor, .mscale = mscale,
                               .corr0 = rope->corr_dims[0], .corr1 = rope->corr_dims[1],
                               .freq_factors = rope->freq_factors ? c->ff_dev : NULL};
    kc_rope_kv_store(q, k, v, &c->kb, &kk, layer, n_head, n_head_kv, head_dim, &rp, c->st);
    cuda_check_launch("rope_kv_store");
}

static void cuda_attention(void *vctx, const float *q, const struct eng_batch *b, const struct eng_kv *kv, int layer,
                           int n_head, int n_head_kv, int head_dim, float scale, int window, float *out) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    if (head_dim > KC_ATTN_MAX_HEAD_DIM) cuda_fatal("attention", "head_dim above 256", __LINE__);
    c->window = window;
    cuda_batch_sync(c, b);
    struct kc_kv kk = cuda_kv(kv);
    const int n_split = c->att_n_split;
    if (n_split > 1)
        cuda_grow(c, (void **)&c->att_ws, NULL, &c->att_ws_cap,
                  sizeof(float) * (size_t)b->n_tok * (size_t)n_head * (size_t)n_split * (size_t)(head_dim + 2));
    uint16_t *out16 = cuda_x16_out(c, out, (size_t)b->n_tok * (size_t)n_head * (size_t)head_dim);
    kc_attention(q, &c->kb, &kk, layer, n_head, n_head_kv, head_dim, scale, c->att_tile_rows, n_split, c->att_ws, out,
                 out16, c->st);
    cuda_check_launch("attention");
}

static void cuda_swiglu(void *vctx, const float *gate, const float *up, int n_tok, int n, float *out) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    kc_swiglu(gate, up, n_tok, n, out, cuda_x16_out(c, out, (size_t)n_tok * (size_t)n), c->st);
    cuda_check_launch("swiglu");
}

static void cuda_add(void *vctx, float *x, const float *y, int n_tok, int n) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    kc_add(x, y, n_tok, n, c->st);
    cuda_check_launch("add");
}

/* Deep prompts: the vectors of this call's prompt rows go up packed, as in
 * cuda_embed (n_prompt_rows x n floats per layer), then one kernel adds them. */
static void cuda_add_bias(void *vctx, float *x, const float *bias, int n_tok, int n) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    kc_add_bias(x, bias, n_tok, n, c->st);
    cuda_check_launch("add_bias");
}

static void cuda_add_rows(void *vctx, float *x, const int32_t *ids, int n_tok, const float *table, int n_table,
                          int n) {
    struct cuda_ctx *c = vctx;
    c->x16_of = NULL;
    if (n_tok < 1) return;
    CUDA_CHECK(cudaSetDevice(c->device));
    int n_used = 0;
    for (int r = 0; r < n_tok; r++) n_used += ids[r] < 0 && -1 - (int64_t)ids[r] < n_table;
    if (!n_used) return;
    cuda_grow(c, (void **)&c->map_dev, (void **)&c->map_host, &c->map_cap, sizeof(int32_t) * (size_t)n_tok);
    cuda_grow(c, (void **)&c->rows_dev, (void **)&c->rows_host, &c->rows_cap, sizeof(float) * (size_t)n_used * n);
    n_used = 0;
    for (int r = 0; r < n_tok; r++) {
        const int64_t e = -1 - (int64_t)ids[r];
        if (ids[r] >= 0 || e >= n_table) { c->map_host[r] = -1; continue; }
        memcpy(c->rows_host + (size_t)n_used * n, table + e * n, sizeof(float) * (size_t)n);
        c->map_host[r] = n_used++;
    }
    CUDA_CHECK(cudaMemcpyAsync(c->map_dev, c->map_host, sizeof(int32_t) * (size_t)n_tok, cudaMemcpyHostToDevice,
                               c->st));
    CUDA_CHECK(cudaMemcpyAsync(c->rows_dev, c->rows_host, sizeof(float) * (size_t)n_used * n, cudaMemcpyHostToDevice,
                               c->st));
    kc_add_rows(x, c->map_dev, n_tok, c->rows_dev, n, c->st);
    cuda_check_launch("add_rows");
}

static void cuda_free(void *vctx) {
    struct cuda_ctx *c = vctx;
    if (!c) return;
    if (c->st) cudaStreamSynchronize(c->st);
    cudaFree(c->stage);
    cudaFree(c->x16);
    cudaFree(c->fused_out);
    cudaFree(c->att_ws);
    cudaFree(c->ff_dev);
    for (int i = 0; i < c->n_fused; i++) cudaFree(c->fused[i].base);   /* members never freed */
    free(c->fused);
    cudaFree(c->ids_dev);
    cudaFree(c->extra_dev);
    cudaFree(c->map_dev);
    cudaFree(c->rows_dev);
    free(c->map_host);
    free(c->rows_host);
    cudaFree(c->b_dev);
    free(c->ids_host);
    free(c->extra_host);
    free(c->b_host);
    free(c->win_lo);
    free(c->win_vis);
    kc_gemm_free(c->gemm);
    if (c->blas) cublasDestroy(c->blas);
    if (c->st) cudaStreamDestroy(c->st);
    free(c);
}

static const char *cuda_device_name(void *vctx) {
    const struct cuda_ctx *c = vctx;
    return c->device_desc;
}

static const struct eng_backend_i cuda_iface = {
    .name = "cuda",
    .free = cuda_free,
    .device_name = cuda_device_name,
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .buf_upload = cuda_buf_upload,
    .buf_download = cuda_buf_download,
    .buf_copy = cuda_buf_copy,
    .sync = cuda_sync,
    .weight_init = cuda_weight_init,
    .weight_free = cuda_weight_free,
    .weight_fuse = cuda_weight_fuse,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .matmul = cuda_matmul,
    .rope_kv_store = cuda_rope_kv_store,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .add_rows = cuda_add_rows,
    .add_bias = cuda_add_bias,
};

int eng_backend_cuda_built(void) { return 1; }

int eng_backend_cuda_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

int eng_backend_cuda_init(struct eng_backend *be, int device, char *err, size_t cap) {
    be->iface = NULL;
    be->ctx = NULL;
    int n = eng_backend_cuda_count();
    if (n < 1) return eng_err_set(err, cap, ENG_E_UNSUPPORTED, "no CUDA GPU found (cudaGetDeviceCount: 0)");
    if (device < 0 || device >= n)
        return eng_err_set(err, cap, ENG_E_RANGE, "CUDA device %d does not exist (%d found)", device, n);
    struct cuda_ctx *c = calloc(1, sizeof *c);
    if (!c) return ENG_E_NOMEM;
    c->device = device;
    struct cudaDeviceProp prop;
    cudaError_t e;
    if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess) {
        eng_err_set(err, cap, ENG_E_UNSUPPORTED, "cannot start CUDA device %d: %s", device, cudaGetErrorString(e));
        goto err;
    }
    if (prop.major < 8) {   /* the kernels are built for sm_80 and sm_90 only */
        eng_err_set(err, cap, ENG_E_UNSUPPORTED, "CUDA device %d (%s) is sm_%d%d; ppd needs sm_80 or sm_90", device,
                    prop.name, prop.major, prop.minor);
        goto err;
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(c->blas, c->st) != CUBLAS_STATUS_SUCCESS) {
        eng_err_set(err, cap, ENG_E_UNSUPPORTED, "cannot start cuBLAS on CUDA device %d", device);
        goto err;
    }
    const char *fuse = getenv("PPD_CUDA_FUSE");
    c->no_fuse = fuse && !strcmp(fuse, "0");
    if (kc_gemm_init(&c->gemm, c->blas, c->st)) {
        eng_err_set(err, cap, ENG_E_UNSUPPORTED, "cannot start cuBLASLt on CUDA device %d", device);
        goto err;
    }
    snprintf(c->device_desc, sizeof c->device_desc, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    LOG_INFO("CUDA device %d: %s; matrix products: %s", device, c->device_desc, kc_gemm_describe(c->gemm));
    be->iface = &cuda_iface;
    be->ctx = c;
    return 0;
err:
    cuda_free(c);
    return ENG_E_UNSUPPORTED;
}
