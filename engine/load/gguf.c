/* gguf.c — the GGUF reader: map a file, validate every byte of its header, and
 * hand out keys, values and tensor views.
 *
 * Design: the header (key/value section and tensor infos) is walked twice by
 * the same code.  The first walk checks structure and counts how many string
 * bytes and string-array elements there are, without allocating anything, so
 * an absurd count or length in a hostile file is caught against the bytes that
 * are really there before it can size an allocation.  The second walk copies
 * keys, string values and tensor names into one arena sized exactly by the
 * first, fills the kv and tensor tables, and builds the two hash indexes that
 * detect duplicate names and later answer gguf_find_kv/gguf_find_tensor.
 * Numeric arrays and tensor data are never copied: they stay in the mapping.
 *
 * It does not interpret metadata (the model and tokenizer do), convert tensor
 * data, read GGUF v1 or big-endian files, or write files (gguf_write.c).
 */
#include "engine/load/gguf.h"
#include "engine/err.h"
#include "engine/load/file_map.h"
#include "common/qtypes.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian fields with memcpy: a big-endian host needs byte swaps"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_NAME_MAX 65535u            /* keys and tensor names are shorter than 64 KiB */
/* No real model has anywhere near this many keys or tensors; the cap keeps a
 * small hostile file from making us allocate tables many times its size. */
#define GGUF_COUNT_MAX (1u << 20)
/* The fewest bytes one entry can occupy, used to bound counts by the file size:
 * kv = key length (8) + 1 key byte + value type (4) + a 1-byte value;
 * tensor = name length (8) + 1 name byte + n_dims (4) + one ne (8) + type (4) + offset (8). */
#define GGUF_KV_MIN_BYTES 14u
#define GGUF_TENSOR_MIN_BYTES 33u
#define GGUF_SHOW_MAX 64                /* bytes of a file-supplied name quoted in messages */

static const uint8_t gguf_vt_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const gguf_vt_names[] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};

static const char *gguf_vt_name(uint32_t t) {
    return t <= GGUF_VT_FLOAT64 ? gguf_vt_names[t] : "unknown";
}

/* GGML's names for type ids, only to make "unsupported type" messages readable;
 * which types we can use is decided by qtypes.h alone. */
static const char *gguf_ggml_type_name(uint32_t t) {
    static const char *const names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2 (removed)", "Q4_3 (removed)", "Q5_0", "Q5_1",
        "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS",
        "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
        "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4 (removed)", "Q4_0_4_8 (removed)",
        "Q4_0_8_8 (removed)", "TQ1_0", "TQ2_0", "IQ4_NL_4_4 (removed)",
        "IQ4_NL_4_8 (removed)", "IQ4_NL_8_8 (removed)", "MXFP4",
    };
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* ---- name indexes (open addressing; slots hold item index + 1, 0 = empty) ---- */

struct gguf_index {
    size_t cap;         /* a power of two, at least twice the item count */
    size_t *slots;
};

/* The private block behind gguf_file.arena_: both indexes, then the string
 * tables and bytes, all in one allocation. */
struct gguf_arena {
    struct gguf_index kv_ix, tensor_ix;
};

