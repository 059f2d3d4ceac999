/* ops.c — plain C versions of ops.h, plus AVX2 versions of the two attention
 * inner loops (dot and axpy), which are a fifth of a decode step at a few
 * hundred tokens of context.  The AVX2 versions perform the very same float
 * operations per lane (multiply, then add; no FMA) in the same order, so they
 * are bit-identical to the plain ones and need no separate reference. */
#include "ops.h"

#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define OPS_HAVE_AVX2_PATH 1
#endif

void kq_rmsnorm_row(const float *x, const float *w, int n, float eps, float *out) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void kq_rope_row(float *x, int n_head, int head_dim, int n_rot, int32_t pos, float freq_base, int neox) {
    /* Angles by repeated multiplication, as ggml computes them, rather than
     * powf per dimension: it keeps our logits within float noise of llama.cpp's. */
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float cache[2 * 512];
    int half = n_rot / 2;
    float theta = (float)pos;
    for (int i = 0; i < half && i < 512; i++) {
        cache[2 * i] = cosf(theta);
        cache[2 * i + 1] = sinf(theta);
        theta *= theta_scale;
    }
    for (int h = 0; h < n_head; h++) {
        float *hx = x + (long)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float c = cache[2 * i], s = cache[2 * i + 1];
            const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            const float x0 = hx[a], x1 = hx[b];
            hx[a] = x0 * c - x1 * s;
            hx[b] = x0 * s + x1 * c;
        }
    }
}

void kq_swiglu(const float *gate, const float *up, int n, float *out) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

void kq_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

void kq_softmax(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        const float e = x[i] == -INFINITY ? 0.0f : expf(x[i] - max);
        x[i] = e;
        sum += (double)e;
    }
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    for (int i = 0; i < n; i++) x[i] *= inv;
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

/* Eight dots sharing b.  The lane sums are formed exactly as in dot_f32_avx2;
 * the final tree ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) of all eight is done with
 * horizontal adds: hadd pairs lanes (0,1),(2,3) within each 128-bit half, the
 * second hadd adds those pairs, and the last add joins the two halves, which is
 * the very same sequence of additions per dot, so the results are identical. */
__attribute__((target("avx2"))) static void dot8_f32_avx2(const float *const a[8], const float *b, int n, float out[8]) {
    __m256 acc[8];
    for (int d = 0; d < 8; d++) acc[d] = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 bv = _mm256_loadu_ps(b + i);
        for (int d = 0; d < 8; d++) acc[d] = _mm256_add_ps(acc[d], _mm256_mul_ps(_mm256_loadu_ps(a[d] + i), bv));
    }
    const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(u0), _mm256_extractf128_ps(u0, 1)));
    _mm_storeu_ps(out + 4, _mm_add_ps(_mm256_castps256_ps128(u1), _mm256_extractf128_ps(u1, 1)));
}

static int ops_avx2(void) {
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    return cached;
}
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

void kq_dot8_f32(const float *const a[8], const float *b, int n, float out[8]) {
#ifdef OPS_HAVE_AVX2_PATH
    if (ops_avx2() && n % 8 == 0) { dot8_f32_avx2(a, b, n, out); return; }
#endif
    for (int d = 0; d < 8; d++) out[d] = kq_dot_f32(a[d], b, n);
}

float kq_dot_f32_ref(const float *a, const float *b, int n) { return dot_f32_plain(a, b, n); }
void kq_axpy_f32_ref(float *out, float w, const float *v, int n) { axpy_f32_plain(out, w, v, n); }
