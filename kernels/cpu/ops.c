/* ops.c — plain C versions of ops.h, plus AVX2 versions of the loops that
 * matter in a forward pass (dot and axpy for attention, the exponential of
 * softmax and SwiGLU) and AVX-512 versions of softmax and SwiGLU.  Every SIMD
 * version performs the very same float operations per element (multiply, then
 * add; no FMA) in the same order as its plain twin, so they are bit-identical
 * and which one runs never changes a result; tests compare them.  Not here: the attention loop itself
 * (attention.c) and the matmuls (matmul*.c). */
#include "ops.h"

#include "cpu_isa.h"

#include <math.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define OPS_HAVE_AVX2_PATH 1
#define OPS_AVX512 __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512dq,avx512vl")))
#endif

/* The sum of squares is taken in double in eight lanes (element i in lane
 * i % 8) joined in a fixed tree, so the AVX2 version can add eight at a time
 * and still match; in double the order hardly matters anyway (each square is
 * a float, exact in double; 576 of them lose nothing a float result can see). */
static double sum8_tree(const double s[8]) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void rmsnorm_scale_plain(const float *x, const float *w, int n, float scale, float *out) {
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

static float rmsnorm_inv(double sum, int n, float eps) {
    const float mean = (float)(sum / n);
    return 1.0f / sqrtf(mean + eps);
}

static void rmsnorm_plain(const float *x, const float *w, int n, float eps, float *out) {
    double s[8] = {0};
    for (int i = 0; i < n; i++) s[i & 7] += (double)(x[i] * x[i]);
    rmsnorm_scale_plain(x, w, n, rmsnorm_inv(sum8_tree(s), n, eps), out);
}

#ifdef OPS_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void rmsnorm_avx2(const float *x, const float *w, int n, float eps, float *out) {
    __m256d s_lo = _mm256_setzero_pd(), s_hi = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i), sq = _mm256_mul_ps(v, v);
        s_lo = _mm256_add_pd(s_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        s_hi = _mm256_add_pd(s_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    double s[8];
    _mm256_storeu_pd(s, s_lo);
    _mm256_storeu_pd(s + 4, s_hi);
    for (; i < n; i++) s[i & 7] += (double)(x[i] * x[i]);
    const float scale = rmsnorm_inv(sum8_tree(s), n, eps);
    const __m256 sv = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w + i)));
    rmsnorm_scale_plain(x + i, w + i, n - i, scale, out + i);
}
#endif

struct kq_rope kq_rope_plain(int n_rot, int neox, float freq_base) {
    struct kq_rope r = {.n_rot = n_rot, .neox = neox, .freq_base = freq_base, .freq_scale = 1.0f,
                        .ext_factor = 0.0f, .attn_factor = 1.0f};
    return r;
}

/* The pair index where the wavelength spans n_ctx_orig / n_turns turns. */
static float rope_yarn_corr_dim(int n_rot, int n_ctx_orig, float n_turns, float base) {
    return (float)n_rot * logf((float)n_ctx_orig / (n_turns * 2.0f * (float)M_PI)) / (2.0f * logf(base));
}

void kq_rope_set_yarn(struct kq_rope *r, float factor, int n_ctx_orig, float beta_fast, float beta_slow) {
    r->freq_scale = 1.0f / factor;
    r->ext_factor = 1.0f;
    const float start = floorf(rope_yarn_corr_dim(r->n_rot, n_ctx_orig, beta_fast, r->freq_base));
    const float end = ceilf(rope_yarn_corr_dim(r->n_rot, n_ctx_orig, beta_slow, r->freq_base));
    r->corr_dims[0] = start > 0.0f ? start : 0.0f;
    r->corr_dims[1] = end < (float)(r->n_rot - 1) ? end : (float)(r->n_rot - 1);
}

