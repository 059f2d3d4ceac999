/* matmul.c — the public entry points of matmul.h: weight preparation and the
 * run-time choice between the SIMD kernels and the plain reference.
 *
 * Paths, best first:
 *   avx512vnni  not written yet.  The place for it is kq_matmul below: a
 *               kernel using vpdpbusd on the same panels and the same per-block
 *               float order would slot in before the AVX2 test.  It is left out
 *               on purpose because no machine here can run it, and untested
 *               SIMD code has no place in a lossless engine.
 *   avx2        matmul_avx2.c: Q4_0, Q4_1, Q8_0 (repacked panels) and the
 *               float types; needs AVX2 and F16C.
 *   scalar      matmul_ref.c, for every other type and on every other CPU.
 * All paths give bit-identical results (the tests check it), so the choice
 * changes speed only.
 *
 * It deliberately contains no arithmetic.
 */
#include "matmul_internal.h"

#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

static int mm_type_supported(int type) {
    switch (type) {
    case KQ_F32: case KQ_F16: case KQ_BF16:
    case KQ_Q4_0: case KQ_Q4_1: case KQ_Q8_0:
    case KQ_Q4_K: case KQ_Q5_K: case KQ_Q6_K:
        return 1;
    default:
        return 0;
    }
}

int kq_weight_init(struct kq_weight *w, int type, const void *data, int64_t n_in, int64_t n_out) {
    memset(w, 0, sizeof *w);
    if (!mm_type_supported(type)) return ENG_E_UNSUPPORTED;
    if (n_in <= 0 || n_out < 0 || kq_row_bytes(type, n_in) == 0) return ENG_E_INVALID;
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->data = data;
    if (kq_avx2_usable()) {
        int rc = kq_avx2_repack(w);
        if (rc) {
            memset(w, 0, sizeof *w);
            return rc;
        }
    }
    return 0;
}

void kq_weight_free(struct kq_weight *w) {
    if (!w) return;
    free(w->packed);
    w->packed = NULL;
    w->packed_bytes = 0;
}

void kq_matmul(const struct kq_weight *w, const void *act, int n_rows,
               float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (n_rows <= 0 || o_begin >= o_end) return;
    /* (an AVX-512 VNNI kernel would be tried here, before AVX2) */
    if (kq_avx2_usable() && kq_avx2_matmul(w, act, n_rows, y, ldy, o_begin, o_end) == 0)
        return;
    kq_matmul_ref(w, act, n_rows, y, ldy, o_begin, o_end);
}

const char *kq_matmul_path(void) {
    return kq_avx2_usable() ? "avx2" : "scalar";
}
