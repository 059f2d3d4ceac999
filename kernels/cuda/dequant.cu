/* dequant.cu — GGUF weights to f16 on the device, once, at load: the twin of
 * kernels/cpu/dequant.c (same block definitions, same float operations, then
 * one rounding to f16).  F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K.
 * One thread per block (32 or 256 elements); rows are whole blocks, so a
 * weight is a plain array of blocks.  It does not run at inference time.
 */
#include <cuda_fp16.h>

#include "common/qtypes.h"
#include "kernels/cuda/kcuda.h"

static __device__ __forceinline__ float h2f(kq_f16 h) { return __half2float(__ushort_as_half(h)); }
static __device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }

static __global__ void dq_f32(const float *x, int64_t n, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}

static __global__ void dq_f16(const uint16_t *x, int64_t n, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = x[i];
}

static __global__ void dq_bf16(const uint16_t *x, int64_t n, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = f2h(__uint_as_float((uint32_t)x[i] << 16));
}

static __global__ void dq_q4_0(const kq_block_q4_0 *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < KQ_QK / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8, x1 = (x[i].qs[j] >> 4) - 8;
            y[i * KQ_QK + j] = f2h(__fmul_rn((float)x0, d));
            y[i * KQ_QK + j + KQ_QK / 2] = f2h(__fmul_rn((float)x1, d));
        }
    }
}

static __global__ void dq_q4_1(const kq_block_q4_1 *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < KQ_QK / 2; j++) {
            const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
            y[i * KQ_QK + j] = f2h(__fadd_rn(__fmul_rn((float)x0, d), m));
            y[i * KQ_QK + j + KQ_QK / 2] = f2h(__fadd_rn(__fmul_rn((float)x1, d), m));
        }
    }
}

static __global__ void dq_q8_0(const kq_block_q8_0 *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < KQ_QK; j++) y[i * KQ_QK + j] = f2h(__fmul_rn((float)x[i].qs[j], d));
    }
}

/* Scale and min of sub-block j of a Q4_K/Q5_K block: kq_k4_scale_min. */
static __device__ void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static __global__ void dq_q4_k(const kq_block_q4_K *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        const uint8_t *q = x[i].qs;
        uint16_t *o = y + i * KQ_QK_K;
        for (int j = 0; j < KQ_QK_K / 64; j++, q += 32) {
            int sc, m;
            k4_scale_min(x[i].scales, 2 * j, &sc, &m);
            const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
            k4_scale_min(x[i].scales, 2 * j + 1, &sc, &m);
            const float d2 = __fmul_rn(d, (float)sc), m2 = __fmul_rn(dmin, (float)m);
            for (int l = 0; l < 32; l++) *o++ = f2h(__fsub_rn(__fmul_rn(d1, (float)(q[l] & 0xF)), m1));
            for (int l = 0; l < 32; l++) *o++ = f2h(__fsub_rn(__fmul_rn(d2, (float)(q[l] >> 4)), m2));
        }
    }
}

static __global__ void dq_q5_k(const kq_block_q5_K *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        uint16_t *o = y + i * KQ_QK_K;
        unsigned u1 = 1, u2 = 2;
        for (int j = 0; j < KQ_QK_K / 64; j++, ql += 32, u1 <<= 2, u2 <<= 2) {
            int sc, m;
            k4_scale_min(x[i].scales, 2 * j, &sc, &m);
            const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
            k4_scale_min(x[i].scales, 2 * j + 1, &sc, &m);
            const float d2 = __fmul_rn(d, (float)sc), m2 = __fmul_rn(dmin, (float)m);
            for (int l = 0; l < 32; l++)
                *o++ = f2h(__fsub_rn(__fmul_rn(d1, (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0))), m1));
            for (int l = 0; l < 32; l++)
                *o++ = f2h(__fsub_rn(__fmul_rn(d2, (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0))), m2));
        }
    }
}

/* Element e of a Q6_K block as an integer in [-32, 31]: kq_q6_k_value. */
static __device__ int q6_k_value(const kq_block_q6_K *x, int e) {
    const int half = e / 128, l = e % 32, quarter = (e % 128) / 32;
    const uint8_t *ql = x->ql + 64 * half, *qh = x->qh + 32 * half;
    const int low = quarter & 1 ? ql[l + 32] : ql[l];
    const int lo4 = quarter < 2 ? (low & 0xF) : (low >> 4);
    const int hi2 = (qh[l] >> (2 * quarter)) & 3;
    return (lo4 | (hi2 << 4)) - 32;
}

static __global__ void dq_q6_k(const kq_block_q6_K *x, int64_t nb, uint16_t *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb; i += (int64_t)gridDim.x * blockDim.x) {
        const float d = h2f(x[i].d);
        for (int e = 0; e < KQ_QK_K; e++)
            y[i * KQ_QK_K + e] =
                f2h(__fmul_rn(__fmul_rn(d, (float)x[i].scales[e / 16]), (float)q6_k_value(&x[i], e)));
    }
}

extern "C" int kc_dequant_supported(int type) {
    switch (type) {
    case KQ_F32: case KQ_F16: case KQ_BF16: case KQ_Q4_0: case KQ_Q4_1: case KQ_Q8_0:
    case KQ_Q4_K: case KQ_Q5_K: case KQ_Q6_K:
        return 1;
    default:
        return 0;
    }
}

extern "C" int kc_dequant_f16(int type, const void *src, int64_t n_in, int64_t n_out, uint16_t *dst, cudaStream_t st) {
    const int64_t n = n_in * n_out;
    const int threads = 256;
    /* Grid-stride loops: at most 65536 blocks of threads whatever the size. */
#define DQ_GRID(units) ((unsigned)((units) / threads + 1 < 65536 ? (units) / threads + 1 : 65536))
    switch (type) {
    case KQ_F32: dq_f32<<<DQ_GRID(n), threads, 0, st>>>((const float *)src, n, dst); break;
    case KQ_F16: dq_f16<<<DQ_GRID(n), threads, 0, st>>>((const uint16_t *)src, n, dst); break;
    case KQ_BF16: dq_bf16<<<DQ_GRID(n), threads, 0, st>>>((const uint16_t *)src, n, dst); break;
    case KQ_Q4_0: dq_q4_0<<<DQ_GRID(n / KQ_QK), threads, 0, st>>>((const kq_block_q4_0 *)src, n / KQ_QK, dst); break;
    case KQ_Q4_1: dq_q4_1<<<DQ_GRID(n / KQ_QK), threads, 0, st>>>((const kq_block_q4_1 *)src, n / KQ_QK, dst); break;
    case KQ_Q8_0: dq_q8_0<<<DQ_GRID(n / KQ_QK), threads, 0, st>>>((const kq_block_q8_0 *)src, n / KQ_QK, dst); break;
    case KQ_Q4_K: dq_q4_k<<<DQ_GRID(n / KQ_QK_K), threads, 0, st>>>((const kq_block_q4_K *)src, n / KQ_QK_K, dst); break;
    case KQ_Q5_K: dq_q5_k<<<DQ_GRID(n / KQ_QK_K), threads, 0, st>>>((const kq_block_q5_K *)src, n / KQ_QK_K, dst); break;
    case KQ_Q6_K: dq_q6_k<<<DQ_GRID(n / KQ_QK_K), threads, 0, st>>>((const kq_block_q6_K *)src, n / KQ_QK_K, dst); break;
    default: return -1;
    }
#undef DQ_GRID
    return 0;
}