void kq_rope_angles(int32_t pos, const struct kq_rope *r, float *cs) {
    /* Angles by repeated multiplication, as ggml computes them, rather than
     * powf per dimension: it keeps our logits within float noise of llama.cpp's. */
    const int n_rot = r->n_rot < KQ_ROPE_MAX_ROT ? r->n_rot : KQ_ROPE_MAX_ROT;
    const float theta_scale = powf(r->freq_base, -2.0f / (float)n_rot);
    float mscale = r->attn_factor;
    if (r->ext_factor != 0.0f) mscale *= 1.0f + 0.1f * logf(1.0f / r->freq_scale);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float extrap = r->freq_factors ? theta / r->freq_factors[i] : theta;
        float t = r->freq_scale * extrap;
        if (r->ext_factor != 0.0f) {
            const float span = r->corr_dims[1] - r->corr_dims[0];
            const float y = ((float)i - r->corr_dims[0]) / (span > 0.001f ? span : 0.001f);
            const float ramp = (1.0f - (y < 0.0f ? 0.0f : y > 1.0f ? 1.0f : y)) * r->ext_factor;
            t = t * (1.0f - ramp) + extrap * ramp;
        }
        cs[2 * i] = cosf(t) * mscale;
        cs[2 * i + 1] = sinf(t) * mscale;
        theta *= theta_scale;
    }
}

void kq_rope_apply(float *x, int n_head, int head_dim, int n_rot, const float *cs, int neox) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_head; h++) {
        float *hx = x + (long)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            const float x0 = hx[a], x1 = hx[b];
            hx[a] = x0 * c - x1 * s;
            hx[b] = x0 * s + x1 * c;
        }
    }
}

void kq_rope_row(float *x, int n_head, int head_dim, int32_t pos, const struct kq_rope *r) {
    float cs[2 * KQ_ROPE_MAX_ROT];
    kq_rope_angles(pos, r, cs);
    kq_rope_apply(x, n_head, head_dim, r->n_rot < KQ_ROPE_MAX_ROT ? r->n_rot : KQ_ROPE_MAX_ROT, cs, r->neox);
}

/* ---- the exponential ----
 * One exp for softmax and SwiGLU, written with plain float multiplies and adds
 * (Cephes' expf: x = n ln2 + r, a degree-5 polynomial in r, times 2^n) so
 * that the AVX2 lanes and the plain C loop compute exactly the same function:
 * libm's expf is accurate but scalar, and a different vector exp in each path
 * would make a row's result depend on which path ran it.  Relative error about
 * 1e-7 (tests check it against expf).  Inputs are clamped to [-88.376, 88.376]:
 * below about -87.7 the result is 0 (no denormals), -inf and NaN give 0, and
 * anything above 88.376 gives exp(88.376) = 2.4e38. */
#define EXP_HI 88.3762626647949f
#define EXP_LO (-88.3762626647949f)
#define EXP_LOG2E 1.44269504088896341f
#define EXP_C1 0.693359375f
#define EXP_C2 (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

float kq_expf(float x) {
    /* Written as _mm256_max_ps / _mm256_min_ps behave, NaN included. */
    x = x > EXP_LO ? x : EXP_LO;
    x = x < EXP_HI ? x : EXP_HI;
    const float fx = floorf(x * EXP_LOG2E + 0.5f);
    x = x - fx * EXP_C1;
    x = x - fx * EXP_C2;
    const float z = x * x;
    float y = EXP_P0;
    y = y * x + EXP_P1;
    y = y * x + EXP_P2;
    y = y * x + EXP_P3;
    y = y * x + EXP_P4;
    y = y * x + EXP_P5;
    y = y * z + x;
    y = y + 1.0f;
    union { uint32_t u; float f; } p2 = {.u = (uint32_t)((int32_t)fx + 127) << 23};
    return y * p2.f;
}

