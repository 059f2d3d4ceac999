/* bench_matmul.c — how close the CPU matmul kernels come to this machine's
 * floors, on the default model's shapes (SmolLM2-135M, random weights).
 *
 * Measures, with 2 threads (override with -t):
 *   1. memory read bandwidth: a streaming AVX2 read of a 256 MiB buffer;
 *   2. the int8 multiply-add peak, register only: (a) vpmaddubsw+vpaddw pairs
 *      alone, (b) the Q4_1 kernel's instruction mix per 8 outputs x 1 row x 1
 *      block (8 x (vpmaddubsw+vpaddw), vpmaddwd, vcvtdq2ps, 3 vmulps, 2 vaddps);
 *      on the avx512vnni path (c) its kernel's mix per 16 outputs x 1 row x 1
 *      block (8 vpdpbusd with broadcast loads, vcvtdq2ps, 3 vmulps, 2 vaddps);
 *   3. a "model matmul step": 30 layers x (q 576x576, k 576x192, v 576x192,
 *      o 576x576, gate 576x1536, up 576x1536, down 1536x576) in Q4_1 (-w TYPE:
 *      another 32-block type, e.g. -w Q8_0) plus the output 576x49152 in Q8_0,
 *      in sequence, each preceded by the activation
 *      quantization its input needs (rows split over threads, then outputs split
 *      over threads at multiples of 16 outputs as engine/model/backend_cpu.c does,
 *      spin barriers between), for n_rows = 1, 2, 4, ... 64.
 *      (-m N: up to N rows only).  Prints, per row count, the best and median step time, the floors
 *      bytes/bandwidth and rows*MACs/peak, and t(n)/t(1);
 *   4. the kernels alone (only these with -k), one thread, weights in cache
 *      (Q4_1 576x576, Q8_0 576x4096, the other 32-block types 576x576, the
 *      k-quants 1536x576): the best of many calls, as CPU-clock cycles (TSC
 *      ticks rescaled by a dependent-add chain) per (row, 8-output panel,
 *      32-block) = 256 MACs.  Being one thread with the best of many short
 *      calls, this is the figure that survives a loaded machine.
 *
 * Before timing, it checks that the fast path equals the reference on the
 * first Q4_1 and the Q8_0 matrix (exit 1 otherwise); the full comparison is
 * tests/unit/test_matmul.c.  It needs no model file.
 */
#include <immintrin.h>
#include <x86intrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "bench_clock.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_ref.h"
#include "kernels/cpu/quant_act.h"
#include "common/qtypes.h"

#define MAX_THREADS 8

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_state = 12345;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_sym(void) { return (float)(rng_next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }

/* ---- a spin barrier (sense reversal), yielding after a short spin ------------------------------------------ */

struct spin_barrier {
    atomic_int count;
    atomic_int sense;
    int n;
};

static void barrier_wait(struct spin_barrier *b, int *local_sense) {
    *local_sense = !*local_sense;
    if (atomic_fetch_add(&b->count, 1) == b->n - 1) {
        atomic_store(&b->count, 0);
        atomic_store(&b->sense, *local_sense);
    } else {
        /* spin briefly, then yield: on a shared machine the other thread may
         * be descheduled, and spinning through its time slice costs ms */
        for (int i = 0; atomic_load(&b->sense) != *local_sense; i++) {
            if (i < 4096) __builtin_ia32_pause();
            else sched_yield();
        }
    }
}

/* ---- generic "run fn on n threads" ------------------------------------------- */

struct team;
typedef void (*team_fn)(struct team *t, int tid);
struct team {
    int n;
    team_fn fn;
    void *arg;
    double result[MAX_THREADS];
};
struct team_slot { struct team *t; int tid; };

static void *team_entry(void *p) {
    struct team_slot *s = p;
    s->t->fn(s->t, s->tid);
    return NULL;
}

static void team_run(struct team *t) {
    pthread_t th[MAX_THREADS];
    struct team_slot slots[MAX_THREADS];
    for (int i = 1; i < t->n; i++) {
        slots[i] = (struct team_slot){t, i};
        pthread_create(&th[i], NULL, team_entry, &slots[i]);
    }
    t->fn(t, 0);
    for (int i = 1; i < t->n; i++) pthread_join(th[i], NULL);
}

/* ---- 1. bandwidth ------------------------------------------------------------- */

struct bw_arg { const uint8_t *buf; size_t bytes; struct spin_barrier bar; };

__attribute__((target("avx2"))) static void bw_thread(struct team *t, int tid) {
    struct bw_arg *a = t->arg;
    const size_t chunk = a->bytes / (size_t)t->n;
    const __m256i *p = (const __m256i *)(a->buf + chunk * (size_t)tid);
    const size_t nv = chunk / 32;
    int sense = 0;
    barrier_wait(&a->bar, &sense);
    double t0 = now_s();
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 4 <= nv; i += 4) {
        s0 = _mm256_xor_si256(s0, _mm256_load_si256(p + i));
        s1 = _mm256_xor_si256(s1, _mm256_load_si256(p + i + 1));
        s2 = _mm256_xor_si256(s2, _mm256_load_si256(p + i + 2));
        s3 = _mm256_xor_si256(s3, _mm256_load_si256(p + i + 3));
    }
    barrier_wait(&a->bar, &sense);
    double t1 = now_s();
    __m256i s = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
    t->result[tid] = (t1 - t0) + 1e-30 * (double)_mm256_extract_epi32(s, 0);
}

