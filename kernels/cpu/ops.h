/* ops.h — the non-matmul CPU operations of a Llama forward pass, on plain float rows.
 *
 * Each function works on a range of rows (or heads) so the caller can split it
 * over threads; none allocates, none knows about models, batches or trees.
 * The arithmetic follows ggml's CPU operations (sums of squares in double,
 * RoPE angles by repeated multiplication, softmax with max subtraction and a
 * double sum) so results stay close to llama.cpp's, and each row's result
 * depends only on that row.
 */
#ifndef PPD_OPS_H
#define PPD_OPS_H

#include <stdint.h>

/* out[i] = (x[i] * 1/sqrt(mean(x²) + eps)) * w[i] for one row of n. out may alias x. */
void kq_rmsnorm_row(const float *x, const float *w, int n, float eps, float *out);

/* Rotate n_head heads of head_dim at position pos, first n_rot dims of each head.
 * neox = 0: pairs (2i, 2i+1) (GGUF "normal" llama layout); neox = 1: pairs (i, i + n_rot/2). */
void kq_rope_row(float *x, int n_head, int head_dim, int n_rot, int32_t pos, float freq_base, int neox);

/* out[i] = silu(gate[i]) * up[i] for n elements. */
void kq_swiglu(const float *gate, const float *up, int n, float *out);

/* x[i] += y[i]. */
void kq_add(float *x, const float *y, int n);

/* In place: x[i] = exp(x[i] - max) / sum over n values; entries equal to -INFINITY become 0. */
void kq_softmax(float *x, int n);

/* Dot product of two float vectors of n, in a fixed order. */
float kq_dot_f32(const float *a, const float *b, int n);

/* out[d] += w * v[d] for d < n. */
void kq_axpy_f32(float *out, float w, const float *v, int n);

/* out[d] = kq_dot_f32(a[d], b, n) for d < 8, bit for bit, faster: b is loaded
 * once and the eight final reductions share their shuffles. */
void kq_dot8_f32(const float *const a[8], const float *b, int n, float out[8]);

/* The plain C versions of the two above (kq_dot_f32 / kq_axpy_f32 use AVX2
 * when the CPU has it, with bit-identical results: tests compare them). */
float kq_dot_f32_ref(const float *a, const float *b, int n);
void kq_axpy_f32_ref(float *out, float w, const float *v, int n);

#endif