static uint64_t gguf_hash(const char *s) {
    uint64_t h = 14695981039346656037ull;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Items are gguf_kv or gguf_tensor; off is where their name pointer lives. */
static const char *gguf_item_name(const void *items, size_t stride, size_t off, size_t i) {
    const char *const *np = (const char *const *)(const void *)((const char *)items + i * stride + off);
    return *np;
}

/* The slot holding name, or the empty slot where it would go. */
static size_t *gguf_index_probe(const struct gguf_index *ix, const void *items, size_t stride,
                                size_t off, const char *name) {
    size_t mask = ix->cap - 1, h = (size_t)gguf_hash(name) & mask;
    for (;;) {
        size_t *s = &ix->slots[h];
        if (!*s || !strcmp(gguf_item_name(items, stride, off, *s - 1), name)) return s;
        h = (h + 1) & mask;
    }
}

static size_t gguf_index_cap(uint64_t n) {
    size_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

/* ---- the parser ---- */

struct gguf_parser {
    const uint8_t *buf;
    size_t size, pos;
    const char *name;           /* the path, first in every message */
    char *err;
    size_t err_cap;
    char ctx[GGUF_SHOW_MAX + 64]; /* the field being read: "kv #3 'llama.block_count'" */
    int fill;                   /* 0: check and count; 1: also store */
    struct gguf_file *f;
    /* counted by the first walk, handed out by the second */
    size_t n_chars, n_strs;
    char *chars;
    struct gguf_str *strs;
};

__attribute__((format(printf, 3, 4)))
static int gguf_fail(struct gguf_parser *p, int code, const char *fmt, ...) {
    if (p->err && p->err_cap) {
        int n = snprintf(p->err, p->err_cap, "%s: %s: ", p->name, p->ctx);
        if (n >= 0 && (size_t)n < p->err_cap) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + n, p->err_cap - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return code;
}

/* A file-supplied name made safe to print: printable ASCII kept, other bytes
 * shown as '?', long names cut with "...". */
static void gguf_show(char *dst, size_t cap, const uint8_t *s, uint64_t len) {
    size_t n = 0;
    for (uint64_t i = 0; i < len && i < GGUF_SHOW_MAX && n + 4 < cap; i++)
        dst[n++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (len > GGUF_SHOW_MAX && n + 4 < cap) { memcpy(dst + n, "...", 3); n += 3; }
    dst[n] = 0;
}

__attribute__((format(printf, 2, 3)))
static void gguf_ctx(struct gguf_parser *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->ctx, sizeof p->ctx, fmt, ap);
    va_end(ap);
}

static size_t gguf_left(const struct gguf_parser *p) { return p->size - p->pos; }

static int gguf_need(struct gguf_parser *p, uint64_t n, const char *what) {
    if (n > gguf_left(p))
        return gguf_fail(p, ENG_E_FORMAT, "truncated: %s needs %llu bytes but only %zu are left",
                         what, (unsigned long long)n, gguf_left(p));
    return 0;
}

static int gguf_rd_u32(struct gguf_parser *p, uint32_t *v, const char *what) {
    int rc = gguf_need(p, 4, what);
    if (rc) return rc;
    memcpy(v, p->buf + p->pos, 4);
    p->pos += 4;
    return 0;
}

static int gguf_rd_u64(struct gguf_parser *p, uint64_t *v, const char *what) {
    int rc = gguf_need(p, 8, what);
    if (rc) return rc;
    memcpy(v, p->buf + p->pos, 8);
    p->pos += 8;
    return 0;
}

/* A length-prefixed string.  *raw points at its bytes in the buffer (for name
 * checks and messages); in the fill walk *out gets the arena copy.  elem is
 * the array index for messages, or -1. */
static int gguf_rd_str(struct gguf_parser *p, const char *what, int64_t elem,
                       struct gguf_str *out, const uint8_t **raw) {
    uint64_t len;
    int rc = gguf_rd_u64(p, &len, what);
    if (rc) return rc;
    if (len > gguf_left(p)) {
        if (elem >= 0)
            return gguf_fail(p, ENG_E_FORMAT, "%s #%lld: string length %llu exceeds the %zu bytes left",
                             what, (long long)elem, (unsigned long long)len, gguf_left(p));
        return gguf_fail(p, ENG_E_FORMAT, "%s length %llu exceeds the %zu bytes left",
                         what, (unsigned long long)len, gguf_left(p));
    }
    const uint8_t *s = p->buf + p->pos;
    p->pos += (size_t)len;
    if (raw) *raw = s;
    if (!p->fill) {
        p->n_chars += (size_t)len + 1; /* cannot overflow: every byte counted is in the buffer */
    } else {
        char *d = p->chars;
        memcpy(d, s, (size_t)len);
        d[len] = 0;
        p->chars += len + 1;
        out->s = d;
        out->len = len;
    }
    return 0;
}

/* Keys and tensor names: non-empty, shorter than 64 KiB, no NUL inside (they
 * are looked up as C strings). */
static int gguf_check_name(struct gguf_parser *p, const char *what, const uint8_t *s, uint64_t len) {
    if (len == 0) return gguf_fail(p, ENG_E_FORMAT, "%s is empty", what);
    if (len > GGUF_NAME_MAX)
        return gguf_fail(p, ENG_E_FORMAT, "%s length %llu is over the limit of %u bytes",
                         what, (unsigned long long)len, GGUF_NAME_MAX);
    if (memchr(s, 0, (size_t)len)) return gguf_fail(p, ENG_E_FORMAT, "%s contains a NUL byte", what);
    return 0;
}

static void gguf_scalar_load(struct gguf_kv *kv, const uint8_t *src) {
    kv->v.u = 0;
    switch (kv->type) {
    case GGUF_VT_UINT8: kv->v.u = src[0]; break;
    case GGUF_VT_INT8: { int8_t x; memcpy(&x, src, 1); kv->v.i = x; break; }
    case GGUF_VT_UINT16: { uint16_t x; memcpy(&x, src, 2); kv->v.u = x; break; }
    case GGUF_VT_INT16: { int16_t x; memcpy(&x, src, 2); kv->v.i = x; break; }
    case GGUF_VT_UINT32: { uint32_t x; memcpy(&x, src, 4); kv->v.u = x; break; }
    case GGUF_VT_INT32: { int32_t x; memcpy(&x, src, 4); kv->v.i = x; break; }
    case GGUF_VT_FLOAT32: { float x; memcpy(&x, src, 4); kv->v.f = x; break; }
    case GGUF_VT_BOOL: kv->v.b = src[0] != 0; break;
    case GGUF_VT_UINT64: memcpy(&kv->v.u, src, 8); break;
    case GGUF_VT_INT64: memcpy(&kv->v.i, src, 8); break;
    case GGUF_VT_FLOAT64: memcpy(&kv->v.f, src, 8); break;
    default: break;
    }
}

static int gguf_rd_array(struct gguf_parser *p, struct gguf_kv *kv) {
    uint32_t et;
    uint64_t n;
    int rc = gguf_rd_u32(p, &et, "array element type");
    if (rc) return rc;
    if (et == GGUF_VT_ARRAY)
        return gguf_fail(p, ENG_E_FORMAT, "nested array (arrays of arrays are not supported)");
    if (et > GGUF_VT_FLOAT64) return gguf_fail(p, ENG_E_FORMAT, "unknown array element type %u", et);
    if ((rc = gguf_rd_u64(p, &n, "array count"))) return rc;
    kv->arr_type = (enum gguf_vtype)et;
    kv->arr_n = n;
    if (et == GGUF_VT_STRING) {
        if (n > gguf_left(p) / 8)
            return gguf_fail(p, ENG_E_FORMAT,
                             "array count %llu is more strings than the %zu bytes left could hold",
                             (unsigned long long)n, gguf_left(p));
        struct gguf_str *dst = NULL;
        if (!p->fill) {
            p->n_strs += (size_t)n;
        } else {
            dst = p->strs;
            p->strs += n;
            kv->arr_str = dst;
        }
        for (uint64_t j = 0; j < n; j++)
            if ((rc = gguf_rd_str(p, "array element", (int64_t)j, dst ? &dst[j] : NULL, NULL)))
                return rc;
        return 0;
    }
    size_t es = gguf_vt_size[et];
    if (n > gguf_left(p) / es)
        return gguf_fail(p, ENG_E_FORMAT, "array count %llu of %s (%zu bytes each) exceeds the %zu bytes left",
                         (unsigned long long)n, gguf_vt_name(et), es, gguf_left(p));
    kv->arr_data = p->buf + p->pos;
    p->pos += (size_t)n * es;
    return 0;
}

static int gguf_rd_kvs(struct gguf_parser *p) {
    struct gguf_file *f = p->f;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        struct gguf_kv tmp, *kv = p->fill ? &f->kv[i] : &tmp;
        struct gguf_str key = {0};
        const uint8_t *raw;
        char shown[GGUF_SHOW_MAX + 4];
        uint32_t t;
        int rc;
        memset(kv, 0, sizeof *kv);
        gguf_ctx(p, "kv #%llu", (unsigned long long)i);
        if ((rc = gguf_rd_str(p, "key", -1, &key, &raw))) return rc;
        uint64_t klen = (uint64_t)(p->buf + p->pos - raw);
        if ((rc = gguf_check_name(p, "key", raw, klen))) return rc;
        gguf_show(shown, sizeof shown, raw, klen);
        gguf_ctx(p, "kv #%llu '%s'", (unsigned long long)i, shown);
        kv->key = key.s;
        if ((rc = gguf_rd_u32(p, &t, "value type"))) return rc;
        if (t > GGUF_VT_FLOAT64) return gguf_fail(p, ENG_E_FORMAT, "unknown value type %u", t);
        kv->type = (enum gguf_vtype)t;
        if (t == GGUF_VT_STRING) {
            rc = gguf_rd_str(p, "string", -1, &kv->str, NULL);
        } else if (t == GGUF_VT_ARRAY) {
            rc = gguf_rd_array(p, kv);
        } else {
            if ((rc = gguf_need(p, gguf_vt_size[t], "value"))) return rc;
            if (t == GGUF_VT_BOOL && p->buf[p->pos] > 1)
                return gguf_fail(p, ENG_E_FORMAT, "bool value %u is not 0 or 1", p->buf[p->pos]);
            gguf_scalar_load(kv, p->buf + p->pos);
            p->pos += gguf_vt_size[t];
        }
        if (rc) return rc;
    }
    return 0;
}

static int gguf_rd_tensors(struct gguf_parser *p) {
    struct gguf_file *f = p->f;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor tmp, *t = p->fill ? &f->tensors[i] : &tmp;
        struct gguf_str name = {0};
        const uint8_t *raw;
        char shown[GGUF_SHOW_MAX + 4];
        uint32_t type;
        int rc;
        memset(t, 0, sizeof *t);
        gguf_ctx(p, "tensor #%llu", (unsigned long long)i);
        if ((rc = gguf_rd_str(p, "name", -1, &name, &raw))) return rc;
        uint64_t nlen = (uint64_t)(p->buf + p->pos - raw);
        if ((rc = gguf_check_name(p, "name", raw, nlen))) return rc;
        gguf_show(shown, sizeof shown, raw, nlen);
        gguf_ctx(p, "tensor '%s'", shown);
        t->name = name.s;

        if ((rc = gguf_rd_u32(p, &t->n_dims, "n_dims"))) return rc;
        if (t->n_dims < 1 || t->n_dims > 4)
            return gguf_fail(p, ENG_E_FORMAT, "n_dims %u is not between 1 and 4", t->n_dims);
        for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            if ((rc = gguf_rd_u64(p, &ne, "ne"))) return rc;
            if (ne == 0) return gguf_fail(p, ENG_E_FORMAT, "ne[%u] is 0", d);
            if (ne > (uint64_t)INT64_MAX)
                return gguf_fail(p, ENG_E_FORMAT, "ne[%u] = %llu is too large", d, (unsigned long long)ne);
            t->ne[d] = (int64_t)ne;
        }

        if ((rc = gguf_rd_u32(p, &type, "type"))) return rc;
        int64_t be = kq_type_block_elems((int)type);
        if (!be || !kq_type_is_weight((int)type))
            return gguf_fail(p, ENG_E_UNSUPPORTED, "type %u (%s) is not supported", type,
                             gguf_ggml_type_name(type));
        t->type = (int)type;
        if (t->ne[0] % be)
            return gguf_fail(p, ENG_E_FORMAT, "ne[0] = %lld is not a multiple of the %s block size %lld",
                             (long long)t->ne[0], kq_type_name((int)type), (long long)be);
        int64_t n_el = t->ne[0];
        for (int d = 1; d < 4; d++) {
            if (t->ne[d] > INT64_MAX / n_el)
                return gguf_fail(p, ENG_E_FORMAT, "element count overflows (ne = [%lld, %lld, %lld, %lld])",
                                 (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                                 (long long)t->ne[3]);
            n_el *= t->ne[d];
        }
        /* kq_row_bytes multiplies blocks by block bytes: make sure that fits first. */
        size_t bb = kq_type_block_bytes((int)type);
        if ((uint64_t)(t->ne[0] / be) > SIZE_MAX / bb)
            return gguf_fail(p, ENG_E_FORMAT, "size overflows (row of %lld elements)", (long long)t->ne[0]);
        uint64_t row = kq_row_bytes((int)type, t->ne[0]);
        uint64_t rows = (uint64_t)(n_el / t->ne[0]);
        if (rows > UINT64_MAX / row)
            return gguf_fail(p, ENG_E_FORMAT, "size overflows (%llu rows of %llu bytes)",
                             (unsigned long long)rows, (unsigned long long)row);
        t->size = row * rows;
        if ((rc = gguf_rd_u64(p, &t->offset, "offset"))) return rc;
    }
    return 0;
}

/* Insert every name into its index; the first repeat is an error. */
static int gguf_index_build(struct gguf_parser *p, struct gguf_index *ix, const void *items,
                            size_t n, size_t stride, size_t off, const char *what) {
    for (size_t i = 0; i < n; i++) {
        const char *nm = gguf_item_name(items, stride, off, i);
        size_t *s = gguf_index_probe(ix, items, stride, off, nm);
        if (*s) {
            char shown[GGUF_SHOW_MAX + 4];
            gguf_show(shown, sizeof shown, (const uint8_t *)nm, strlen(nm));
            if (!strcmp(what, "kv"))
                gguf_ctx(p, "kv #%zu '%s'", i, shown);
            else
                gguf_ctx(p, "tensor '%s'", shown);
            return gguf_fail(p, ENG_E_FORMAT, "duplicate %s (also %s #%zu)",
                             !strcmp(what, "kv") ? "key" : "tensor name", what, *s - 1);
        }
        *s = i + 1;
    }
    return 0;
}

static int gguf_check_alignment(struct gguf_parser *p) {
    struct gguf_file *f = p->f;
    const struct gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv) return 0;
    gguf_ctx(p, "kv #%zu 'general.alignment'", (size_t)(kv - f->kv));
    if (kv->type != GGUF_VT_UINT32)
        return gguf_fail(p, ENG_E_FORMAT, "alignment has type %s, expected UINT32", gguf_vt_name(kv->type));
    uint64_t a = kv->v.u;
    if (a == 0 || (a & (a - 1)))
        return gguf_fail(p, ENG_E_FORMAT, "alignment %llu is not a nonzero power of two",
                         (unsigned long long)a);
    f->alignment = (uint32_t)a;
    return 0;
}

