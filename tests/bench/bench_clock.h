/* bench_clock.h — the clocks the kernel benchmarks read: the monotonic clock,
 * TSC ticks per core cycle and TSC ticks per second. */
#ifndef PPD_BENCH_CLOCK_H
#define PPD_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>
#include <x86intrin.h>

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* TSC ticks per core cycle: a chain of dependent adds runs at one per cycle. */
static inline double tsc_per_cycle(void) {
    uint64_t best = ~0ull;
    for (int rep = 0; rep < 200; rep++) {
        long n = 100000;
        const uint64_t t0 = __rdtsc();
        __asm__ volatile("1:\n\t add $1, %%rax\n\t add $1, %%rax\n\t add $1, %%rax\n\t add $1, %%rax\n\t"
                         "dec %0\n\t jnz 1b" : "+r"(n) : : "rax", "cc");
        const uint64_t t = __rdtsc() - t0;
        if (t < best) best = t;
    }
    return (double)best / 400000.0;
}

/* TSC ticks per second, against the monotonic clock over 20 ms. */
static inline double tsc_hz(void) {
    const double t0 = now_s();
    const uint64_t c0 = __rdtsc();
    while (now_s() - t0 < 0.02) {
    }
    return (double)(__rdtsc() - c0) / (now_s() - t0);
}

#endif
