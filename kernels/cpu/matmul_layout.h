/* matmul_layout.h — what every matmul file shares: the weight handle
 * (struct kq_weight), the kernels' status codes, and the byte layout of a
 * quantized input row and of the repacked weight panels.
 *
 * It holds only layout arithmetic (offsets, strides, which input block type a
 * weight type takes), as inline functions, and declares no function of any
 * .c file: each kernel file has its own header, so the files' dependencies
 * read from their includes and run one way (matmul.c → the paths → this).
 *
 * Quantized input ("act") layout, one row after another, row r at r*stride:
 *   32-block weights (Q4_0, Q4_1, Q8_0):
 *     [nb blocks kq_block_q8_0 or kq_block_q8_1, GGUF layout]
 *     [nb float d]  the block scale, = f16_to_f32(block.d)
 *     [nb int32 asum (Q8_0) | nb float s (Q8_1)]  s = f16_to_f32(block.s)
 *     Q8_1 only: [nb int32 asum]
 *     The arrays duplicate what the blocks hold (or, for asum = the sum of
 *     the block's bytes, what they imply) so that the SIMD kernels broadcast
 *     a ready f32/int32 straight from memory; the reference reads only the
 *     GGUF blocks.
 *   k-quant weights: [nb_k blocks kq_block_q8_K]
 *   float weights:   the row's n_in floats (act is x itself, stride n_in*4)
 *   Quantized strides are rounded up to 64 bytes; a row's layout depends only
 *   on (weight type, n_in), never on how many rows share the buffer.
 *
 * Repacked weights ("panels"): outputs are grouped 8 at a time, a panel of 8
 * outputs p*8 .. p*8+7, and panels 2k and 2k+1 form a pair (n_out padded with
 * zero rows to a multiple of 16).  Per pair, the blocks b = 0 .. nb-1 follow
 * one another, and in each the two panels' blocks sit side by side:
 *   [pair 0: (panel 0, b 0)(panel 1, b 0)(panel 0, b 1)(panel 1, b 1) ...]
 *   [pair 1: (panel 2, b 0)(panel 3, b 0) ...] ...
 * so that the AVX2 kernel, which computes both panels of a pair together,
 * reads one sequential stream (kq_packed_block_offset).  Output ranges split
 * at multiples of 16 keep pairs whole; a range that starts or ends inside a
 * pair is still computed exactly (that panel alone), only less efficiently.
 * One panel block:
 *   Q4_1 block (160 B): [8 x f16 d][8 x f16 m][4 x 32 B nibbles]
 *   Q4_0 block (144 B): [8 x f16 d][4 x 32 B nibbles]
 *   Q8_0 block (272 B): [8 x f16 d][8 x 32 B int8]
 *   IQ4_NL block (144 B): as Q4_0's (its blocks have the same layout); the
 *     kernels look each nibble's value kv up with vpshufb.
 *   Q5_0 block (176 B): [8 x f16 d][8 x uint32 qh][4 x 32 B nibbles]
 *   Q5_1 block (192 B): [8 x f16 d][8 x f16 m][8 x uint32 qh][4 x 32 B nibbles]
 *     The nibbles as Q4_0's; lane o of qh is output o's GGUF qh (bit e: the
 *     fifth bit of element e), so group g's fifth bits are qh bits 4g..4g+3.
 *   k-quant block ("K panel", one 256-element super-block of 8 outputs; Q2_K,
 *   Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS):
 *     [8 x f16 d][8 x f16 dmin (0 for the types without mins)]
 *     [8 x 32 B sc]  vector k, lane o: int16 scales of the 16-element halves
 *                    2k and 2k+1 (a 32-element sub-block's scale twice)
 *     [8 x 32 B mc]  only the types with mins: the same for the mins
 *     [quants]       unsigned bytes u = q + bias (bias: Q6_K 32, Q3_K 4,
 *                    IQ4_XS 128 with q = kv[nibble], others 0) so that
 *                    sum q*a = sum u*a - bias*sum a, exact in int32.
 *                    Byte types: 64 vectors, vector k holding in lane o the
 *                    elements 4k..4k+3 (2048 B).
 *                    Nibble types (Q4_K: u itself, IQ4_XS: the kv index):
 *                    4 chunks of 64 elements, 8 vectors each; vector v of
 *                    chunk c holds in lane o 4 bytes whose low nibbles are
 *                    elements 64c+4v..+3 and high nibbles 64c+32+4v..+3
 *                    (Q4_K's own byte order: a straight dword interleave).
 *     The super-block's integer sums are then
 *       A = sum_h sc_h * sum_{e in h} u_e*a_e      (h: the 16 halves)
 *       B = sum_h mc_h * bsum_h  (with mins)   or   bias * sum_h sc_h * bsum_h
 *     with bsum_h the Q8_K block's bsums, and the reference's float work is
 *     (d*da)*A - (dmin*da)*B (with mins) or (d*da)*(A - B).
 *     Unlike the other types, the two panels of a pair are interleaved
 *     finely (kq_kpanel_pair_off): both panels' d side by side, then both
 *     dmin, then each 32-byte vector of panel 0 followed by the same vector
 *     of panel 1, so that one 512-bit load takes a vector of the pair.
 * In the nibble vectors, vector v (0..3) holds in its 32-bit lane o the GGUF
 * bytes qs[4v .. 4v+3] of output o: low nibbles are elements 4v..4v+3, high
 * nibbles elements 16+4v..16+4v+3.  In the Q8_0 vectors, vector g (0..7)
 * holds in lane o the elements 4g..4g+3 of output o.  This is a pure dword
 * interleave of the GGUF bytes: nothing is re-quantized.
 */