static int gguf_check_offsets(struct gguf_parser *p) {
    struct gguf_file *f = p->f;
    uint64_t a = f->alignment, end = p->pos;
    f->data_offset = end + (a - end % a) % a;
    uint64_t avail = f->size > f->data_offset ? f->size - f->data_offset : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        char shown[GGUF_SHOW_MAX + 4];
        gguf_show(shown, sizeof shown, (const uint8_t *)t->name, strlen(t->name));
        gguf_ctx(p, "tensor '%s'", shown);
        if (t->offset % a)
            return gguf_fail(p, ENG_E_FORMAT, "data offset %llu is not a multiple of the alignment %llu",
                             (unsigned long long)t->offset, (unsigned long long)a);
        if (t->offset > avail || t->size > avail - t->offset)
            return gguf_fail(p, ENG_E_FORMAT,
                             "data offset %llu + size %llu is past the end of the file (%zu bytes, "
                             "data section at %llu)",
                             (unsigned long long)t->offset, (unsigned long long)t->size, f->size,
                             (unsigned long long)f->data_offset);
        t->data = f->base + f->data_offset + t->offset;
    }
    return 0;
}

/* Magic, version and the two counts. */
static int gguf_rd_header(struct gguf_parser *p, uint64_t *n_tensors, uint64_t *n_kv) {
    uint32_t version;
    int rc;
    gguf_ctx(p, "header");
    if (p->size < 4)
        return gguf_fail(p, ENG_E_FORMAT, "file is %zu bytes, too short for a GGUF magic", p->size);
    if (memcmp(p->buf, "GGUF", 4)) {
        char shown[GGUF_SHOW_MAX + 4];
        gguf_show(shown, sizeof shown, p->buf, 4);
        return gguf_fail(p, ENG_E_FORMAT, "bad magic '%s' (not a GGUF file)", shown);
    }
    p->pos = 4;
    if ((rc = gguf_rd_u32(p, &version, "version"))) return rc;
    if (version == 1)
        return gguf_fail(p, ENG_E_UNSUPPORTED,
                         "version 1 is not supported (an obsolete format: convert the model again)");
    if (version == 0x02000000u || version == 0x03000000u)
        return gguf_fail(p, ENG_E_UNSUPPORTED, "version field is byte-swapped: big-endian GGUF files are not supported");
    if (version == 0) return gguf_fail(p, ENG_E_FORMAT, "version 0 is not valid");
    if (version > 3)
        return gguf_fail(p, ENG_E_UNSUPPORTED, "version %u is not supported (only 2 and 3)", version);
    p->f->version = version;
    if ((rc = gguf_rd_u64(p, n_tensors, "tensor count"))) return rc;
    if ((rc = gguf_rd_u64(p, n_kv, "kv count"))) return rc;
    if (*n_kv > gguf_left(p) / GGUF_KV_MIN_BYTES)
        return gguf_fail(p, ENG_E_FORMAT, "kv count %llu is more than the %zu bytes left could hold",
                         (unsigned long long)*n_kv, gguf_left(p));
    if (*n_tensors > gguf_left(p) / GGUF_TENSOR_MIN_BYTES)
        return gguf_fail(p, ENG_E_FORMAT, "tensor count %llu is more than the %zu bytes left could hold",
                         (unsigned long long)*n_tensors, gguf_left(p));
    if (*n_kv > GGUF_COUNT_MAX)
        return gguf_fail(p, ENG_E_FORMAT, "kv count %llu is over the limit of %u",
                         (unsigned long long)*n_kv, GGUF_COUNT_MAX);
    if (*n_tensors > GGUF_COUNT_MAX)
        return gguf_fail(p, ENG_E_FORMAT, "tensor count %llu is over the limit of %u",
                         (unsigned long long)*n_tensors, GGUF_COUNT_MAX);
    return 0;
}

