/* test_amx_model.c — the amx path's matmul (kernels/cpu/matmul_avx512.c,
 * tile_amx) with its tile instructions replaced by a plain C model of what
 * Intel defines them to do (LDTILECFG, TILELOADD, TILEZERO, TDPBSUD,
 * TILESTORED), against the reference, bit for bit.
 *
 * The real amx path runs only on a CPU with AMX (test_matmul runs it there,
 * with every other path).  This test checks everything else in it on any
 * CPU with AVX-512 VNNI: the tile shapes it configures, the B tile formed
 * from the panels, the A tile read in place at the input's row stride, the
 * read-back of the int32 sums and the float work after them.  So on an AMX
 * CPU only the instructions themselves remain to be confirmed.
 *
 * How: the kernel file is compiled into this test a second time, with the
 * tile intrinsics defined as calls into the model below and its exported
 * functions renamed, so nothing in it runs an AMX instruction.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* ---- the model of the tile unit ---- */

struct model_tile {
    int rows, colsb;
    uint8_t b[16][64];
};
static _Thread_local struct model_tile model_tiles[8];
static int model_faults;   /* uses the hardware would reject (#GP / #UD) */

static void model_loadconfig(const void *cfg) {
    const uint8_t *c = cfg;
    if (c[0] != 1) model_faults++;
    for (int t = 0; t < 8; t++) {
        model_tiles[t].colsb = c[16 + 2 * t] | c[17 + 2 * t] << 8;
        model_tiles[t].rows = c[48 + t];
        if (model_tiles[t].colsb > 64 || model_tiles[t].rows > 16) model_faults++;
        memset(model_tiles[t].b, 0, sizeof model_tiles[t].b);
    }
}

static void model_loadd(int t, const void *base, long stride) {
    struct model_tile *m = &model_tiles[t];
    for (int r = 0; r < m->rows; r++) memcpy(m->b[r], (const uint8_t *)base + (long)r * stride, (size_t)m->colsb);
}

static void model_stored(int t, void *base, long stride) {
    const struct model_tile *m = &model_tiles[t];
    for (int r = 0; r < m->rows; r++) memcpy((uint8_t *)base + (long)r * stride, m->b[r], (size_t)m->colsb);
}

static void model_zero(int t) { memset(model_tiles[t].b, 0, sizeof model_tiles[t].b); }

/* dst.row[m].dword[n] += sum over k < a.colsb/4, i < 4 of
 * int8(a.row[m].byte[4k+i]) * uint8(b.row[k].byte[4n+i]). */
static void model_dpbsud(int dst, int a, int b) {
    struct model_tile *c = &model_tiles[dst];
    const struct model_tile *ta = &model_tiles[a], *tb = &model_tiles[b];
    if (ta->rows != c->rows || tb->rows != ta->colsb / 4 || tb->colsb != c->colsb) model_faults++;
    for (int m = 0; m < c->rows; m++)
        for (int n = 0; n < c->colsb / 4; n++) {
            int32_t acc;
            memcpy(&acc, c->b[m] + 4 * n, 4);
            for (int k = 0; k < ta->colsb / 4; k++)
                for (int i = 0; i < 4; i++) acc += (int8_t)ta->b[m][4 * k + i] * (int32_t)tb->b[k][4 * n + i];
            memcpy(c->b[m] + 4 * n, &acc, 4);
        }
}

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbsud
#define _tile_loadconfig(cfg) model_loadconfig(cfg)
#define _tile_loadd(t, base, stride) model_loadd(t, base, stride)
#define _tile_stored(t, base, stride) model_stored(t, base, stride)
#define _tile_zero(t) model_zero(t)
#define _tile_dpbsud(dst, a, b) model_dpbsud(dst, a, b)

#define kq_avx512_usable model_kq_avx512_usable
#define kq_avx512_matmul model_kq_avx512_matmul
#define kq_avx512_act_quantize_q32 model_kq_avx512_act_quantize_q32
#define kq_amx_usable model_kq_amx_usable
#define kq_amx_matmul model_amx_matmul
#include "kernels/cpu/matmul_avx512.c"
#undef kq_avx512_usable
#undef kq_avx512_matmul
#undef kq_avx512_act_quantize_q32
#undef kq_amx_usable
#undef kq_amx_matmul

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "common_test.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_ref.h"
#include "kernels/cpu/quant_act.h"
#include "common/qtypes.h"

static uint64_t rng_state;
static uint32_t rng_next(void) { /* splitmix64, high half */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}
static float rng_sym(void) { return (float)rng_next() * (2.0f / 4294967296.0f) - 1.0f; }

