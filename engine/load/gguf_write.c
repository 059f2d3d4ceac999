/* gguf_write.c — the GGUF writer: collect keys, values and tensors in memory,
 * then write one version-3 file atomically (PATH.tmp, then rename).
 *
 * Each value is serialised when it is set, exactly as it will appear after its
 * key in the file, so writing is a plain copy.  Tensors are copied too: the
 * writer is for tests and small files (PPD adapters), not for converting models.
 *
 * It does not read files (gguf.c), fsync, or write anything but little-endian
 * version 3.  It checks what it is given (names, types, shapes) so that what it
 * writes always passes the reader.
 */
#include "engine/load/gguf.h"
#include "engine/err.h"
#include "common/qtypes.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf_write.c writes little-endian fields with memcpy: a big-endian host needs byte swaps"
#endif

#define GGUF_W_VERSION 3u
#define GGUF_W_ALIGNMENT 32u
#define GGUF_W_NAME_MAX 65535u

struct gguf_wkv {
    char *key;
    uint8_t *val;       /* value type (u32) followed by the value, as in the file */
    size_t val_len;
};

struct gguf_wtensor {
    char *name;
    int type;
    uint32_t n_dims;
    int64_t ne[4];
    uint64_t size;
    uint64_t offset;    /* assigned when writing */
    void *data;         /* NULL: zeros */
};

struct gguf_writer {
    struct gguf_wkv *kv;
    size_t n_kv, cap_kv;
    struct gguf_wtensor *t;
    size_t n_t, cap_t;
};

static const uint8_t gguf_w_vt_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static int gguf_w_scalar_type(enum gguf_vtype t) {
    return (unsigned)t <= GGUF_VT_FLOAT64 && t != GGUF_VT_STRING && t != GGUF_VT_ARRAY;
}

static int gguf_w_name_ok(const char *s) {
    if (!s) return 0;
    size_t n = strlen(s);
    return n > 0 && n <= GGUF_W_NAME_MAX;
}

struct gguf_writer *gguf_writer_new(void) { return calloc(1, sizeof(struct gguf_writer)); }

void gguf_writer_free(struct gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

/* Take ownership of val (malloc'd, val_len bytes) as the value of key. */
static int gguf_w_put(struct gguf_writer *w, const char *key, uint8_t *val, size_t val_len) {
    for (size_t i = 0; i < w->n_kv; i++) {
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].val = val;
            w->kv[i].val_len = val_len;
            return 0;
        }
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        struct gguf_wkv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) goto err;
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) goto err;
    w->kv[w->n_kv++] = (struct gguf_wkv){k, val, val_len};
    return 0;
err:
    free(val);
    return ENG_E_NOMEM;
}

/* A buffer for a value: type, then body_len bytes the caller fills at *body. */
static uint8_t *gguf_w_val_new(uint32_t type, size_t body_len, uint8_t **body) {
    uint8_t *v = malloc(4 + body_len);
    if (!v) return NULL;
    memcpy(v, &type, 4);
    *body = v + 4;
    return v;
}

int gguf_writer_set_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype type, const void *v) {
    uint8_t *body;
    if (!w || !gguf_w_name_ok(key) || !gguf_w_scalar_type(type) || !v) return ENG_E_INVALID;
    size_t n = gguf_w_vt_size[type];
    if (type == GGUF_VT_BOOL && *(const uint8_t *)v > 1) return ENG_E_INVALID;
    uint8_t *val = gguf_w_val_new((uint32_t)type, n, &body);
    if (!val) return ENG_E_NOMEM;
    memcpy(body, v, n);
    return gguf_w_put(w, key, val, 4 + n);
}

int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v) {
    return gguf_writer_set_scalar(w, key, GGUF_VT_UINT32, &v);
}

int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v) {
    return gguf_writer_set_scalar(w, key, GGUF_VT_INT32, &v);
}

int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v) {
    return gguf_writer_set_scalar(w, key, GGUF_VT_FLOAT32, &v);
}