int gguf_parse(struct gguf_file **out, const void *buf, size_t size, const char *name,
               char *err, size_t err_cap) {
    struct gguf_parser p = {.buf = buf, .size = size, .name = name ? name : "(buffer)",
                            .err = err, .err_cap = err_cap};
    struct gguf_file *f = NULL;
    uint64_t n_tensors, n_kv;
    int rc;

    *out = NULL;
    if (err && err_cap) err[0] = 0;
    if (!buf && size) return eng_err_set(err, err_cap, ENG_E_INVALID, "%s: no buffer", p.name);
    if (!(f = calloc(1, sizeof *f)) || !(f->path = strdup(p.name))) {
        rc = eng_err_set(err, err_cap, ENG_E_NOMEM, "%s: out of memory", p.name);
        goto err;
    }
    f->base = buf;
    f->size = size;
    p.f = f;
    if ((rc = gguf_rd_header(&p, &n_tensors, &n_kv))) goto err;
    size_t header_end = p.pos;
    f->n_kv = n_kv;
    f->n_tensors = n_tensors;

    /* Walk 1: structure only, nothing allocated from file-supplied numbers. */
    if ((rc = gguf_rd_kvs(&p)) || (rc = gguf_rd_tensors(&p))) goto err;

    /* Every count below is now bounded by the bytes actually present. */
    size_t kcap = gguf_index_cap(n_kv), tcap = gguf_index_cap(n_tensors);
    size_t arena_bytes = sizeof(struct gguf_arena) + (kcap + tcap) * sizeof(size_t) +
                         p.n_strs * sizeof(struct gguf_str) + p.n_chars;
    struct gguf_arena *ar = calloc(1, arena_bytes);
    f->arena_ = ar;
    f->kv = calloc(n_kv ? n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
    if (!ar || !f->kv || !f->tensors) {
        rc = eng_err_set(err, err_cap, ENG_E_NOMEM, "%s: out of memory (%zu bytes of strings)",
                          p.name, arena_bytes);
        goto err;
    }
    ar->kv_ix = (struct gguf_index){kcap, (size_t *)(ar + 1)};
    ar->tensor_ix = (struct gguf_index){tcap, ar->kv_ix.slots + kcap};
    p.strs = (struct gguf_str *)(ar->tensor_ix.slots + tcap);
    p.chars = (char *)(p.strs + p.n_strs);

    /* Walk 2: the same code, now copying into the arena. */
    p.fill = 1;
    p.pos = header_end;
    if ((rc = gguf_rd_kvs(&p))) goto err;
    if ((rc = gguf_index_build(&p, &ar->kv_ix, f->kv, n_kv, sizeof *f->kv,
                               offsetof(struct gguf_kv, key), "kv")))
        goto err;
    if ((rc = gguf_check_alignment(&p))) goto err;
    if ((rc = gguf_rd_tensors(&p))) goto err;
    if ((rc = gguf_index_build(&p, &ar->tensor_ix, f->tensors, n_tensors, sizeof *f->tensors,
                               offsetof(struct gguf_tensor, name), "tensor")))
        goto err;
    if ((rc = gguf_check_offsets(&p))) goto err;
    *out = f;
    return 0;
err:
    gguf_close(f);
    return rc;
}

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_cap) {
    static const uint8_t empty[1];
    const void *map;
    size_t size;
    *out = NULL;
    int rc = eng_file_map(path, &map, &size, err, err_cap);
    if (rc) return rc;
    if ((rc = gguf_parse(out, map ? map : empty, size, path, err, err_cap))) {
        eng_file_unmap(map, size);
        return rc;
    }
    (*out)->mapped_ = map != NULL;
    return 0;
}

