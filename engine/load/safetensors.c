/* safetensors.c — the safetensors reader (safetensors.h).  Every field is
 * validated before use; a bad file is an error naming the file and the field,
 * never a crash.  The JSON header is parsed by jansson. */
#include "engine/load/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/load/file_map.h"

/* The reference implementation refuses headers above 100 MB; so do we (a real
 * header is a few hundred bytes per tensor). */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static const struct { const char *name; size_t size; } st_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1},       [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_I16] = {"I16", 2},         [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},       [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},         [ST_F64] = {"F64", 8},   [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

const char *st_dtype_name(enum st_dtype t) {
    return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].name : "?";
}

size_t st_dtype_size(enum st_dtype t) {
    return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].size : 0;
}

/* ---- number conversion ---- */

static float st_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return st_bits_to_f32(sign | 0x7f800000u | mant << 13);   /* inf, NaN (payload kept) */
    if (exp == 0) {
        if (mant == 0) return st_bits_to_f32(sign);
        /* Subnormal: mant * 2^-24.  Normalise so the leading one becomes the
         * implicit bit of an f32 (whose range covers every half subnormal). */
        uint32_t e = 127 - 15 + 1;
        while (!(mant & 0x400)) {
            mant <<= 1;
            e--;
        }
        return st_bits_to_f32(sign | e << 23 | (mant & 0x3ff) << 13);
    }
    return st_bits_to_f32(sign | (exp + 127 - 15) << 23 | mant << 13);
}

float st_bf16_to_f32(uint16_t h) {
    return st_bits_to_f32((uint32_t)h << 16);   /* bfloat16 is the top half of an f32 */
}

/* ---- parsing ---- */

static uint64_t st_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int st_dtype_parse(const char *s, enum st_dtype *out) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, st_dtypes[i].name)) {
            *out = (enum st_dtype)i;
            return 0;
        }
    return -1;
}

/* A JSON integer in [0, INT64_MAX]. */
static int st_json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* One tensor entry: dtype, shape, data_offsets, checked against the data area. */
static int st_tensor_parse(struct st_tensor *t, const char *name, const json_t *v, uint64_t data_size,
                           const char *path, char *err, size_t cap) {
    t->name = name;
    if (!name[0]) return eng_err_set(err, cap, ENG_E_FORMAT, "%s: header: a tensor has an empty name", path);
    if (!json_is_object(v))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: not a JSON object", path, name);
    const json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
                 *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: dtype: %s", path, name,
                           dt ? "not a string" : "missing");
    if (st_dtype_parse(json_string_value(dt), &t->dtype))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: dtype: unknown dtype '%.32s'", path, name,
                           json_string_value(dt));
    if (!json_is_array(sh))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: shape: %s", path, name,
                           sh ? "not an array" : "missing");
    if (json_array_size(sh) > ST_MAX_DIMS)
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: shape: %zu dimensions, at most %d", path, name,
                           json_array_size(sh), ST_MAX_DIMS);
    t->n_dims = (int)json_array_size(sh);
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) {
        if (st_json_u64(json_array_get(sh, (size_t)i), &t->shape[i]))
            return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: shape[%d]: not a non-negative integer", path,
                               name, i);
        if (__builtin_mul_overflow(n, t->shape[i], &n))
            return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: shape: element count overflows", path, name);
    }
    t->n_elem = n;
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)st_dtype_size(t->dtype), &bytes))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: shape: byte size overflows", path, name);
    if (!json_is_array(off) || json_array_size(off) != 2)
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: data_offsets: %s", path, name,
                           off ? "not an array of two integers" : "missing");
    if (st_json_u64(json_array_get(off, 0), &t->begin) || st_json_u64(json_array_get(off, 1), &t->end))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: data_offsets: not non-negative integers", path,
                           name);
    if (t->begin > t->end)
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: data_offsets: begin %llu is after end %llu", path,
                           name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_size)
        return eng_err_set(err, cap, ENG_E_FORMAT,
                           "%s: tensor %s: data_offsets: end %llu is past the data area (%llu bytes; file truncated?)",
                           path, name, (unsigned long long)t->end, (unsigned long long)data_size);
    if (t->end - t->begin != bytes)
        return eng_err_set(err, cap, ENG_E_FORMAT,
                           "%s: tensor %s: data_offsets: %llu bytes, but shape x %s needs %llu", path, name,
                           (unsigned long long)(t->end - t->begin), st_dtypes[t->dtype].name,
                           (unsigned long long)bytes);
    return 0;
}

