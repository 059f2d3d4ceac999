/* bench_attention.c — the CPU attention kernel alone (kernels/cpu/attention.c),
 * one thread, K/V in cache: the time of one layer's attention for a PPD tree
 * step of R rows over a prefix of P entries, on every path this CPU has.
 *
 * Shape: SmolLM2-135M's (9 query heads over 3 KV heads of 64); the R rows cut
 * into pieces of at most 8 (as equal as possible) and each piece into tasks of
 * one KV head's three query heads, as engine/model/backend_cpu.c cuts a tree step;
 * row r sees the prefix, the tree root and itself.  Prints, per path and
 * shape, the best of many calls in microseconds (TSC ticks over the TSC rate)
 * and in multiply-adds per core cycle (TSC ticks rescaled by a dependent-add
 * chain): the kernels multiply and add separately, so a core with two
 * multiply and two add pipes of 8 floats peaks at 16.
 *
 * Usage: bench_attention [-r rows,...] [-p prefix,...]
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/attention.h"
#include "bench_clock.h"
#include "kernels/cpu/cpu_isa.h"

#define N_HEAD 9
#define N_KV 3
#define HEAD_DIM 64
#define PIECE_ROWS 8
#define MAX_LIST 16

static int parse_list(const char *s, int *out) {
    int n = 0;
    while (*s && n < MAX_LIST) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static float rnd(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) * (1.0f / 16777216.0f) - 0.5f;
}

/* Best TSC ticks of one layer's attention for R rows over P prefix entries. */
static uint64_t run_layer(int R, int P, int calls) {
    const size_t kv_stride = (size_t)N_KV * HEAD_DIM, n_entries = (size_t)P + (size_t)R;
    const size_t q_floats = (size_t)R * N_HEAD * HEAD_DIM, row_stride = (size_t)N_HEAD * HEAD_DIM;
    float *k = malloc(sizeof(float) * kv_stride * n_entries), *v = malloc(sizeof(float) * kv_stride * n_entries);
    float *q = malloc(sizeof(float) * q_floats), *o = malloc(sizeof(float) * q_floats);
    int32_t *prefix = malloc(sizeof(int32_t) * (size_t)P), *own = malloc(sizeof(int32_t) * 2 * (size_t)R);
    const int32_t **own_rows = malloc(sizeof *own_rows * (size_t)R);
    int *n_own = malloc(sizeof(int) * (size_t)R);
    float *scratch = malloc(sizeof(float) * kq_attn_scratch_floats(PIECE_ROWS * N_HEAD, P + 2));
    if (!k || !v || !q || !o || !prefix || !own || !own_rows || !n_own || !scratch) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    uint32_t seed = 1;
    for (size_t i = 0; i < kv_stride * n_entries; i++) { k[i] = rnd(&seed); v[i] = rnd(&seed); }
    for (size_t i = 0; i < q_floats; i++) q[i] = rnd(&seed);
    for (int i = 0; i < P; i++) prefix[i] = i;
    for (int r = 0; r < R; r++) {   /* the tree root, then the row itself */
        own[2 * r] = P;
        own[2 * r + 1] = P + r;
        own_rows[r] = own + 2 * r;
        n_own[r] = r == 0 ? 1 : 2;
    }
    const int n_pieces = (R + PIECE_ROWS - 1) / PIECE_ROWS, n_rep = N_HEAD / N_KV;
    uint64_t best = ~0ull;
    for (int c = 0; c < calls; c++) {
        const uint64_t t0 = __rdtsc();
        for (int pc = 0; pc < n_pieces; pc++) {
            const int r0 = R * pc / n_pieces, r1 = R * (pc + 1) / n_pieces;
            for (int kvh = 0; kvh < N_KV; kvh++) {
                const struct kq_attn_task t = {
                    .k = k, .v = v, .kv_stride = kv_stride, .head_dim = HEAD_DIM, .scale = 0.125f,
                    .n_rep = n_rep, .head0 = kvh * n_rep, .n_head = n_rep,
                    .q = q + (size_t)r0 * row_stride, .q_stride = row_stride,
                    .out = o + (size_t)r0 * row_stride, .out_stride = row_stride,
                    .n_row = r1 - r0, .shared = prefix, .n_shared = P, .own = own_rows + r0, .n_own = n_own + r0};
                kq_attn_run(&t, scratch);
            }
        }
        const uint64_t t = __rdtsc() - t0;
        if (t < best) best = t;
    }
    free(k); free(v); free(q); free(o); free(prefix); free(own); free(own_rows); free(n_own); free(scratch);
    return best;
}

int main(int argc, char **argv) {
    int rows[MAX_LIST] = {1, 8, 16, 64}, prefixes[MAX_LIST] = {256, 1024}, n_rows = 4, n_prefix = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc) n_rows = parse_list(argv[++i], rows);
        else if (!strcmp(argv[i], "-p") && i + 1 < argc) n_prefix = parse_list(argv[++i], prefixes);
        else { fprintf(stderr, "usage: %s [-r rows,...] [-p prefix,...]\n", argv[0]); return 2; }
    }
    const double tpc = tsc_per_cycle(), hz = tsc_hz();
    printf("attention, one layer (%d query heads over %d KV heads of %d), 1 thread, core clock %.2f GHz\n", N_HEAD,
           N_KV, HEAD_DIM, hz / tpc * 1e-9);
    /* the amx path runs the avx512vnni attention */
    for (int isa = KQ_ISA_SCALAR; isa <= kq_isa_detected() && isa <= KQ_ISA_AVX512VNNI; isa++) {
        kq_isa_set(isa);
        for (int pi = 0; pi < n_prefix; pi++)
            for (int ri = 0; ri < n_rows; ri++) {
                const int R = rows[ri], P = prefixes[pi];
                if (R < 1 || P < 1) continue;
                const uint64_t t = run_layer(R, P, (long)R * P > 16384 ? 200 : 1000);
                /* scores and weighted sums: 2 * rows * heads * entries * head_dim */
                const double macs = 2.0 * R * N_HEAD * (P + 1.5) * HEAD_DIM;
                printf("%-10s rows %3d prefix %5d: %8.1f us  %5.2f MACs/cycle\n", kq_isa_name(isa), R, P,
                       (double)t / hz * 1e6, macs / ((double)t / tpc));
            }
    }
    return 0;
}