void gguf_close(struct gguf_file *f) {
    if (!f) return;
    if (f->mapped_) eng_file_unmap(f->base, f->size);
    free(f->kv);
    free(f->tensors);
    free(f->arena_);
    free(f->path);
    free(f);
}

/* ---- lookups and typed getters ---- */

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key) {
    const struct gguf_arena *ar = f->arena_;
    size_t *s = gguf_index_probe(&ar->kv_ix, f->kv, sizeof *f->kv, offsetof(struct gguf_kv, key), key);
    return *s ? &f->kv[*s - 1] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name) {
    const struct gguf_arena *ar = f->arena_;
    size_t *s = gguf_index_probe(&ar->tensor_ix, f->tensors, sizeof *f->tensors,
                                 offsetof(struct gguf_tensor, name), name);
    return *s ? &f->tensors[*s - 1] : NULL;
}

static const struct gguf_kv *gguf_get_kv(const struct gguf_file *f, const char *key, char *err,
                                         size_t err_cap, int *rc) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    *rc = kv ? 0 : eng_err_set(err, err_cap, ENG_E_NOT_FOUND, "%s: kv '%s': not found", f->path, key);
    return kv;
}

static int gguf_vt_is_signed(enum gguf_vtype t) {
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 || t == GGUF_VT_INT64;
}