static int st_cmp_begin(const void *a, const void *b) {
    const struct st_tensor *x = *(const struct st_tensor *const *)a, *y = *(const struct st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* No two tensors share a byte (empty tensors occupy none). */
static int st_check_overlap(struct st_file *f, char *err, size_t cap) {
    if (f->n_tensors < 2) return 0;
    const struct st_tensor **v = malloc(sizeof *v * (size_t)f->n_tensors);
    if (!v) return ENG_E_NOMEM;
    int n = 0, rc = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].end > f->tensors[i].begin) v[n++] = &f->tensors[i];
    qsort(v, (size_t)n, sizeof *v, st_cmp_begin);
    for (int i = 1; i < n; i++)
        if (v[i]->begin < v[i - 1]->end) {
            rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: data_offsets: overlaps tensor %s", f->path,
                             v[i]->name, v[i - 1]->name);
            break;
        }
    free(v);
    return rc;
}

static int st_meta_check(const json_t *meta, const char *path, char *err, size_t cap) {
    if (!json_is_object(meta))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: __metadata__: not a JSON object", path);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return eng_err_set(err, cap, ENG_E_FORMAT, "%s: __metadata__: %s: not a string", path, k);
    }
    return 0;
}

int st_parse(struct st_file **out, const void *buf, size_t size, const char *name, char *err, size_t cap) {
    *out = NULL;
    const uint8_t *b = buf;
    struct st_file *f = calloc(1, sizeof *f);
    int rc;
    if (!f || !(f->path = strdup(name))) {
        free(f);
        return eng_err_set(err, cap, ENG_E_NOMEM, "%s: out of memory", name);
    }
    f->base = b;
    f->size = size;
    if (size < 8) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header length: the file has %zu bytes, fewer than 8", name, size);
        goto err;
    }
    uint64_t n = st_le64(b);
    if (n > size - 8) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header length: %llu bytes, but only %zu follow (file truncated?)",
                         name, (unsigned long long)n, size - 8);
        goto err;
    }
    if (n < 2 || n > ST_MAX_HEADER) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header length: %llu is outside [2, %u]", name,
                         (unsigned long long)n, ST_MAX_HEADER);
        goto err;
    }
    if (b[8] != '{') {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header: does not start with '{' (not a safetensors file?)", name);
        goto err;
    }
    f->data_offset = 8 + n;
    json_error_t je;
    json_t *root = json_loadb((const char *)b + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header: JSON error at byte %d: %s", name, je.position, je.text);
        goto err;
    }
    f->json_ = root;
    if (!json_is_object(root)) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: header: not a JSON object", name);
        goto err;
    }
    size_t n_keys = json_object_size(root);
    if (!(f->tensors = calloc(n_keys ? n_keys : 1, sizeof *f->tensors))) {
        rc = eng_err_set(err, cap, ENG_E_NOMEM, "%s: out of memory", name);
        goto err;
    }
    const uint64_t data_size = size - f->data_offset;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if ((rc = st_meta_check(v, name, err, cap))) goto err;
            continue;
        }
        struct st_tensor *t = &f->tensors[f->n_tensors];
        if ((rc = st_tensor_parse(t, key, v, data_size, name, err, cap))) goto err;
        t->data = b + f->data_offset + t->begin;
        f->n_tensors++;
    }
    if ((rc = st_check_overlap(f, err, cap))) goto err;
    *out = f;
    return 0;
err:
    st_close(f);
    return rc;
}

int st_open(struct st_file **out, const char *path, char *err, size_t cap) {
    static const uint8_t empty[1];
    const void *map;
    size_t size;
    *out = NULL;
    int rc = eng_file_map(path, &map, &size, err, cap);
    if (rc) return rc;
    if ((rc = st_parse(out, map ? map : empty, size, path, err, cap))) {
        eng_file_unmap(map, size);
        return rc;
    }
    (*out)->mapped_ = map != NULL;
    return 0;
}

void st_close(struct st_file *f) {
    if (!f) return;
    if (f->mapped_) eng_file_unmap(f->base, f->size);
    json_decref(f->json_);
    free(f->tensors);
    free(f->path);
    free(f);
}

const struct st_tensor *st_find_tensor(const struct st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const struct st_file *f, const char *key) {
    return json_string_value(json_object_get(json_object_get(f->json_, "__metadata__"), key));
}

int st_tensor_to_f32(const struct st_file *f, const struct st_tensor *t, float *out, uint64_t n, char *err,
                     size_t cap) {
    if (n != t->n_elem)
        return eng_err_set(err, cap, ENG_E_INVALID, "%s: tensor %s: %llu elements, asked for %llu", f->path, t->name,
                           (unsigned long long)t->n_elem, (unsigned long long)n);
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        for (uint64_t i = 0; i < n; i++, p += 4)
            out[i] = st_bits_to_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        return 0;
    case ST_F16:
        for (uint64_t i = 0; i < n; i++, p += 2) out[i] = st_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        return 0;
    case ST_BF16:
        for (uint64_t i = 0; i < n; i++, p += 2) out[i] = st_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
        return 0;
    default:
        return eng_err_set(err, cap, ENG_E_UNSUPPORTED, "%s: tensor %s: dtype %s: only F32, F16 and BF16 convert to f32",
                           f->path, t->name, st_dtypes[t->dtype].name);
    }
}