/* Random blocks with small finite scales (and mins where the type has them). */
static void *make_weights(int type, int64_t n_in, int64_t n_out) {
    const size_t total = kq_row_bytes(type, n_in) * (size_t)n_out, nb = (size_t)(n_in / KQ_QK * n_out);
    uint8_t *buf = malloc(total);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < total; i++) buf[i] = (uint8_t)rng_next();
    for (size_t i = 0; i < nb; i++) {
        const float d = 0.002f + 0.01f * (rng_sym() + 1.0f);
        switch (type) {
        case KQ_Q4_0: ((kq_block_q4_0 *)buf)[i].d = kq_f32_to_f16(d); break;
        case KQ_Q8_0: ((kq_block_q8_0 *)buf)[i].d = kq_f32_to_f16(-0.3f * d); break;
        case KQ_Q5_0: ((kq_block_q5_0 *)buf)[i].d = kq_f32_to_f16(d); break;
        case KQ_IQ4_NL: ((kq_block_iq4_nl *)buf)[i].d = kq_f32_to_f16(0.1f * d); break;
        case KQ_Q4_1:
            ((kq_block_q4_1 *)buf)[i].d = kq_f32_to_f16(d);
            ((kq_block_q4_1 *)buf)[i].m = kq_f32_to_f16(-8.0f * d * (1.0f + 0.5f * rng_sym()));
            break;
        case KQ_Q5_1:
            ((kq_block_q5_1 *)buf)[i].d = kq_f32_to_f16(d);
            ((kq_block_q5_1 *)buf)[i].m = kq_f32_to_f16(-16.0f * d * (1.0f + 0.5f * rng_sym()));
            break;
        default: ck_abort_msg("no generator for type %d", type);
        }
    }
    return buf;
}

/* Every 32-block type the amx path takes, at every row count it takes up to
 * 40 and at 64 (tiles of 4..16 rows, even splits), over output ranges that
 * start and end inside panels and pairs: equal to the reference bit for bit,
 * and every tile use one the hardware accepts. */
START_TEST(test_amx_model_equals_reference) {
    if (kq_isa_detected() < KQ_ISA_AVX512VNNI) {
        printf("amx kernel on the tile model: NOT RUN (this CPU lacks AVX-512 VNNI)\n");
        return;
    }
    static const int types[] = {KQ_Q4_0, KQ_Q4_1, KQ_Q8_0, KQ_Q5_0, KQ_Q5_1, KQ_IQ4_NL};
    static const int64_t ranges[][2] = {{0, 45}, {3, 42}, {5, 6}, {8, 24}, {17, 45}, {40, 45}};
    const int64_t n_in = 160, n_out = 45, ldy = n_out + 3;
    int calls = 0;
    rng_state = 99;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        void *wd = make_weights(type, n_in, n_out);
        struct kq_weight w;
        ck_assert_int_eq(kq_weight_init(&w, type, wd, n_in, n_out), 0);
        for (int n_rows = 1; n_rows <= 64; n_rows = n_rows < 40 ? n_rows + 1 : n_rows == 40 ? 64 : 65) {
            float *x = malloc(sizeof(float) * (size_t)(n_in * n_rows));
            for (int64_t k = 0; k < n_in * n_rows; k++) x[k] = 3.0f * rng_sym();
            void *act = malloc(kq_act_bytes(type, n_in, n_rows));
            kq_act_quantize(type, x, n_in, 0, n_rows, act);
            float *yref = malloc(sizeof(float) * (size_t)(ldy * n_rows)), *y = malloc(sizeof(float) * (size_t)(ldy * n_rows));
            kq_matmul_ref(&w, act, n_rows, yref, ldy, 0, n_out);
            for (size_t gi = 0; gi < sizeof ranges / sizeof ranges[0]; gi++) {
                const int64_t ob = ranges[gi][0], oe = ranges[gi][1];
                memset(y, 0x7f, sizeof(float) * (size_t)(ldy * n_rows));
                const int rc = model_amx_matmul(&w, act, n_rows, y, ldy, ob, oe);
                if (n_rows < KQ_AMX_MIN_ROWS) {
                    ck_assert_int_eq(rc, -1);
                    continue;
                }
                ck_assert_int_eq(rc, 0);
                calls++;
                for (int r = 0; r < n_rows; r++) {
                    const float *a = yref + (size_t)(r * ldy), *b = y + (size_t)(r * ldy);
                    ck_assert_msg(memcmp(a + ob, b + ob, sizeof(float) * (size_t)(oe - ob)) == 0,
                                  "%s, %d rows, outputs %lld..%lld: row %d differs", kq_type_name(type), n_rows,
                                  (long long)ob, (long long)oe, r);
                    for (int64_t o = 0; o < ldy; o++)
                        if (o < ob || o >= oe) {
                            uint32_t u;
                            memcpy(&u, b + o, 4);
                            ck_assert_msg(u == 0x7f7f7f7fu, "%s: output %lld outside the range written",
                                          kq_type_name(type), (long long)o);
                        }
                }
            }
            free(x); free(act); free(yref); free(y);
        }
        kq_weight_free(&w);
        free(wd);
    }
    ck_assert_int_eq(model_faults, 0);
    printf("amx kernel on the tile model: %d calls, 6 types, 4..40 and 64 rows, equal to the reference\n", calls);
}
END_TEST

int main(void) {
    Suite *s = suite_create("amx_model");
    TCase *tc = tcase_create("amx_model");
    test_set_timeout(tc, 300);
    tcase_add_test(tc, test_amx_model_equals_reference);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