static double bench_bandwidth(int n_threads, size_t bytes) {
    uint8_t *buf = aligned_alloc(64, bytes);
    if (!buf) return 0.0;
    memset(buf, 1, bytes);
    struct bw_arg a = {buf, bytes, {0, 0, n_threads}};
    struct team t = {n_threads, bw_thread, &a, {0}};
    double best = 1e30;
    for (int rep = 0; rep < 8; rep++) {
        team_run(&t);
        if (t.result[0] < best) best = t.result[0];
    }
    free(buf);
    return (double)bytes / best;
}

/* ---- 2. register-only int8 peak ----------------------------------------------- */

#define PEAK_ITERS 4000000L
struct peak_arg { int mix; struct spin_barrier bar; };

/* Written in asm so that the compiler can neither hoist products out of the
 * loop nor spill accumulators to memory: these are instruction-mix ceilings. */

/* (a) vpmaddubsw+vpaddw pairs, 8 independent accumulators: 256 MACs/iteration */
__attribute__((target("avx2"))) static void peak_pairs(long iters) {
    __asm__ volatile(
        "vpcmpeqb %%ymm0, %%ymm0, %%ymm0\n\t"
        "vpabsb %%ymm0, %%ymm0\n\t"
        "vmovdqa %%ymm0, %%ymm1\n\t vmovdqa %%ymm0, %%ymm2\n\t vmovdqa %%ymm0, %%ymm3\n\t"
        "vmovdqa %%ymm0, %%ymm4\n\t vmovdqa %%ymm0, %%ymm5\n\t"
        "vpxor %%ymm8, %%ymm8, %%ymm8\n\t vpxor %%ymm9, %%ymm9, %%ymm9\n\t"
        "vpxor %%ymm10, %%ymm10, %%ymm10\n\t vpxor %%ymm11, %%ymm11, %%ymm11\n\t"
        "vpxor %%ymm12, %%ymm12, %%ymm12\n\t vpxor %%ymm13, %%ymm13, %%ymm13\n\t"
        "vpxor %%ymm14, %%ymm14, %%ymm14\n\t vpxor %%ymm15, %%ymm15, %%ymm15\n\t"
        "1:\n\t"
        "vpmaddubsw %%ymm4, %%ymm0, %%ymm6\n\t vpaddw %%ymm6, %%ymm8, %%ymm8\n\t"
        "vpmaddubsw %%ymm4, %%ymm1, %%ymm7\n\t vpaddw %%ymm7, %%ymm9, %%ymm9\n\t"
        "vpmaddubsw %%ymm4, %%ymm2, %%ymm6\n\t vpaddw %%ymm6, %%ymm10, %%ymm10\n\t"
        "vpmaddubsw %%ymm4, %%ymm3, %%ymm7\n\t vpaddw %%ymm7, %%ymm11, %%ymm11\n\t"
        "vpmaddubsw %%ymm5, %%ymm0, %%ymm6\n\t vpaddw %%ymm6, %%ymm12, %%ymm12\n\t"
        "vpmaddubsw %%ymm5, %%ymm1, %%ymm7\n\t vpaddw %%ymm7, %%ymm13, %%ymm13\n\t"
        "vpmaddubsw %%ymm5, %%ymm2, %%ymm6\n\t vpaddw %%ymm6, %%ymm14, %%ymm14\n\t"
        "vpmaddubsw %%ymm5, %%ymm3, %%ymm7\n\t vpaddw %%ymm7, %%ymm15, %%ymm15\n\t"
        "dec %0\n\t jnz 1b\n\t"
        "vzeroupper"
        : "+r"(iters)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

/* (b) the Q4_1 kernel's work per (8 outputs, 1 row, 1 block), two blocks per
 * iteration (512 MACs): 8 x (vpmaddubsw + vpaddw), vpmaddwd, vcvtdq2ps,
 * 3 vmulps, 2 vaddps each.  With loads != 0 the 8 activation broadcasts and
 * the 2 scale broadcasts come from L1 as in the kernel (vpbroadcastd,
 * vbroadcastss), which is the kernel's full inner-loop mix. */
__attribute__((target("avx2"))) static void peak_mix(long iters, int loads) {
    static int32_t l1buf[16] __attribute__((aligned(64))) = {0x01010101, 0x02020202};
    if (!loads) {
        __asm__ volatile(
            "vpcmpeqb %%ymm0, %%ymm0, %%ymm0\n\t vpabsb %%ymm0, %%ymm0\n\t"
            "vmovdqa %%ymm0, %%ymm1\n\t vmovdqa %%ymm0, %%ymm2\n\t vmovdqa %%ymm0, %%ymm3\n\t"
            "vmovdqa %%ymm0, %%ymm4\n\t vmovdqa %%ymm0, %%ymm5\n\t"
            "vpcmpeqw %%ymm8, %%ymm8, %%ymm8\n\t vpabsw %%ymm8, %%ymm8\n\t"
            "vxorps %%ymm9, %%ymm9, %%ymm9\n\t vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
            "vxorps %%ymm11, %%ymm11, %%ymm11\n\t vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
            "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
            "1:\n\t"
            "vpmaddubsw %%ymm4, %%ymm0, %%ymm6\n\t"
            "vpmaddubsw %%ymm4, %%ymm1, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm4, %%ymm2, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm4, %%ymm3, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm5, %%ymm0, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm5, %%ymm1, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm5, %%ymm2, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddubsw %%ymm5, %%ymm3, %%ymm7\n\t vpaddw %%ymm7, %%ymm6, %%ymm6\n\t"
            "vpmaddwd %%ymm8, %%ymm6, %%ymm6\n\t vcvtdq2ps %%ymm6, %%ymm6\n\t"
            "vmulps %%ymm10, %%ymm9, %%ymm7\n\t vmulps %%ymm6, %%ymm7, %%ymm6\n\t"
            "vmulps %%ymm12, %%ymm11, %%ymm7\n\t vaddps %%ymm7, %%ymm6, %%ymm6\n\t"
            "vaddps %%ymm6, %%ymm13, %%ymm13\n\t"
            "vpmaddubsw %%ymm5, %%ymm0, %%ymm14\n\t"
            "vpmaddubsw %%ymm5, %%ymm1, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm5, %%ymm2, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm5, %%ymm3, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm4, %%ymm0, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm4, %%ymm1, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm4, %%ymm2, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddubsw %%ymm4, %%ymm3, %%ymm15\n\t vpaddw %%ymm15, %%ymm14, %%ymm14\n\t"
            "vpmaddwd %%ymm8, %%ymm14, %%ymm14\n\t vcvtdq2ps %%ymm14, %%ymm14\n\t"
            "vmulps %%ymm12, %%ymm9, %%ymm15\n\t vmulps %%ymm14, %%ymm15, %%ymm14\n\t"
            "vmulps %%ymm10, %%ymm11, %%ymm15\n\t vaddps %%ymm15, %%ymm14, %%ymm14\n\t"
            "vaddps %%ymm14, %%ymm13, %%ymm13\n\t"
            "dec %0\n\t jnz 1b\n\t"
            "vzeroupper"
            : "+r"(iters)
            :
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
        return;
    }
    __asm__ volatile(
        "vpcmpeqb %%ymm0, %%ymm0, %%ymm0\n\t vpabsb %%ymm0, %%ymm0\n\t"
        "vmovdqa %%ymm0, %%ymm1\n\t vmovdqa %%ymm0, %%ymm2\n\t vmovdqa %%ymm0, %%ymm3\n\t"
        "vmovdqa %%ymm0, %%ymm4\n\t vmovdqa %%ymm0, %%ymm5\n\t vmovdqa %%ymm0, %%ymm6\n\t"
        "vmovdqa %%ymm0, %%ymm7\n\t"
        "vpcmpeqw %%ymm8, %%ymm8, %%ymm8\n\t vpabsw %%ymm8, %%ymm8\n\t"
        "vxorps %%ymm9, %%ymm9, %%ymm9\n\t vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
        "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
        "1:\n\t"
        "vpbroadcastd 0(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm0, %%ymm12\n\t"
        "vpbroadcastd 4(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm1, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 8(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm2, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 12(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm3, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 16(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm4, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 20(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm5, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 24(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm6, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpbroadcastd 28(%1), %%ymm11\n\t vpmaddubsw %%ymm11, %%ymm7, %%ymm11\n\t vpaddw %%ymm11, %%ymm12, %%ymm12\n\t"
        "vpmaddwd %%ymm8, %%ymm12, %%ymm12\n\t vcvtdq2ps %%ymm12, %%ymm12\n\t"
        "vbroadcastss 32(%1), %%ymm11\n\t vmulps %%ymm11, %%ymm9, %%ymm11\n\t vmulps %%ymm12, %%ymm11, %%ymm12\n\t"
        "vbroadcastss 36(%1), %%ymm11\n\t vmulps %%ymm11, %%ymm10, %%ymm11\n\t vaddps %%ymm11, %%ymm12, %%ymm12\n\t"
        "vaddps %%ymm12, %%ymm13, %%ymm13\n\t"
        "vpbroadcastd 0(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm7, %%ymm15\n\t"
        "vpbroadcastd 4(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm6, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 8(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm5, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 12(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm4, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 16(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm3, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 20(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm2, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 24(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm1, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpbroadcastd 28(%1), %%ymm14\n\t vpmaddubsw %%ymm14, %%ymm0, %%ymm14\n\t vpaddw %%ymm14, %%ymm15, %%ymm15\n\t"
        "vpmaddwd %%ymm8, %%ymm15, %%ymm15\n\t vcvtdq2ps %%ymm15, %%ymm15\n\t"
        "vbroadcastss 32(%1), %%ymm14\n\t vmulps %%ymm14, %%ymm9, %%ymm14\n\t vmulps %%ymm15, %%ymm14, %%ymm15\n\t"
        "vbroadcastss 36(%1), %%ymm14\n\t vmulps %%ymm14, %%ymm10, %%ymm14\n\t vaddps %%ymm14, %%ymm15, %%ymm15\n\t"
        "vaddps %%ymm15, %%ymm13, %%ymm13\n\t"
        "dec %0\n\t jnz 1b\n\t"
        "vzeroupper"
        : "+r"(iters)
        : "r"(l1buf)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
}

/* (c) the AVX-512 VNNI kernel's work per (16 outputs, 1 row, 1 block) = 512
 * MACs, four rows per iteration as in its row tiles: 8 vpdpbusd with the
 * activation broadcast from L1 in the instruction, then vcvtdq2ps, 3 vmulps
 * (two with a broadcast scale) and 2 vaddps.  Only on a CPU with it. */
__attribute__((target("avx512f,avx512vnni"))) static void peak_vnni(long iters) {
    static int32_t l1buf[64] __attribute__((aligned(64))) = {0x01010101, 0x02020202};
    __asm__ volatile(
        "vpternlogd $0xff, %%zmm0, %%zmm0, %%zmm0\n\t vpabsb %%zmm0, %%zmm0\n\t"
        "vmovdqa64 %%zmm0, %%zmm1\n\t vmovdqa64 %%zmm0, %%zmm2\n\t vmovdqa64 %%zmm0, %%zmm3\n\t"
        "vxorps %%zmm8, %%zmm8, %%zmm8\n\t vxorps %%zmm9, %%zmm9, %%zmm9\n\t"
        "vxorps %%zmm20, %%zmm20, %%zmm20\n\t vxorps %%zmm21, %%zmm21, %%zmm21\n\t"
        "vxorps %%zmm22, %%zmm22, %%zmm22\n\t vxorps %%zmm23, %%zmm23, %%zmm23\n\t"
        "1:\n\t"
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\t vpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\t vpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpdpbusd 0(%1)%{1to16%}, %%zmm0, %%zmm16\n\t"
        "vpdpbusd 64(%1)%{1to16%}, %%zmm0, %%zmm17\n\t"
        "vpdpbusd 128(%1)%{1to16%}, %%zmm0, %%zmm18\n\t"
        "vpdpbusd 192(%1)%{1to16%}, %%zmm0, %%zmm19\n\t"
        "vpdpbusd 4(%1)%{1to16%}, %%zmm1, %%zmm16\n\t"
        "vpdpbusd 68(%1)%{1to16%}, %%zmm1, %%zmm17\n\t"
        "vpdpbusd 132(%1)%{1to16%}, %%zmm1, %%zmm18\n\t"
        "vpdpbusd 196(%1)%{1to16%}, %%zmm1, %%zmm19\n\t"
        "vpdpbusd 8(%1)%{1to16%}, %%zmm2, %%zmm16\n\t"
        "vpdpbusd 72(%1)%{1to16%}, %%zmm2, %%zmm17\n\t"
        "vpdpbusd 136(%1)%{1to16%}, %%zmm2, %%zmm18\n\t"
        "vpdpbusd 200(%1)%{1to16%}, %%zmm2, %%zmm19\n\t"
        "vpdpbusd 12(%1)%{1to16%}, %%zmm3, %%zmm16\n\t"
        "vpdpbusd 76(%1)%{1to16%}, %%zmm3, %%zmm17\n\t"
        "vpdpbusd 140(%1)%{1to16%}, %%zmm3, %%zmm18\n\t"
        "vpdpbusd 204(%1)%{1to16%}, %%zmm3, %%zmm19\n\t"
        "vpdpbusd 16(%1)%{1to16%}, %%zmm0, %%zmm16\n\t"
        "vpdpbusd 80(%1)%{1to16%}, %%zmm0, %%zmm17\n\t"
        "vpdpbusd 144(%1)%{1to16%}, %%zmm0, %%zmm18\n\t"
        "vpdpbusd 208(%1)%{1to16%}, %%zmm0, %%zmm19\n\t"
        "vpdpbusd 20(%1)%{1to16%}, %%zmm1, %%zmm16\n\t"
        "vpdpbusd 84(%1)%{1to16%}, %%zmm1, %%zmm17\n\t"
        "vpdpbusd 148(%1)%{1to16%}, %%zmm1, %%zmm18\n\t"
        "vpdpbusd 212(%1)%{1to16%}, %%zmm1, %%zmm19\n\t"
        "vpdpbusd 24(%1)%{1to16%}, %%zmm2, %%zmm16\n\t"
        "vpdpbusd 88(%1)%{1to16%}, %%zmm2, %%zmm17\n\t"
        "vpdpbusd 152(%1)%{1to16%}, %%zmm2, %%zmm18\n\t"
        "vpdpbusd 216(%1)%{1to16%}, %%zmm2, %%zmm19\n\t"
        "vpdpbusd 28(%1)%{1to16%}, %%zmm3, %%zmm16\n\t"
        "vpdpbusd 92(%1)%{1to16%}, %%zmm3, %%zmm17\n\t"
        "vpdpbusd 156(%1)%{1to16%}, %%zmm3, %%zmm18\n\t"
        "vpdpbusd 220(%1)%{1to16%}, %%zmm3, %%zmm19\n\t"
        "vcvtdq2ps %%zmm16, %%zmm16\n\t vmulps 32(%1)%{1to16%}, %%zmm8, %%zmm24\n\t"
        "vmulps %%zmm16, %%zmm24, %%zmm24\n\t vmulps 36(%1)%{1to16%}, %%zmm9, %%zmm28\n\t"
        "vaddps %%zmm28, %%zmm24, %%zmm24\n\t vaddps %%zmm24, %%zmm20, %%zmm20\n\t"
        "vcvtdq2ps %%zmm17, %%zmm17\n\t vmulps 96(%1)%{1to16%}, %%zmm8, %%zmm25\n\t"
        "vmulps %%zmm17, %%zmm25, %%zmm25\n\t vmulps 100(%1)%{1to16%}, %%zmm9, %%zmm29\n\t"
        "vaddps %%zmm29, %%zmm25, %%zmm25\n\t vaddps %%zmm25, %%zmm21, %%zmm21\n\t"
        "vcvtdq2ps %%zmm18, %%zmm18\n\t vmulps 160(%1)%{1to16%}, %%zmm8, %%zmm26\n\t"
        "vmulps %%zmm18, %%zmm26, %%zmm26\n\t vmulps 164(%1)%{1to16%}, %%zmm9, %%zmm30\n\t"
        "vaddps %%zmm30, %%zmm26, %%zmm26\n\t vaddps %%zmm26, %%zmm22, %%zmm22\n\t"
        "vcvtdq2ps %%zmm19, %%zmm19\n\t vmulps 224(%1)%{1to16%}, %%zmm8, %%zmm27\n\t"
        "vmulps %%zmm19, %%zmm27, %%zmm27\n\t vmulps 228(%1)%{1to16%}, %%zmm9, %%zmm31\n\t"
        "vaddps %%zmm31, %%zmm27, %%zmm27\n\t vaddps %%zmm27, %%zmm23, %%zmm23\n\t"
        "dec %0\n\t jnz 1b\n\t"
        "vzeroupper"
        : "+r"(iters)
        : "r"(l1buf)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm8", "xmm9", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
          "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
          "cc", "memory");
}

static void peak_thread(struct team *t, int tid) {
    struct peak_arg *a = t->arg;
    int sense = 0;
    barrier_wait(&a->bar, &sense);
    double t0 = now_s();
    if (a->mix == 0) peak_pairs(PEAK_ITERS);
    else if (a->mix == 3) peak_vnni(PEAK_ITERS / 8);   /* 2048 MACs an iteration */
    else peak_mix(PEAK_ITERS / 2, a->mix == 2);
    barrier_wait(&a->bar, &sense);
    t->result[tid] = now_s() - t0;
}

/* MACs per second over all threads; mix 0: pairs, 1: kernel mix, 2: with
 * loads, 3: the VNNI kernel's mix with its loads */
static double bench_peak(int n_threads, int mix) {
    struct peak_arg a = {mix, {0, 0, n_threads}};
    struct team t = {n_threads, peak_thread, &a, {0}};
    const double macs = (double)PEAK_ITERS * 256;
    double best = 1e30;
    for (int rep = 0; rep < 8; rep++) {
        team_run(&t);
        if (t.result[0] < best) best = t.result[0];
    }
    return macs * n_threads / best;
}

/* ---- 3. the model step ----------------------------------------------------------- */

#define N_LAYER 30
#define N_EMBD 576
#define N_KV 192
#define N_FF 1536
#define N_VOCAB 49152
#define MAX_ROWS 64

/* Matrices of one layer, in execution order, and which input each quantizes:
 * a new input starts at q (attn), o, gate (ffn) and down. */
static const struct { int64_t n_in, n_out; int new_input; } layer_mats[7] = {
    {N_EMBD, N_EMBD, 1}, {N_EMBD, N_KV, 0}, {N_EMBD, N_KV, 0}, /* q k v */
    {N_EMBD, N_EMBD, 1},                                       /* o */
    {N_EMBD, N_FF, 1}, {N_EMBD, N_FF, 0},                      /* gate up */
    {N_FF, N_EMBD, 1},                                         /* down */
};

struct model {
    struct kq_weight w[N_LAYER * 7 + 1];
    void *data[N_LAYER * 7 + 1];
    int new_input[N_LAYER * 7 + 1];
    int n_mat;
    float *x;       /* MAX_ROWS x N_FF inputs */
    void *act;      /* quantized inputs */
    float *y;       /* MAX_ROWS x N_VOCAB outputs */
    double bytes, macs_per_row;
};

static void *random_weight_data(int type, int64_t n_in, int64_t n_out) {
    const size_t bytes = kq_row_bytes(type, n_in) * (size_t)n_out;
    uint8_t *p = malloc(bytes);
    if (!p) return NULL;
    for (size_t i = 0; i + 8 <= bytes; i += 8) { uint64_t r = rng_next(); memcpy(p + i, &r, 8); }
    /* sane f16 scales (no NaN, Inf or subnormal), wherever the type keeps them */
    const size_t bb = kq_type_block_bytes(type);
    size_t d_off = 0, m_off = 0;
    int has_m = type == KQ_Q4_1 || type == KQ_Q5_1 || type == KQ_Q4_K || type == KQ_Q5_K;
    if (has_m) m_off = 2;
    if (type == KQ_Q2_K) d_off = 80, m_off = 82, has_m = 1;
    if (type == KQ_Q3_K) d_off = 108;
    if (type == KQ_Q6_K) d_off = 208;
    for (size_t off = 0; off < bytes; off += bb) {
        kq_f16 d = kq_f32_to_f16(0.01f * rng_sym()), m = kq_f32_to_f16(-0.05f);
        memcpy(p + off + d_off, &d, 2);
        if (has_m) memcpy(p + off + m_off, &m, 2);
    }
    return p;
}

static int model_init(struct model *m, int type) {
    memset(m, 0, sizeof *m);
    for (int l = 0; l < N_LAYER; l++)
        for (int j = 0; j < 7; j++) {
            int i = m->n_mat++;
            m->data[i] = random_weight_data(type, layer_mats[j].n_in, layer_mats[j].n_out);
            if (!m->data[i] || kq_weight_init(&m->w[i], type, m->data[i], layer_mats[j].n_in, layer_mats[j].n_out))
                return -1;
            m->new_input[i] = layer_mats[j].new_input;
        }
    int i = m->n_mat++;
    m->data[i] = random_weight_data(KQ_Q8_0, N_EMBD, N_VOCAB);
    if (!m->data[i] || kq_weight_init(&m->w[i], KQ_Q8_0, m->data[i], N_EMBD, N_VOCAB)) return -1;
    m->new_input[i] = 1;
    for (int k = 0; k < m->n_mat; k++) {
        m->bytes += (double)kq_row_bytes(m->w[k].type, m->w[k].n_in) * (double)m->w[k].n_out;
        m->macs_per_row += (double)m->w[k].n_in * (double)m->w[k].n_out;
    }
    m->x = malloc(sizeof(float) * MAX_ROWS * N_FF);
    m->act = malloc(kq_act_bytes(type, N_FF, MAX_ROWS) > kq_act_bytes(KQ_Q8_0, N_FF, MAX_ROWS)
                        ? kq_act_bytes(type, N_FF, MAX_ROWS) : kq_act_bytes(KQ_Q8_0, N_FF, MAX_ROWS));
    m->y = malloc(sizeof(float) * MAX_ROWS * N_VOCAB);
    if (!m->x || !m->act || !m->y) return -1;
    for (int k = 0; k < MAX_ROWS * N_FF; k++) m->x[k] = 3.0f * rng_sym();
    return 0;
}

static void model_free(struct model *m) {
    for (int k = 0; k < m->n_mat; k++) { kq_weight_free(&m->w[k]); free(m->data[k]); }
    free(m->x); free(m->act); free(m->y);
}

/* Outputs per thread share: a pair of 8-output panels, as engine/model/backend_cpu.c
 * splits (the AVX2 kernel computes the two panels of a pair together). */
#define STEP_OUT_ALIGN 16

struct step_arg {
    struct model *m;
    int n_rows, reps;
    struct spin_barrier bar;
    double times[64], t_out[64];
};

static void step_thread(struct team *t, int tid) {
    struct step_arg *a = t->arg;
    struct model *m = a->m;
    const int nt = t->n, n_rows = a->n_rows;
    int sense = 0;
    for (int rep = 0; rep < a->reps; rep++) {
        barrier_wait(&a->bar, &sense);
        const double t0 = now_s();
        double t_before_out = t0;
        for (int k = 0; k < m->n_mat; k++) {
            const struct kq_weight *w = &m->w[k];
            if (k == m->n_mat - 1) t_before_out = now_s();
            if (m->new_input[k]) {
                const int r0 = n_rows * tid / nt, r1 = n_rows * (tid + 1) / nt;
                kq_act_quantize(w->type, m->x, w->n_in, r0, r1, m->act);
                barrier_wait(&a->bar, &sense);
            }
            const int64_t units = (w->n_out + STEP_OUT_ALIGN - 1) / STEP_OUT_ALIGN;
            int64_t o0 = units * tid / nt * STEP_OUT_ALIGN, o1 = units * (tid + 1) / nt * STEP_OUT_ALIGN;
            if (o1 > w->n_out) o1 = w->n_out;
            kq_matmul(w, m->act, n_rows, m->y, N_VOCAB, o0, o1);
            barrier_wait(&a->bar, &sense);
        }
        if (tid == 0) {
            const double t1 = now_s();
            a->times[rep] = t1 - t0;
            a->t_out[rep] = t1 - t_before_out;
        }
    }
}

/* Before timing anything, check the kernel it times: the fast path must equal
 * the plain reference bit for bit on one matrix of each type (as llm.c checks
 * each kernel against its CPU twin before timing it). */
static int check_fast_equals_ref(struct model *m) {
    const int n_rows = 8;
    for (int k = 0; k < m->n_mat; k++) {
        const struct kq_weight *w = &m->w[k];
        if (k != 0 && k != m->n_mat - 1) continue;   /* the first layer matrix and the Q8_0 output */
        const int64_t n_out = w->n_out < 256 ? w->n_out : 256;
        kq_act_quantize(w->type, m->x, w->n_in, 0, n_rows, m->act);
        float *a = malloc(sizeof(float) * (size_t)n_rows * (size_t)n_out);
        float *b = malloc(sizeof(float) * (size_t)n_rows * (size_t)n_out);
        if (!a || !b) { free(a); free(b); return -1; }
        kq_matmul(w, m->act, n_rows, a, n_out, 0, n_out);
        kq_matmul_ref(w, m->act, n_rows, b, n_out, 0, n_out);
        int same = memcmp(a, b, sizeof(float) * (size_t)n_rows * (size_t)n_out) == 0;
        free(a);
        free(b);
        if (!same) {
            fprintf(stderr, "bench_matmul: the %s fast path differs from the reference; not timing it\n",
                    kq_type_name(w->type));
            return -1;
        }
    }
    return 0;
}

/* ---- 4. the kernels alone -------------------------------------------------------- */

static void bench_kernel(int type, int64_t n_in, int64_t n_out, double tpc) {
    void *data = random_weight_data(type, n_in, n_out);
    struct kq_weight w;
    float *x = malloc(sizeof(float) * (size_t)n_in * 16), *y = malloc(sizeof(float) * (size_t)n_out * 16);
    void *act = malloc(kq_act_bytes(type, n_in, 16));
    if (!data || !x || !y || !act || kq_weight_init(&w, type, data, n_in, n_out)) {
        fprintf(stderr, "out of memory\n");
        free(data); free(x); free(y); free(act);
        return;
    }
    for (int64_t k = 0; k < n_in * 16; k++) x[k] = 3.0f * rng_sym();
    kq_act_quantize(type, x, n_in, 0, 16, act);
    printf("%-6s %4lldx%-5lld", kq_type_name(type), (long long)n_in, (long long)n_out);
    static const int rows[] = {1, 2, 3, 4, 8, 16};
    const double units = (double)((n_out + 7) / 8) * (double)(n_in / 32);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const int trials = 2000 / rows[i];
        uint64_t best = ~0ull;
        for (int k = 0; k < trials; k++) {
            const uint64_t t0 = __rdtsc();
            kq_matmul(&w, act, rows[i], y, n_out, 0, n_out);
            const uint64_t t = __rdtsc() - t0;
            if (t < best) best = t;
        }
        printf(" %6.2f", (double)best / tpc / (units * rows[i]));
    }
    printf("\n");
    kq_weight_free(&w);
    free(data); free(x); free(y); free(act);
}

int main(int argc, char **argv) {
    int n_threads = 2, reps = 10, kernels_only = 0, layer_type = KQ_Q4_1, max_rows = MAX_ROWS;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) max_rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-k")) kernels_only = 1;
        else if (!strcmp(argv[i], "-w") && i + 1 < argc) {
            const char *name = argv[++i];
            layer_type = -1;
            static const int q32[] = {KQ_Q4_0, KQ_Q4_1, KQ_Q5_0, KQ_Q5_1, KQ_Q8_0, KQ_IQ4_NL};
            for (size_t k = 0; k < sizeof q32 / sizeof q32[0]; k++)
                if (!strcasecmp(name, kq_type_name(q32[k]))) layer_type = q32[k];
            if (layer_type < 0) { fprintf(stderr, "-w: a 32-block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL)\n"); return 2; }
        } else {
            fprintf(stderr, "usage: %s [-t threads] [-r reps] [-w layer type] [-m max rows] [-k (section 4 only)]\n",
                    argv[0]);
            return 2;
        }
    }
    if (n_threads < 1 || n_threads > MAX_THREADS || reps < 1 || reps > 64) {
        fprintf(stderr, "threads 1..%d, reps 1..64\n", MAX_THREADS);
        return 2;
    }
    printf("matmul path: %s, threads: %d\n", kq_matmul_path(), n_threads);
    if (kernels_only) goto kernels;

    const double bw = bench_bandwidth(n_threads, (size_t)256 << 20);
    const double peak_pairs_macs = bench_peak(n_threads, 0), peak_mix_macs = bench_peak(n_threads, 1);
    const double peak_load_macs = bench_peak(n_threads, 2);
    printf("read bandwidth:                      %.1f GB/s\n", bw / 1e9);
    printf("int8 peak, maddubs+add pairs:        %.0f G MAC/s\n", peak_pairs_macs / 1e9);
    const int vnni = kq_isa() >= KQ_ISA_AVX512VNNI;
    const double peak_vnni_macs = vnni ? bench_peak(n_threads, 3) : 0.0;
    /* the compute floor: the mix of the kernel this path runs */
    const double peak_floor = vnni ? peak_vnni_macs : peak_mix_macs;
    printf("int8 peak, Q4_1 kernel mix:          %.0f G MAC/s%s\n", peak_mix_macs / 1e9,
           vnni ? "" : " (the compute floor below)");
    printf("int8 peak, mix + L1 broadcast loads: %.0f G MAC/s\n", peak_load_macs / 1e9);
    if (vnni)
        printf("int8 peak, AVX-512 VNNI Q4_1 mix:    %.0f G MAC/s (the compute floor below)\n", peak_vnni_macs / 1e9);
    else
        printf("int8 peak, AVX-512 VNNI Q4_1 mix:    not measured (path %s)\n", kq_matmul_path());

    struct model m;
    if (model_init(&m, layer_type)) { fprintf(stderr, "out of memory\n"); return 1; }
    if (check_fast_equals_ref(&m)) return 1;
    printf("model step: %d matrices (layers %s), %.1f MB of weights, %.1f M MACs per row\n",
           m.n_mat, kq_type_name(layer_type), m.bytes / 1e6, m.macs_per_row / 1e6);
    printf("%5s %9s %9s %8s %9s %9s %7s %7s\n", "rows", "best ms", "median", "out ms", "bw floor",
           "mac floor", "t/floor", "t/t(1)");
    static const int row_list[] = {1, 2, 4, 8, 16, 32, 64};
    double t1 = 0.0;
    for (size_t i = 0; i < sizeof row_list / sizeof row_list[0] && row_list[i] <= max_rows; i++) {
        struct step_arg a = {&m, row_list[i], reps + 1, {0, 0, n_threads}, {0}, {0}};
        struct team t = {n_threads, step_thread, &a, {0}};
        team_run(&t);
        double sorted[64];
        memcpy(sorted, a.times + 1, sizeof(double) * (size_t)reps); /* rep 0 warms up */
        qsort(sorted, (size_t)reps, sizeof(double), cmp_double);
        double best = sorted[0], med = sorted[reps / 2], out_best = 1e30;
        for (int r = 1; r <= reps; r++)
            if (a.t_out[r] < out_best) out_best = a.t_out[r];
        if (row_list[i] == 1) t1 = best;
        const double fb = m.bytes / bw, fm = row_list[i] * m.macs_per_row / peak_floor;
        const double floor = fb > fm ? fb : fm;
        printf("%5d %9.2f %9.2f %8.2f %9.2f %9.2f %7.2f %7.2f\n", row_list[i], best * 1e3, med * 1e3,
               out_best * 1e3, fb * 1e3, fm * 1e3, best / floor, best / t1);
    }
    model_free(&m);

kernels:;
    const double tpc = tsc_per_cycle();
    printf("kernels alone, 1 thread, weights in cache, core clock %.2f GHz: cycles per\n"
           "(row, 8-output panel, 32-block) = 256 MACs, best of many calls\n", tsc_hz() / tpc / 1e9);
    printf("%-17s %6s %6s %6s %6s %6s %6s\n", "rows:", "1", "2", "3", "4", "8", "16");
    bench_kernel(KQ_Q4_1, N_EMBD, N_EMBD, tpc);
    bench_kernel(KQ_Q8_0, N_EMBD, 4096, tpc);
    /* the types of the files people download (Q4_K_M, Q5_K_M, ...): the
     * 32-block ones on the model's 576-wide rows, the k-quants on ffn_down's */
    static const int q32[] = {KQ_Q4_0, KQ_Q5_0, KQ_Q5_1, KQ_IQ4_NL};
    for (size_t i = 0; i < sizeof q32 / sizeof q32[0]; i++) bench_kernel(q32[i], N_EMBD, N_EMBD, tpc);
    static const int kq[] = {KQ_Q2_K, KQ_Q3_K, KQ_Q4_K, KQ_Q5_K, KQ_Q6_K, KQ_IQ4_XS};
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) bench_kernel(kq[i], N_FF, N_EMBD, tpc);
    return 0;
}