int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return gguf_writer_set_scalar(w, key, GGUF_VT_BOOL, &b);
}

int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v) {
    uint8_t *body;
    if (!w || !gguf_w_name_ok(key) || !v) return ENG_E_INVALID;
    uint64_t len = strlen(v);
    uint8_t *val = gguf_w_val_new(GGUF_VT_STRING, 8 + (size_t)len, &body);
    if (!val) return ENG_E_NOMEM;
    memcpy(body, &len, 8);
    memcpy(body + 8, v, (size_t)len);
    return gguf_w_put(w, key, val, 12 + (size_t)len);
}

int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem,
                        const void *data, uint64_t n) {
    uint8_t *body;
    if (!w || !gguf_w_name_ok(key) || !gguf_w_scalar_type(elem) || (n && !data)) return ENG_E_INVALID;
    size_t es = gguf_w_vt_size[elem];
    if (n > (SIZE_MAX - 16) / es) return ENG_E_INVALID;
    size_t bytes = (size_t)n * es;
    uint8_t *val = gguf_w_val_new(GGUF_VT_ARRAY, 12 + bytes, &body);
    if (!val) return ENG_E_NOMEM;
    uint32_t et = (uint32_t)elem;
    memcpy(body, &et, 4);
    memcpy(body + 4, &n, 8);
    if (bytes) memcpy(body + 12, data, bytes);
    return gguf_w_put(w, key, val, 16 + bytes);
}

int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    uint8_t *body;
    if (!w || !gguf_w_name_ok(key) || (n && !v)) return ENG_E_INVALID;
    size_t bytes = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) return ENG_E_INVALID;
        size_t len = strlen(v[i]);
        if (len > SIZE_MAX - 64 - bytes) return ENG_E_INVALID;
        bytes += 8 + len;
    }
    uint8_t *val = gguf_w_val_new(GGUF_VT_ARRAY, bytes, &body);
    if (!val) return ENG_E_NOMEM;
    uint32_t et = GGUF_VT_STRING;
    memcpy(body, &et, 4);
    memcpy(body + 4, &n, 8);
    uint8_t *d = body + 12;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = strlen(v[i]);
        memcpy(d, &len, 8);
        memcpy(d + 8, v[i], (size_t)len);
        d += 8 + len;
    }
    return gguf_w_put(w, key, val, 4 + bytes);
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, int type,
                           uint32_t n_dims, const int64_t *ne, const void *data) {
    if (!w || !gguf_w_name_ok(name) || !kq_type_is_weight(type) || n_dims < 1 || n_dims > 4 || !ne)
        return ENG_E_INVALID;
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return ENG_E_INVALID;
    struct gguf_wtensor t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}};
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1) return ENG_E_INVALID;
        t.ne[d] = ne[d];
    }
    /* Bound the shape before kq_row_bytes multiplies it (same limits as the reader). */
    int64_t be = kq_type_block_elems(type);
    size_t bb = kq_type_block_bytes(type);
    if (t.ne[0] % be || (uint64_t)(t.ne[0] / be) > SIZE_MAX / bb) return ENG_E_INVALID;
    uint64_t size = kq_row_bytes(type, t.ne[0]);
    for (int d = 1; d < 4; d++) {
        if ((uint64_t)t.ne[d] > SIZE_MAX / size) return ENG_E_INVALID;
        size *= (uint64_t)t.ne[d];
    }
    t.size = size;
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 16;
        struct gguf_wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return ENG_E_NOMEM;
        w->t = nt;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return ENG_E_NOMEM;
    if (data) {
        if (!(t.data = malloc((size_t)size))) {
            free(t.name);
            return ENG_E_NOMEM;
        }
        memcpy(t.data, data, (size_t)size);
    }
    w->t[w->n_t++] = t;
    return 0;
}

/* ---- output ---- */

struct gguf_wout {
    FILE *fp;
    uint64_t pos;
    int bad;            /* sticky: some write failed */
};

