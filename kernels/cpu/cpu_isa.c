/* cpu_isa.c — CPUID/XGETBV detection of the kernel path and the PPD_CPU_ISA cap
 * (cpu_isa.h).  It holds no arithmetic. */
#include "cpu_isa.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define ISA_X86 1
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define ISA_AMX_LINUX 1
#endif

static const char *const isa_names[KQ_ISA_COUNT] = {"scalar", "avx2", "avx512vnni", "amx"};

#ifdef ISA_X86
/* XCR0, read only after CPUID says OSXSAVE (xgetbv faults otherwise). */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Linux keeps the 8 KB tile data state off until a process asks for it; a
 * tile instruction before that faults.  The grant is process-wide, so asking
 * once here, before any kernel runs, covers every thread. */
static int amx_permitted(void) {
#ifdef ISA_AMX_LINUX
    const long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
    return 0;
#endif
}

static int detect(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KQ_ISA_SCALAR;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return KQ_ISA_SCALAR;
    const uint64_t xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return KQ_ISA_SCALAR;           /* XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return KQ_ISA_SCALAR;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    if (!(avx2 && fma && f16c)) return KQ_ISA_SCALAR;
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    const int vnni = (c >> 11) & 1;
    const int zmm_state = (xcr0 & 0xE0) == 0xE0;              /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (!(f && dq && bw && vl && vnni && zmm_state)) return KQ_ISA_AVX2;
    const int amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    const int tile_state = (xcr0 & 0x60000) == 0x60000;      /* XTILECFG, XTILEDATA */
    if (amx_tile && amx_int8 && tile_state && amx_permitted()) return KQ_ISA_AMX;
    return KQ_ISA_AVX512VNNI;
}
#else
static int detect(void) { return KQ_ISA_SCALAR; }
#endif

static int detected = -1;
static int active = -1;

int kq_isa_detected(void) {
    if (detected < 0) detected = detect();
    return detected;
}

int kq_isa_from_name(const char *name) {
    for (int i = 0; i < KQ_ISA_COUNT; i++)
        if (name && !strcmp(name, isa_names[i])) return i;
    return -1;
}

const char *kq_isa_name(int isa) {
    return isa >= 0 && isa < KQ_ISA_COUNT ? isa_names[isa] : NULL;
}

int kq_isa(void) {
    int v = __atomic_load_n(&active, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    v = kq_isa_detected();
    const int want = kq_isa_from_name(getenv("PPD_CPU_ISA"));
    if (want >= 0 && want < v) v = want;
    __atomic_store_n(&active, v, __ATOMIC_RELAXED);
    return v;
}

int kq_isa_set(int isa) {
    if (isa < 0 || isa > kq_isa_detected()) return -1;
    __atomic_store_n(&active, isa, __ATOMIC_RELAXED);
    return 0;
}

int kq_isa_env_error(char *err, size_t cap) {
    const char *env = getenv("PPD_CPU_ISA");
    if (!env || !*env) return 0;
    const int want = kq_isa_from_name(env);
    if (want < 0) {
        snprintf(err, cap, "PPD_CPU_ISA=%s: unknown path (scalar, avx2, avx512vnni or amx)", env);
        return 1;
    }
    if (want > kq_isa_detected()) {
        snprintf(err, cap, "PPD_CPU_ISA=%s: this CPU lacks it; the best it has is %s", env,
                 kq_isa_name(kq_isa_detected()));
        return 1;
    }
    return 0;
}
