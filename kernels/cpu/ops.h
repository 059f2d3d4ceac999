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

/* out[i] = (x[i] * 1/sqrt(mean(x²) + eps)) * w[i] for one row of n, the sum
 * of squares in double in eight lanes (element i in lane i % 8) joined in a
 * fixed tree.  out may alias x. */
void kq_rmsnorm_row(const float *x, const float *w, int n, float eps, float *out);

#define KQ_ROPE_MAX_ROT 1024

/* RoPE as a model defines it, with ggml's arithmetic (rope_yarn): pair i of a
 * head at position pos turns by
 *   theta = pos * base^(-2i/n_rot) / ff[i]      (ff: Llama 3's rope_freqs, else 1)
 *   theta' = freq_scale * theta                  (linear / YaRN interpolation)
 *   YaRN only: theta' mixed back towards theta by a ramp over the pairs
 *              between corr_dims, and cos, sin scaled by
 *              attn_factor * (1 + 0.1 ln(1/freq_scale))
 * and cos, sin scaled by attn_factor (1 unless the model says otherwise).
 * With freq_scale 1, no ff and no YaRN every factor is exactly 1, so plain
 * RoPE's bits are unchanged. */
struct kq_rope {
    int n_rot;                  /* rotated dimensions per head (even, <= KQ_ROPE_MAX_ROT) */
    int neox;                   /* 0: pairs (2i, 2i+1) (GGUF llama); 1: pairs (i, i + n_rot/2) */
    float freq_base;
    float freq_scale;           /* 1 / scaling factor; 1 for none */
    float ext_factor;           /* YaRN: 1; otherwise 0 */
    float attn_factor;
    float corr_dims[2];         /* YaRN's ramp, in pairs */
    const float *freq_factors;  /* n_rot/2 divisors, or NULL */
};

/* Plain RoPE: freq_scale 1, no YaRN, no frequency factors. */
struct kq_rope kq_rope_plain(int n_rot, int neox, float freq_base);
/* Turn on YaRN for a model trained on n_ctx_orig positions and stretched by
 * `factor`, with ggml's correction range for beta_fast and beta_slow. */
void kq_rope_set_yarn(struct kq_rope *r, float factor, int n_ctx_orig, float beta_fast, float beta_slow);

/* Rotate n_head heads of head_dim at position pos, the first r->n_rot dims of
 * each.  Same as kq_rope_angles then kq_rope_apply. */
void kq_rope_row(float *x, int n_head, int head_dim, int32_t pos, const struct kq_rope *r);

/* cs[2i], cs[2i + 1] = cos, sin of the angle of pair i at pos, for i < n_rot / 2
 * (the angles depend on the position only, so a forward pass can compute them
 * once per row for all layers). */
void kq_rope_angles(int32_t pos, const struct kq_rope *r, float *cs);
/* Rotate as kq_rope_row does, with angles from kq_rope_angles. */
void kq_rope_apply(float *x, int n_head, int head_dim, int n_rot, const float *cs, int neox);

/* out[i] = silu(gate[i]) * up[i] = (g / (1 + kq_expf(-g))) * up[i] for n elements. */
void kq_swiglu(const float *gate, const float *up, int n, float *out);

/* e^x by one fixed sequence of float multiplies and adds (relative error about
 * 1e-7), the exponential of kq_swiglu and kq_softmax: the same function in
 * every lane of every SIMD path, so results never depend on the path.  Returns
 * 0 for x below about -87.7 (and for -inf and NaN); x above 88.376 counts as
 * 88.376 (2.4e38). */
float kq_expf(float x);

/* x[i] += y[i]. */
void kq_add(float *x, const float *y, int n);

/* In place: x[i] = kq_expf(x[i] - max) / sum over n values, the sum taken in
 * double in eight lanes (element i in lane i % 8) joined in a fixed tree;
 * entries equal to -INFINITY become 0 (all of them: all 0). */
void kq_softmax(float *x, int n);

/* Dot product of two float vectors of n, in a fixed order. */
float kq_dot_f32(const float *a, const float *b, int n);

/* out[d] += w * v[d] for d < n. */
void kq_axpy_f32(float *out, float w, const float *v, int n);

/* The plain C versions of kq_dot_f32, kq_axpy_f32, kq_swiglu, kq_softmax and kq_rmsnorm_row
 * (those use AVX2 when the CPU has it, with bit-identical results: tests
 * compare them). */
float kq_dot_f32_ref(const float *a, const float *b, int n);
void kq_axpy_f32_ref(float *out, float w, const float *v, int n);
void kq_swiglu_ref(const float *gate, const float *up, int n, float *out);
void kq_softmax_ref(float *x, int n);
void kq_rmsnorm_row_ref(const float *x, const float *w, int n, float eps, float *out);

#endif