#ifndef PPD_MATMUL_LAYOUT_H
#define PPD_MATMUL_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "common/qtypes.h"

/* What the fallible kernel functions return: 0 or one of these.  The kernels
 * know no engine; the CPU backend turns them into its own error codes. */
enum kq_status {
    KQ_OK = 0,
    KQ_E_NOMEM = -1,        /* a repacked copy could not be allocated */
    KQ_E_UNSUPPORTED = -2,  /* no kernel for this weight type */
    KQ_E_INVALID = -3,      /* n_in not a multiple of the type's block, or a negative size */
};

struct kq_weight {
    int type;            /* enum kq_type of the stored data */
    int64_t n_in;        /* elements per row (multiple of the type's block size) */
    int64_t n_out;       /* rows */
    const void *data;    /* n_out rows in GGUF layout, not owned (usually the mmap) */
    void *packed;        /* kernel-specific repacked copy, owned; NULL when unused */
    size_t packed_bytes;
};

#define KQ_PANEL 8          /* outputs per repacked panel (one AVX2 float vector) */
#define KQ_PANEL_PAIR 2     /* panels whose blocks are interleaved in the packed layout */
#define KQ_ACT_ALIGN 64     /* quantized row strides are multiples of this */

#define KQ_PANEL_Q4_1_BYTES (16 + 16 + 128)
#define KQ_PANEL_Q4_0_BYTES (16 + 128)
#define KQ_PANEL_Q8_0_BYTES (16 + 256)
#define KQ_Q5_0_QH 16        /* where a Q5_0 / Q5_1 panel block's qh words start */
#define KQ_Q5_1_QH 32
#define KQ_PANEL_Q5_0_BYTES (16 + 32 + 128)
#define KQ_PANEL_Q5_1_BYTES (16 + 16 + 32 + 128)

/* Block type of the quantized input for weights of type wtype: KQ_Q8_0,
 * KQ_Q8_1 or KQ_Q8_K, or KQ_F32 for the float weight types; -1 if unknown. */
static inline int kq_act_type(int wtype) {
    switch (wtype) {
    case KQ_Q4_0: case KQ_Q5_0: case KQ_Q8_0: case KQ_IQ4_NL:
        return KQ_Q8_0;
    case KQ_Q4_1: case KQ_Q5_1:
        return KQ_Q8_1;
    case KQ_Q2_K: case KQ_Q3_K: case KQ_Q4_K: case KQ_Q5_K: case KQ_Q6_K: case KQ_IQ4_XS:
        return KQ_Q8_K;
    case KQ_F32: case KQ_F16: case KQ_BF16:    return KQ_F32;
    default:                                   return -1;
    }
}

/* Byte offsets inside one quantized row of a 32-block weight type. */
struct kq_act_geom {
    size_t stride;     /* bytes per row */
    size_t blk_bytes;  /* sizeof(kq_block_q8_0) or sizeof(kq_block_q8_1) */
    size_t off_d;      /* float d[nb] */
    size_t off_s;      /* int32 asum[nb] (Q8_0) or float s[nb] (Q8_1) */
    size_t off_a;      /* int32 asum[nb] (= off_s for Q8_0) */
};

/* Layout of a quantized row for a 32-block weight type (Q4_0, Q4_1, Q5_0,
 * Q5_1, Q8_0, IQ4_NL). */
static inline struct kq_act_geom kq_act_geom_q32(int wtype, int64_t n_in) {
    struct kq_act_geom g;
    size_t nb = (size_t)(n_in / KQ_QK);
    g.blk_bytes = kq_act_type(wtype) == KQ_Q8_1 ? sizeof(kq_block_q8_1) : sizeof(kq_block_q8_0);
    g.off_d = (nb * g.blk_bytes + 3) & ~(size_t)3;
    g.off_s = g.off_d + nb * 4;
    g.off_a = g.blk_bytes == sizeof(kq_block_q8_1) ? g.off_s + nb * 4 : g.off_s;
    g.stride = (g.off_a + nb * 4 + KQ_ACT_ALIGN - 1) & ~(size_t)(KQ_ACT_ALIGN - 1);
    return g;
}