static int gguf_vt_is_unsigned(enum gguf_vtype t) {
    return t == GGUF_VT_UINT8 || t == GGUF_VT_UINT16 || t == GGUF_VT_UINT32 || t == GGUF_VT_UINT64;
}

/* An integer kv as sign + magnitude, so every target range is one comparison. */
static int gguf_kv_int(const struct gguf_file *f, const struct gguf_kv *kv, int *neg, uint64_t *mag,
                       char *err, size_t err_cap) {
    if (gguf_vt_is_unsigned(kv->type)) {
        *neg = 0;
        *mag = kv->v.u;
    } else if (gguf_vt_is_signed(kv->type)) {
        *neg = kv->v.i < 0;
        *mag = *neg ? (uint64_t)0 - (uint64_t)kv->v.i : (uint64_t)kv->v.i;
    } else {
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': has type %s, expected an integer",
                            f->path, kv->key, gguf_vt_name(kv->type));
    }
    return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_cap) {
    int rc, neg;
    uint64_t mag;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if ((rc = gguf_kv_int(f, kv, &neg, &mag, err, err_cap))) return rc;
    if (neg || mag > UINT32_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': value %s%llu does not fit in UINT32",
                            f->path, key, neg ? "-" : "", (unsigned long long)mag);
    *out = (uint32_t)mag;
    return 0;
}