static void gguf_w_out(struct gguf_wout *o, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, o->fp) != n) o->bad = 1;
    o->pos += n;
}

static void gguf_w_u32(struct gguf_wout *o, uint32_t v) { gguf_w_out(o, &v, 4); }
static void gguf_w_u64(struct gguf_wout *o, uint64_t v) { gguf_w_out(o, &v, 8); }

static void gguf_w_str(struct gguf_wout *o, const char *s) {
    uint64_t len = strlen(s);
    gguf_w_u64(o, len);
    gguf_w_out(o, s, (size_t)len);
}

static void gguf_w_zeros(struct gguf_wout *o, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        gguf_w_out(o, zeros, k);
        n -= k;
    }
}

static void gguf_w_pad(struct gguf_wout *o, uint32_t align) {
    gguf_w_zeros(o, (align - o->pos % align) % align);
}

/* general.alignment if it was set (it must be a UINT32 power of two), else 32. */
static int gguf_w_alignment(const struct gguf_writer *w, const char *path, uint32_t *align,
                            char *err, size_t err_cap) {
    *align = GGUF_W_ALIGNMENT;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment")) continue;
        uint32_t type, a;
        memcpy(&type, w->kv[i].val, 4);
        if (type != GGUF_VT_UINT32)
            return eng_err_set(err, err_cap, ENG_E_INVALID, "%s: general.alignment: must be set as a UINT32", path);
        memcpy(&a, w->kv[i].val + 4, 4);
        if (!a || (a & (a - 1)))
            return eng_err_set(err, err_cap, ENG_E_INVALID,
                               "%s: general.alignment: %u is not a nonzero power of two", path, a);
        *align = a;
    }
    return 0;
}

int gguf_writer_write(struct gguf_writer *w, const char *path, char *err, size_t err_cap) {
    struct gguf_wout o = {0};
    char *tmp = NULL;
    uint32_t align;
    int rc;

    if (err && err_cap) err[0] = 0;
    if (!w || !path) return eng_err_set(err, err_cap, ENG_E_INVALID, "gguf writer: no writer or path");
    if ((rc = gguf_w_alignment(w, path, &align, err, err_cap))) return rc;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off += w->t[i].size;
        off += (align - off % align) % align;
    }

    size_t plen = strlen(path);
    if (!(tmp = malloc(plen + 5))) return eng_err_set(err, err_cap, ENG_E_NOMEM, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    if (!(o.fp = fopen(tmp, "wb"))) {
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: open: %s", tmp, strerror(errno));
        goto err;
    }

    gguf_w_out(&o, "GGUF", 4);
    gguf_w_u32(&o, GGUF_W_VERSION);
    gguf_w_u64(&o, w->n_t);
    gguf_w_u64(&o, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        gguf_w_str(&o, w->kv[i].key);
        gguf_w_out(&o, w->kv[i].val, w->kv[i].val_len);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const struct gguf_wtensor *t = &w->t[i];
        gguf_w_str(&o, t->name);
        gguf_w_u32(&o, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) gguf_w_u64(&o, (uint64_t)t->ne[d]);
        gguf_w_u32(&o, (uint32_t)t->type);
        gguf_w_u64(&o, t->offset);
    }
    gguf_w_pad(&o, align);
    for (size_t i = 0; i < w->n_t; i++) {
        if (w->t[i].data)
            gguf_w_out(&o, w->t[i].data, (size_t)w->t[i].size);
        else
            gguf_w_zeros(&o, w->t[i].size);
        gguf_w_pad(&o, align);
    }

    int close_rc = fclose(o.fp);
    o.fp = NULL;
    if (o.bad || close_rc) {
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: write: %s", tmp, strerror(errno));
        goto err;
    }
    if (rename(tmp, path)) {
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: rename from %s: %s", path, tmp, strerror(errno));
        goto err;
    }
    free(tmp);
    return 0;
err:
    if (o.fp) fclose(o.fp);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    return rc;
}
