/* qtypes.h — tensor element types (GGML numbering, as stored in GGUF files)
 * and the block layouts of the quantized ones.
 *
 * This header is the single source of truth for "how many bytes does a row of
 * n elements of type T take".  It knows nothing about models or files.  It
 * lives in common/ because both sides read it: the GGUF loader and the
 * backends in engine/, the CPU and CUDA kernels in kernels/; it includes
 * nothing of either.
 */
#ifndef PPD_QTYPES_H
#define PPD_QTYPES_H

#include <stddef.h>
#include <stdint.h>

/* Values are GGML's type ids: they are what GGUF tensor infos store. */
enum kq_type {
    KQ_F32  = 0,
    KQ_F16  = 1,
    KQ_Q4_0 = 2,
    KQ_Q4_1 = 3,
    KQ_Q5_0 = 6,
    KQ_Q5_1 = 7,
    KQ_Q8_0 = 8,
    KQ_Q8_1 = 9,
    KQ_Q2_K = 10,
    KQ_Q3_K = 11,
    KQ_Q4_K = 12,
    KQ_Q5_K = 13,
    KQ_Q6_K = 14,
    KQ_Q8_K = 15,
    KQ_IQ4_NL = 20,
    KQ_IQ4_XS = 23,
    KQ_BF16 = 30,
};

#define KQ_QK    32   /* elements per block of the 32-block types */
#define KQ_QK_K  256  /* elements per super-block of the k-quants */
#define KQ_K_SCALE_SIZE 12

typedef uint16_t kq_f16;  /* IEEE half, raw bits */
typedef uint16_t kq_bf16; /* bfloat16, raw bits */

/* Each struct below is byte-for-byte the layout GGUF files use. */
typedef struct { kq_f16 d; uint8_t qs[KQ_QK / 2]; } kq_block_q4_0;             /* 18 B */
typedef struct { kq_f16 d, m; uint8_t qs[KQ_QK / 2]; } kq_block_q4_1;          /* 20 B */
typedef struct { kq_f16 d; uint8_t qh[4]; uint8_t qs[KQ_QK / 2]; } kq_block_q5_0; /* 22 B */
typedef struct { kq_f16 d, m; uint8_t qh[4]; uint8_t qs[KQ_QK / 2]; } kq_block_q5_1; /* 24 B */
typedef struct { kq_f16 d; int8_t qs[KQ_QK]; } kq_block_q8_0;                  /* 34 B */
typedef struct { kq_f16 d, s; int8_t qs[KQ_QK]; } kq_block_q8_1;               /* 36 B, s = d*sum(qs) */
typedef struct { kq_f16 d; uint8_t qs[KQ_QK / 2]; } kq_block_iq4_nl;          /* 18 B */
typedef struct { uint8_t scales[KQ_QK_K / 16]; uint8_t qs[KQ_QK_K / 4]; kq_f16 d, dmin; } kq_block_q2_K; /* 84 B */
typedef struct { uint8_t hmask[KQ_QK_K / 8]; uint8_t qs[KQ_QK_K / 4]; uint8_t scales[KQ_K_SCALE_SIZE]; kq_f16 d; } kq_block_q3_K; /* 110 B */
typedef struct { kq_f16 d, dmin; uint8_t scales[KQ_K_SCALE_SIZE]; uint8_t qs[KQ_QK_K / 2]; } kq_block_q4_K; /* 144 B */
typedef struct { kq_f16 d, dmin; uint8_t scales[KQ_K_SCALE_SIZE]; uint8_t qh[KQ_QK_K / 8]; uint8_t qs[KQ_QK_K / 2]; } kq_block_q5_K; /* 176 B */
typedef struct { uint8_t ql[KQ_QK_K / 2]; uint8_t qh[KQ_QK_K / 4]; int8_t scales[KQ_QK_K / 16]; kq_f16 d; } kq_block_q6_K; /* 210 B */
typedef struct { kq_f16 d; uint16_t scales_h; uint8_t scales_l[KQ_QK_K / 64]; uint8_t qs[KQ_QK_K / 2]; } kq_block_iq4_xs; /* 136 B */
typedef struct { float d; int8_t qs[KQ_QK_K]; int16_t bsums[KQ_QK_K / 16]; } kq_block_q8_K; /* 292 B */

/* The 16 values an IQ4_NL / IQ4_XS nibble selects (GGML's kvalues_iq4nl). */
extern const int8_t kq_iq4nl_values[16];

/* Elements per block (1 for the plain float types); 0 for an unknown type. */
int64_t kq_type_block_elems(int type);
/* Bytes per block; 0 for an unknown type. */
size_t kq_type_block_bytes(int type);
/* "Q4_1", ... or NULL for an unknown type. */
const char *kq_type_name(int type);
/* 1 when the type may appear as a model weight (all of the above except Q8_1, Q8_K). */
int kq_type_is_weight(int type);
/* Bytes of a row of n elements, or 0 when n is not a multiple of the block size
 * or the type is unknown.  n must be >= 0. */
size_t kq_row_bytes(int type, int64_t n);

float kq_f16_to_f32(kq_f16 h);
kq_f16 kq_f32_to_f16(float f);     /* round to nearest even, like F16C */
float kq_bf16_to_f32(kq_bf16 h);

#endif
