/* qtypes.c — the type table of qtypes.h and scalar half/bfloat conversions. */
#include "qtypes.h"

#include <string.h>

struct qtype_row { int type; const char *name; int64_t block_elems; size_t block_bytes; int is_weight; };

static const struct qtype_row qtype_rows[] = {
    {KQ_F32,  "F32",  1,       4,                     1},
    {KQ_F16,  "F16",  1,       2,                     1},
    {KQ_BF16, "BF16", 1,       2,                     1},
    {KQ_Q4_0, "Q4_0", KQ_QK,   sizeof(kq_block_q4_0), 1},
    {KQ_Q4_1, "Q4_1", KQ_QK,   sizeof(kq_block_q4_1), 1},
    {KQ_Q5_0, "Q5_0", KQ_QK,   sizeof(kq_block_q5_0), 1},
    {KQ_Q5_1, "Q5_1", KQ_QK,   sizeof(kq_block_q5_1), 1},
    {KQ_Q8_0, "Q8_0", KQ_QK,   sizeof(kq_block_q8_0), 1},
    {KQ_IQ4_NL, "IQ4_NL", KQ_QK, sizeof(kq_block_iq4_nl), 1},
    {KQ_Q2_K, "Q2_K", KQ_QK_K, sizeof(kq_block_q2_K), 1},
    {KQ_Q3_K, "Q3_K", KQ_QK_K, sizeof(kq_block_q3_K), 1},
    {KQ_Q8_1, "Q8_1", KQ_QK,   sizeof(kq_block_q8_1), 0},
    {KQ_Q4_K, "Q4_K", KQ_QK_K, sizeof(kq_block_q4_K), 1},
    {KQ_Q5_K, "Q5_K", KQ_QK_K, sizeof(kq_block_q5_K), 1},
    {KQ_Q6_K, "Q6_K", KQ_QK_K, sizeof(kq_block_q6_K), 1},
    {KQ_Q8_K, "Q8_K", KQ_QK_K, sizeof(kq_block_q8_K), 0},
    {KQ_IQ4_XS, "IQ4_XS", KQ_QK_K, sizeof(kq_block_iq4_xs), 1},
};

const int8_t kq_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

_Static_assert(sizeof(kq_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(kq_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(kq_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(kq_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(kq_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(kq_block_iq4_nl) == 18, "iq4_nl layout");
_Static_assert(sizeof(kq_block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(kq_block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(kq_block_iq4_xs) == 136, "iq4_xs layout");
_Static_assert(sizeof(kq_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(kq_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(kq_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(kq_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(kq_block_q8_K) == 292, "q8_K layout");

static const struct qtype_row *qtype_find(int type) {
    for (size_t i = 0; i < sizeof qtype_rows / sizeof qtype_rows[0]; i++)
        if (qtype_rows[i].type == type) return &qtype_rows[i];
    return NULL;
}

int64_t kq_type_block_elems(int type) { const struct qtype_row *r = qtype_find(type); return r ? r->block_elems : 0; }
size_t kq_type_block_bytes(int type)  { const struct qtype_row *r = qtype_find(type); return r ? r->block_bytes : 0; }
const char *kq_type_name(int type)     { const struct qtype_row *r = qtype_find(type); return r ? r->name : NULL; }
int kq_type_is_weight(int type)        { const struct qtype_row *r = qtype_find(type); return r ? r->is_weight : 0; }

size_t kq_row_bytes(int type, int64_t n) {
    const struct qtype_row *r = qtype_find(type);
    if (!r || n < 0 || n % r->block_elems) return 0;
    return (size_t)(n / r->block_elems) * r->block_bytes;
}

float kq_f16_to_f32(kq_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

kq_f16 kq_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (kq_f16)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (kq_f16)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u) return (kq_f16)sign; /* < 2^-25 rounds to 0 */
        uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;            /* 14 + (112 - e) + ... : mantissa shift into 10 bits */
        uint32_t v = m >> (shift - 10 + 10); /* truncated */
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (v & 1))) v++;
        return (kq_f16)(sign | v);
    }
    uint32_t v = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) v++;
    return (kq_f16)(sign | v);
}

float kq_bf16_to_f32(kq_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
