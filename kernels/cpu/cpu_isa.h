/* cpu_isa.h — which instruction-set path the CPU kernels take, chosen once at
 * run time from what this CPU and its operating system support.
 *
 * Paths are ordered: each one assumes everything the lower ones use.
 *   scalar      plain C, every CPU;
 *   avx2        AVX2 + FMA + F16C, 256-bit (Haswell, Zen 1 and later);
 *   avx512vnni  AVX-512 F/BW/DQ/VL + VNNI, 512-bit vpdpbusd (Ice Lake server,
 *               Zen 4 and later);
 *   amx         avx512vnni plus AMX-TILE and AMX-INT8: tile matrix multiplies
 *               of int8 (Xeon since Sapphire Rapids).  Linux must also grant
 *               the process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM),
 *               which detection asks for.
 * Detection reads CPUID and XGETBV (the OS must have enabled the YMM/ZMM
 * state), never the compiler's target: one binary runs on every x86-64 CPU.
 *
 * PPD_CPU_ISA=scalar|avx2|avx512vnni|amx in the environment caps the path (tests
 * and benchmarks use it); asking for a path the CPU lacks gives the best one it
 * has, and kq_isa_env_error says so.  Every path gives bit-identical results,
 * so the choice changes speed only.
 */
#ifndef PPD_CPU_ISA_H
#define PPD_CPU_ISA_H

#include <stddef.h>

enum kq_isa {
    KQ_ISA_SCALAR = 0,
    KQ_ISA_AVX2 = 1,
    KQ_ISA_AVX512VNNI = 2,
    KQ_ISA_AMX = 3,
    KQ_ISA_COUNT
};

/* The best path this CPU and OS support (cached after the first call). */
int kq_isa_detected(void);
/* The path the kernels take: kq_isa_detected() capped by PPD_CPU_ISA, or by
 * kq_isa_set.  Cheap: a load of a cached value. */
int kq_isa(void);
/* Use path `isa` from now on (tests run every path in one process).  Returns
 * 0, or -1 (nothing changed) when the CPU lacks it. */
int kq_isa_set(int isa);
/* "scalar", "avx2", "avx512vnni", "amx"; NULL for a value outside the enum. */
const char *kq_isa_name(int isa);
/* The enum value for a name, or -1. */
int kq_isa_from_name(const char *name);
/* 0 when PPD_CPU_ISA is unset or names a path this CPU has; otherwise 1 with
 * a message in err saying what was asked and what runs instead. */
int kq_isa_env_error(char *err, size_t cap);

#endif