/* Bytes of one quantized input row for weights of type wtype (0 if unknown). */
static inline size_t kq_act_row_bytes(int wtype, int64_t n_in) {
    switch (kq_act_type(wtype)) {
    case KQ_Q8_0: case KQ_Q8_1:
        return kq_act_geom_q32(wtype, n_in).stride;
    case KQ_Q8_K: {
        size_t b = (size_t)(n_in / KQ_QK_K) * sizeof(kq_block_q8_K);
        return (b + KQ_ACT_ALIGN - 1) & ~(size_t)(KQ_ACT_ALIGN - 1);
    }
    case KQ_F32:
        return (size_t)n_in * sizeof(float);
    default:
        return 0;
    }
}

/* Bytes needed to hold n_rows quantized input rows for weights of type wtype. */
static inline size_t kq_act_bytes(int wtype, int64_t n_in, int n_rows) {
    return kq_act_row_bytes(wtype, n_in) * (size_t)(n_rows > 0 ? n_rows : 0);
}

/* Row r of a quantized input: n_in/block elements of kq_act_type(wtype) blocks
 * in GGUF layout (for float weight types, the row's n_in floats). */
static inline const void *kq_act_row(int wtype, const void *act, int64_t n_in, int r) {
    return (const uint8_t *)act + kq_act_row_bytes(wtype, n_in) * (size_t)r;
}

#define KQ_KP_DMIN 16      /* offsets inside a K panel block */
#define KQ_KP_SC 32
#define KQ_KP_MC (32 + 256)

static inline int kq_kpanel_type(int type) {
    return type == KQ_Q2_K || type == KQ_Q3_K || type == KQ_Q4_K || type == KQ_Q5_K || type == KQ_Q6_K ||
           type == KQ_IQ4_XS;
}
static inline int kq_kpanel_has_min(int type) { return type == KQ_Q2_K || type == KQ_Q4_K || type == KQ_Q5_K; }
static inline int kq_kpanel_nibbles(int type) { return type == KQ_Q4_K || type == KQ_IQ4_XS; }
/* log2 of the bias added to each quant (0: none). */
static inline int kq_kpanel_bias_log2(int type) {
    return type == KQ_Q6_K ? 5 : type == KQ_Q3_K ? 2 : type == KQ_IQ4_XS ? 7 : 0;
}
/* 1 when both halves of every 32 elements share one scale (and min). */
static inline int kq_kpanel_sub32(int type) { return type == KQ_Q4_K || type == KQ_Q5_K || type == KQ_IQ4_XS; }
static inline size_t kq_kpanel_quant_off(int type) { return kq_kpanel_has_min(type) ? KQ_KP_MC + 256 : KQ_KP_MC; }
/* Where byte `off` of panel p's (p = 0, 1) K panel block sits in its pair's
 * block (which starts where panel 0's would).  For the start of a 16-byte
 * f16 row that is 2*off + 16p, for the start of a 32-byte vector 2*off + 32p:
 * the kernels use those forms. */
static inline size_t kq_kpanel_pair_off(size_t off, int p) {
    if (off < KQ_KP_SC) return (off / 16) * 32 + 16 * (size_t)p + off % 16;
    return 2 * KQ_KP_SC + ((off - KQ_KP_SC) / 32) * 64 + 32 * (size_t)p + (off - KQ_KP_SC) % 32;
}

/* Bytes per packed block of a panel for a repacked type; 0 when the type is
 * not repacked. */
static inline size_t kq_panel_block_bytes(int type) {
    if (kq_kpanel_type(type)) return kq_kpanel_quant_off(type) + (kq_kpanel_nibbles(type) ? 1024 : 2048);
    switch (type) {
    case KQ_Q4_1: return KQ_PANEL_Q4_1_BYTES;
    case KQ_Q4_0: return KQ_PANEL_Q4_0_BYTES;
    case KQ_Q8_0: return KQ_PANEL_Q8_0_BYTES;
    case KQ_IQ4_NL: return KQ_PANEL_Q4_0_BYTES;
    case KQ_Q5_0: return KQ_PANEL_Q5_0_BYTES;
    case KQ_Q5_1: return KQ_PANEL_Q5_1_BYTES;
    default:      return 0;
    }
}

/* Bytes of the packed copy of an n_in x n_out weight of a repacked type. */
static inline size_t kq_packed_bytes(int type, int64_t n_in, int64_t n_out) {
    const int64_t per_pair = KQ_PANEL * KQ_PANEL_PAIR;
    const size_t n_pairs = (size_t)((n_out + per_pair - 1) / per_pair);
    return n_pairs * (size_t)(n_in / kq_type_block_elems(type)) * KQ_PANEL_PAIR * kq_panel_block_bytes(type);
}

/* Byte offset of block b of panel p in the packed copy (nb blocks per row). */
static inline size_t kq_packed_block_offset(int type, int64_t nb, int64_t p, int64_t b) {
    const size_t pbb = kq_panel_block_bytes(type);
    return ((size_t)(p / KQ_PANEL_PAIR) * (size_t)nb + (size_t)b) * KQ_PANEL_PAIR * pbb +
           (size_t)(p % KQ_PANEL_PAIR) * pbb;
}

#endif