#ifdef OPS_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static inline __m256 exp8_avx2(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
    x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
    const __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _mm256_set1_ps(0.5f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(EXP_C1)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(EXP_C2)));
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(EXP_P0);
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(EXP_P1));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(EXP_P2));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(EXP_P3));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(EXP_P4));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(EXP_P5));
    y = _mm256_add_ps(_mm256_mul_ps(y, z), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}
#endif

#ifdef OPS_HAVE_AVX2_PATH
/* exp8_avx2 on sixteen lanes: the same operations, roundscale with imm 1
 * being floor. */
OPS_AVX512 static inline __m512 exp16_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(EXP_LO));
    x = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
    const __m512 fx = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), _mm512_set1_ps(0.5f)),
                                           _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_sub_ps(x, _mm512_mul_ps(fx, _mm512_set1_ps(EXP_C1)));
    x = _mm512_sub_ps(x, _mm512_mul_ps(fx, _mm512_set1_ps(EXP_C2)));
    const __m512 z = _mm512_mul_ps(x, x);
    __m512 y = _mm512_set1_ps(EXP_P0);
    y = _mm512_add_ps(_mm512_mul_ps(y, x), _mm512_set1_ps(EXP_P1));
    y = _mm512_add_ps(_mm512_mul_ps(y, x), _mm512_set1_ps(EXP_P2));
    y = _mm512_add_ps(_mm512_mul_ps(y, x), _mm512_set1_ps(EXP_P3));
    y = _mm512_add_ps(_mm512_mul_ps(y, x), _mm512_set1_ps(EXP_P4));
    y = _mm512_add_ps(_mm512_mul_ps(y, x), _mm512_set1_ps(EXP_P5));
    y = _mm512_add_ps(_mm512_mul_ps(y, z), x);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    const __m512i n = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127));
    return _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(n, 23)));
}
#endif

/* ---- SwiGLU, softmax: plain versions ---- */

static void swiglu_plain(const float *gate, const float *up, int n, float *out) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = (g / (1.0f + kq_expf(-g))) * up[i];
    }
}

/* The sum of the exponentials: eight double lanes as in rmsnorm. */
static void softmax_plain(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
    double s[8] = {0};
    for (int i = 0; i < n; i++) {
        x[i] = kq_expf(x[i] - max);
        s[i & 7] += (double)x[i];
    }
    const double sum = sum8_tree(s);
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

#ifdef OPS_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void swiglu_avx2(const float *gate, const float *up, int n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8_avx2(_mm256_xor_ps(g, sign));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    swiglu_plain(gate + i, up + i, n - i, out + i);
}

/* The maximum is exact whatever the order (a -0/+0 tie changes nothing below). */
__attribute__((target("avx2"))) static void softmax_avx2(float *x, int n) {
    float max = -INFINITY;
    int i = 0;
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        float l[8];
        _mm256_storeu_ps(l, m);
        for (int j = 0; j < 8; j++) if (l[j] > max) max = l[j];
    }
    for (; i < n; i++) if (x[i] > max) max = x[i];
    const __m256 mv = _mm256_set1_ps(max);
    __m256d s_lo = _mm256_setzero_pd(), s_hi = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(x + i, e);
        s_lo = _mm256_add_pd(s_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s_hi = _mm256_add_pd(s_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double s[8];
    _mm256_storeu_pd(s, s_lo);
    _mm256_storeu_pd(s + 4, s_hi);
    for (; i < n; i++) {
        x[i] = kq_expf(x[i] - max);
        s[i & 7] += (double)x[i];
    }
    const double sum = sum8_tree(s);
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
    for (; i < n; i++) x[i] *= inv;
}
#endif

#ifdef OPS_HAVE_AVX2_PATH
/* Sixteen at a time; the tail goes to the AVX2 / plain loops, which compute
 * the same per-element function. */
OPS_AVX512 static void swiglu_avx512(const float *gate, const float *up, int n, float *out) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 e = exp16_avx512(_mm512_castsi512_ps(
            _mm512_xor_si512(_mm512_castps_si512(g), _mm512_set1_epi32((int)0x80000000u))));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
    swiglu_avx2(gate + i, up + i, n - i, out + i);
}

