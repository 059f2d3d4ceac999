/* gguf.h — reading (and, for tests and adapters, writing) GGUF files.
 *
 * The reader mmaps the file and validates everything before anything is used:
 * magic, version (2 or 3), counts, string lengths, value types, array sizes,
 * tensor dims/types/offsets/sizes, alignment, and every size computation for
 * overflow.  A bad file gives ENG_E_FORMAT (or ENG_E_UNSUPPORTED for a valid
 * but unknown tensor type) and a message "PATH: FIELD: what is wrong".
 * Keys and string values are copied out as NUL-terminated strings; tensor data
 * and numeric arrays stay in the mapping.
 *
 * It does not interpret any metadata: that is the model's and tokenizer's job.
 */
#ifndef PPD_GGUF_H
#define PPD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
};

struct gguf_str {
    const char *s;  /* NUL-terminated copy (may also contain NULs inside) */
    uint64_t len;   /* bytes, without the terminating NUL */
};

struct gguf_kv {
    const char *key;            /* NUL-terminated */
    enum gguf_vtype type;
    /* scalars (type != ARRAY, != STRING): integers widened into u/i, floats into f */
    union { uint64_t u; int64_t i; double f; bool b; } v;
    struct gguf_str str;        /* type == STRING */
    /* type == ARRAY: */
    enum gguf_vtype arr_type;   /* element type (never ARRAY: nested arrays are refused) */
    uint64_t arr_n;             /* element count */
    const void *arr_data;       /* numeric elements, in the mapping (maybe unaligned) */
    const struct gguf_str *arr_str; /* arr_type == STRING: arr_n copied strings */
};

struct gguf_tensor {
    const char *name;           /* NUL-terminated */
    uint32_t n_dims;            /* 1..4 */
    int64_t ne[4];              /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    int type;                   /* enum kq_type */
    uint64_t offset;            /* from the start of the data section */
    uint64_t size;              /* bytes */
    const void *data;           /* into the mapping, aligned to the file's alignment */
};

struct gguf_file {
    char *path;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    const uint8_t *base;        /* the whole file */
    size_t size;
    uint64_t data_offset;       /* start of the tensor data section */
    /* private */
    int mapped_;                /* 1 if base is an mmap to be unmapped */
    void *arena_;               /* copied strings */
};

/* Open and validate a file.  On error *out is NULL, err holds "PATH: FIELD: problem". */
int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_cap);
/* The same over a buffer the caller keeps alive (fuzzing, tests); name is used in messages. */
int gguf_parse(struct gguf_file **out, const void *buf, size_t size, const char *name,
               char *err, size_t err_cap);
void gguf_close(struct gguf_file *f);   /* accepts NULL */

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* Typed getters.  ENG_E_NOT_FOUND when the key is absent; ENG_E_FORMAT (with a
 * message naming the key) when it has the wrong type or does not fit.  Integer
 * getters accept any integer type whose value fits. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, char *err, size_t err_cap);
int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out, char *err, size_t err_cap);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, char *err, size_t err_cap);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, char *err, size_t err_cap);
int gguf_get_str(const struct gguf_file *f, const char *key, const struct gguf_str **out, char *err, size_t err_cap);
/* An array whose elements have type want (or, for want == GGUF_VT_INT32, any 32-bit integer type). */
int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype want,
                 const struct gguf_kv **out, char *err, size_t err_cap);
/* Element i of a numeric array kv (bounds and type are the caller's promise). */
int32_t gguf_arr_i32(const struct gguf_kv *kv, uint64_t i);
float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i);

/* ---- writing (tests, adapters) ---- */
struct gguf_writer;
struct gguf_writer *gguf_writer_new(void);
void gguf_writer_free(struct gguf_writer *w);  /* accepts NULL */
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
/* Any numeric or bool scalar type; v points to one value of that type, as the
 * file stores it (bool: one byte, 0 or 1).  For the types without a setter of their own. */
int gguf_writer_set_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype type, const void *v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem,
                        const void *data, uint64_t n);     /* numeric elements, packed */
int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* ne[0] is the row length; data holds kq_row_bytes(type, ne[0]) * rows bytes (copied;
 * NULL writes zeros).  Setting an existing key replaces its value; a repeated
 * tensor name is ENG_E_INVALID. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, int type,
                           uint32_t n_dims, const int64_t *ne, const void *data);
/* Version 3, alignment 32 (or general.alignment if set).  Writes atomically (tmp + rename). */
int gguf_writer_write(struct gguf_writer *w, const char *path, char *err, size_t err_cap);

#endif