int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out, char *err, size_t err_cap) {
    int rc, neg;
    uint64_t mag;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if ((rc = gguf_kv_int(f, kv, &neg, &mag, err, err_cap))) return rc;
    if (!neg && mag > (uint64_t)INT64_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': value %llu does not fit in INT64",
                            f->path, key, (unsigned long long)mag);
    *out = gguf_vt_is_unsigned(kv->type) ? (int64_t)mag : kv->v.i;
    return 0;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, char *err, size_t err_cap) {
    int rc;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if (kv->type != GGUF_VT_FLOAT32 && kv->type != GGUF_VT_FLOAT64)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': has type %s, expected FLOAT32",
                            f->path, key, gguf_vt_name(kv->type));
    if (isfinite(kv->v.f) && fabs(kv->v.f) > FLT_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': value %g does not fit in FLOAT32",
                            f->path, key, kv->v.f);
    *out = (float)kv->v.f;
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, char *err, size_t err_cap) {
    int rc;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if (kv->type != GGUF_VT_BOOL)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': has type %s, expected BOOL",
                            f->path, key, gguf_vt_name(kv->type));
    *out = kv->v.b;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, const struct gguf_str **out, char *err,
                 size_t err_cap) {
    int rc;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if (kv->type != GGUF_VT_STRING)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': has type %s, expected STRING",
                            f->path, key, gguf_vt_name(kv->type));
    *out = &kv->str;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype want,
                 const struct gguf_kv **out, char *err, size_t err_cap) {
    int rc;
    const struct gguf_kv *kv = gguf_get_kv(f, key, err, err_cap, &rc);
    if (!kv) return rc;
    if (kv->type != GGUF_VT_ARRAY)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: kv '%s': has type %s, expected an array of %s",
                            f->path, key, gguf_vt_name(kv->type), gguf_vt_name(want));
    int ok = kv->arr_type == want ||
             (want == GGUF_VT_INT32 && kv->arr_type == GGUF_VT_UINT32);
    if (!ok)
        return eng_err_set(err, err_cap, ENG_E_FORMAT,
                            "%s: kv '%s': is an array of %s, expected an array of %s",
                            f->path, key, gguf_vt_name(kv->arr_type), gguf_vt_name(want));
    *out = kv;
    return 0;
}

int32_t gguf_arr_i32(const struct gguf_kv *kv, uint64_t i) {
    int32_t v;
    memcpy(&v, (const uint8_t *)kv->arr_data + i * 4, 4);
    return v;
}

float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i) {
    float v;
    memcpy(&v, (const uint8_t *)kv->arr_data + i * 4, 4);
    return v;
}