/* As softmax_avx2: element i's exponential goes into double lane i % 8, in
 * order; a 16-wide vector adds its low eight, then its high eight. */
OPS_AVX512 static void softmax_avx512(float *x, int n) {
    float max = -INFINITY;
    int i = 0;
    if (n >= 16) {
        __m512 m = _mm512_loadu_ps(x);
        for (i = 16; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
        max = _mm512_reduce_max_ps(m);
    }
    for (; i < n; i++) if (x[i] > max) max = x[i];
    const __m512 mv = _mm512_set1_ps(max);
    __m512d s8 = _mm512_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        _mm512_storeu_ps(x + i, e);
        s8 = _mm512_add_pd(s8, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s8 = _mm512_add_pd(s8, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    double s[8];
    _mm512_storeu_pd(s, s8);
    for (; i < n; i++) {
        x[i] = kq_expf(x[i] - max);
        s[i & 7] += (double)x[i];
    }
    const double sum = sum8_tree(s);
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    const __m512 iv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), iv));
    for (; i < n; i++) x[i] *= inv;
}
#endif

void kq_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* Eight independent partial sums (lane j takes elements j, j+8, ...),
 * combined in a fixed tree: independent of anything but the two inputs. */
static float dot_f32_plain(const float *a, const float *b, int n) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[i & 7] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void axpy_f32_plain(float *out, float w, const float *v, int n) {
    for (int i = 0; i < n; i++) out[i] += w * v[i];
}

#ifdef OPS_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static float dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    float s[8];
    _mm256_storeu_ps(s, acc);
    for (; i < n; i++) s[i & 7] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

__attribute__((target("avx2"))) static void axpy_f32_avx2(float *out, float w, const float *v, int n) {
    const __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(wv, _mm256_loadu_ps(v + i))));
    for (; i < n; i++) out[i] += w * v[i];
}

static int ops_avx2(void) { return kq_isa() >= KQ_ISA_AVX2; }
static int ops_avx512(void) { return kq_isa() >= KQ_ISA_AVX512VNNI; }
#endif

float kq_dot_f32(const float *a, const float *b, int n) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx2()) return dot_f32_avx2(a, b, n);
#endif
    return dot_f32_plain(a, b, n);
}

void kq_axpy_f32(float *out, float w, const float *v, int n) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx2()) { axpy_f32_avx2(out, w, v, n); return; }
#endif
    axpy_f32_plain(out, w, v, n);
}

float kq_dot_f32_ref(const float *a, const float *b, int n) { return dot_f32_plain(a, b, n); }
void kq_axpy_f32_ref(float *out, float w, const float *v, int n) { axpy_f32_plain(out, w, v, n); }

void kq_swiglu(const float *gate, const float *up, int n, float *out) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx512()) { swiglu_avx512(gate, up, n, out); return; }
    if (ops_avx2()) { swiglu_avx2(gate, up, n, out); return; }
#endif
    swiglu_plain(gate, up, n, out);
}

void kq_softmax(float *x, int n) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx512()) { softmax_avx512(x, n); return; }
    if (ops_avx2()) { softmax_avx2(x, n); return; }
#endif
    softmax_plain(x, n);
}

void kq_swiglu_ref(const float *gate, const float *up, int n, float *out) { swiglu_plain(gate, up, n, out); }
void kq_softmax_ref(float *x, int n) { softmax_plain(x, n); }

void kq_rmsnorm_row(const float *x, const float *w, int n, float eps, float *out) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx2()) { rmsnorm_avx2(x, w, n, eps, out); return; }
#endif
    rmsnorm_plain(x, w, n, eps, out);
}

void kq_rmsnorm_row_ref(const float *x, const float *w, int n, float eps, float *out) { rmsnorm_plain(x, w, n, eps, out); }
