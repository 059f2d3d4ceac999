/* ops.c — plain C versions of ops.h.  These are both the reference and, for now,
 * the fast path: they cost a few percent of a decode step next to the matmuls. */
#include "ops.h"

#include <math.h>

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

float kq_dot_f32(const float *a, const float *b, int n) {
    /* Eight independent partial sums, combined in a fixed tree: vectorisable
     * without -ffast-math and independent of anything but the two inputs. */
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[i & 7] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void kq_axpy_f32(float *out, float w, const float *v, int n) {
    for (int i = 0; i < n; i++) out[i] += w * v[i];
}
