/* matmul.c — the public entry points of matmul.h: weight preparation and the
 * run-time choice between the SIMD kernels and the plain reference.
 *
 * Paths, best first (cpu_isa.h chooses which this CPU takes):
 *   amx         matmul_avx512.c's tile kernels: the 32-block types at 4 rows
 *               and more; everything else falls through to avx512vnni.
 *   avx512vnni  matmul_avx512.c: Q4_0, Q4_1, Q8_0 on the repacked panels;
 *               the other types fall through to AVX2.
 *   avx2        matmul_avx2.c: Q4_0, Q4_1, Q8_0 (repacked panels) and the
 *               float types.
 *   scalar      matmul_ref.c, for every other type and on every other CPU.
 * All paths give bit-identical results (the tests check it), so the choice
 * changes speed only.  The panels are built whenever the CPU has AVX2, even
 * under a lower PPD_CPU_ISA cap, so that a test can switch paths on the same
 * weights.
 *
 * It deliberately contains no arithmetic.
 */
#include "matmul.h"
#include "matmul_avx2.h"
#include "matmul_avx512.h"
#include "matmul_kpanel.h"
#include "matmul_ref.h"

#include <stdlib.h>
#include <string.h>

#include "cpu_isa.h"

static int mm_type_supported(int type) {
    switch (type) {
    case KQ_F32: case KQ_F16: case KQ_BF16:
    case KQ_Q4_0: case KQ_Q4_1: case KQ_Q5_0: case KQ_Q5_1: case KQ_Q8_0: case KQ_IQ4_NL:
    case KQ_Q2_K: case KQ_Q3_K: case KQ_Q4_K: case KQ_Q5_K: case KQ_Q6_K: case KQ_IQ4_XS:
        return 1;
    default:
        return 0;
    }
}

int kq_weight_init(struct kq_weight *w, int type, const void *data, int64_t n_in, int64_t n_out) {
    memset(w, 0, sizeof *w);
    if (!mm_type_supported(type)) return KQ_E_UNSUPPORTED;
    if (n_in <= 0 || n_out < 0 || kq_row_bytes(type, n_in) == 0) return KQ_E_INVALID;
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->data = data;
    if (kq_isa_detected() >= KQ_ISA_AVX2) {
        int rc = kq_kpanel_type(type) ? kq_kpanel_repack(w) : kq_avx2_repack(w);
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

/* Calls handled per path, per thread: the tests read them to know which
 * kernel ran, so that a fast path silently not taken cannot pass as tested. */
static _Thread_local uint64_t path_calls[KQ_ISA_COUNT];

void kq_matmul(const struct kq_weight *w, const void *act, int n_rows,
               float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (n_rows <= 0 || o_begin >= o_end) return;
    if (kq_amx_usable() && kq_amx_matmul(w, act, n_rows, y, ldy, o_begin, o_end) == 0) {
        path_calls[KQ_ISA_AMX]++;
        return;
    }
    if (kq_avx512_usable() && kq_avx512_matmul(w, act, n_rows, y, ldy, o_begin, o_end) == 0) {
        path_calls[KQ_ISA_AVX512VNNI]++;
        return;
    }
    if (kq_avx2_usable() && kq_avx2_matmul(w, act, n_rows, y, ldy, o_begin, o_end) == 0) {
        path_calls[KQ_ISA_AVX2]++;
        return;
    }
    path_calls[KQ_ISA_SCALAR]++;
    kq_matmul_ref(w, act, n_rows, y, ldy, o_begin, o_end);
}

uint64_t kq_matmul_path_calls(int isa) {
    return isa >= 0 && isa < KQ_ISA_COUNT ? path_calls[isa] : 0;
}

const char *kq_matmul_path(void) {
    return kq_isa_name(kq_isa());
}
