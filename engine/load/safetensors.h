/* safetensors.h — reading safetensors files (the format Hugging Face and PEFT
 * save tensors in), so that released PPD adapters can be imported.
 *
 * Layout: an 8-byte little-endian header length n, n bytes of UTF-8 JSON
 *   {"NAME": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"key": "string value", ...}}
 * (possibly padded with spaces), then the data area; begin/end are byte offsets
 * into the data area, little-endian values, row-major.
 *
 * The reader mmaps the file and validates everything before anything is used:
 * header length against the file size, the JSON (no duplicate keys), every
 * tensor's dtype (one of the format's names), shape (non-negative integers,
 * at most ST_MAX_DIMS), data_offsets (begin <= end, inside the data area,
 * end - begin == product of the shape x dtype size, every size computation
 * checked for overflow), tensors not overlapping one another, and metadata
 * values being strings.  A bad file gives ENG_E_FORMAT and "PATH: FIELD:
 * what is wrong", never a crash.
 *
 * It does not write safetensors files, and converts to f32 only from F32, F16
 * and BF16 (exactly: every such value is an f32 value); other dtypes are
 * described but not converted.
 */
#ifndef PPD_SAFETENSORS_H
#define PPD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

/* The format's dtype names, in the order of the format's documentation. */
enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
};

struct st_tensor {
    const char *name;           /* NUL-terminated */
    enum st_dtype dtype;
    int n_dims;                 /* 0..ST_MAX_DIMS (0: a scalar) */
    uint64_t shape[ST_MAX_DIMS];/* shape[0] is the outermost (slowest) dimension */
    uint64_t n_elem;            /* product of the shape */
    uint64_t begin, end;        /* bytes, from the start of the data area */
    const void *data;           /* into the file (maybe unaligned) */
};

struct st_file {
    char *path;
    int n_tensors;
    struct st_tensor *tensors;  /* in header order */
    const uint8_t *base;        /* the whole file */
    size_t size;
    uint64_t data_offset;       /* 8 + header length */
    /* private */
    int mapped_;                /* 1 if base is an mmap to be unmapped */
    void *json_;                /* the parsed header: owns names and metadata strings */
};

/* Open and validate a file.  On error *out is NULL, err holds "PATH: FIELD: problem". */
int st_open(struct st_file **out, const char *path, char *err, size_t err_cap);
/* The same over a buffer the caller keeps alive (tests, fuzzing); name is used in messages. */
int st_parse(struct st_file **out, const void *buf, size_t size, const char *name, char *err, size_t err_cap);
void st_close(struct st_file *f);   /* accepts NULL */

const struct st_tensor *st_find_tensor(const struct st_file *f, const char *name);
/* A "__metadata__" value, or NULL when absent. */
const char *st_meta_get(const struct st_file *f, const char *key);

const char *st_dtype_name(enum st_dtype t);   /* "F32"; "?" for an out-of-range value */
size_t st_dtype_size(enum st_dtype t);        /* bytes per element */

/* Convert n elements of t (n == t->n_elem) to f32.  ENG_E_UNSUPPORTED for
 * dtypes other than F32, F16, BF16; ENG_E_INVALID when n differs. */
int st_tensor_to_f32(const struct st_file *f, const struct st_tensor *t, float *out, uint64_t n,
                     char *err, size_t err_cap);

/* One IEEE half (binary16) or bfloat16, given as its 16 bits, as an f32
 * (exact, including subnormals, infinities and NaN payloads). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t h);

#endif
