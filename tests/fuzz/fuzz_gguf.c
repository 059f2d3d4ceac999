/* fuzz_gguf.c — libFuzzer target: the GGUF reader over arbitrary bytes.
 *
 * gguf_parse validates everything up front, so any input must give either a
 * file whose every table can be walked (keys, strings, arrays, tensors inside
 * the buffer) or an error with a message — never a crash or a sanitizer report.
 * The walk below touches every byte the parsed structure points at, so an
 * out-of-bounds pointer the validation let through shows up under ASan.
 *
 * Not here: the tokenizer or model interpreting the metadata (other targets).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/load/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t fuzz_vt_size(enum gguf_vtype t) {
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

/* Read every byte of [p, p + n): ASan checks the range. */
static unsigned fuzz_touch(const void *p, uint64_t n) {
    const volatile uint8_t *b = p;
    unsigned acc = 0;
    for (uint64_t i = 0; i < n; i++) acc += b[i];
    return acc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private copy of exactly size bytes: reads past the end are reported. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    struct gguf_file *f = NULL;
    char err[256];
    err[0] = 0;
    const int rc = gguf_parse(&f, buf, size, "fuzz", err, sizeof err);
    if (rc != 0 && (!err[0] || !strstr(err, "fuzz"))) abort();   /* every failure names the file and says why */
    if (rc == 0) {
        volatile unsigned sink = 0;
        for (uint64_t i = 0; i < f->n_kv; i++) {
            const struct gguf_kv *kv = &f->kv[i];
            sink += (unsigned)strlen(kv->key);
            if (kv->type == GGUF_VT_STRING) sink += fuzz_touch(kv->str.s, kv->str.len + 1);
            if (kv->type != GGUF_VT_ARRAY) continue;
            if (kv->arr_type == GGUF_VT_STRING) {
                for (uint64_t j = 0; j < kv->arr_n; j++) sink += fuzz_touch(kv->arr_str[j].s, kv->arr_str[j].len + 1);
            } else {
                sink += fuzz_touch(kv->arr_data, kv->arr_n * fuzz_vt_size(kv->arr_type));
            }
            /* The getters must agree with the table. */
            const struct gguf_kv *got = NULL;
            if (gguf_get_arr(f, kv->key, kv->arr_type, &got, err, sizeof err) == 0 && got->arr_n > 0) {
                if (kv->arr_type == GGUF_VT_INT32 || kv->arr_type == GGUF_VT_UINT32)
                    sink += (unsigned)gguf_arr_i32(got, got->arr_n - 1);
                if (kv->arr_type == GGUF_VT_FLOAT32) sink += (unsigned)(gguf_arr_f32(got, 0) != 0);
            }
            uint32_t u32;
            int64_t i64;
            float f32;
            bool b;
            const struct gguf_str *s;
            sink += (unsigned)gguf_get_u32(f, kv->key, &u32, err, sizeof err);
            sink += (unsigned)gguf_get_i64(f, kv->key, &i64, err, sizeof err);
            sink += (unsigned)gguf_get_f32(f, kv->key, &f32, err, sizeof err);
            sink += (unsigned)gguf_get_bool(f, kv->key, &b, err, sizeof err);
            sink += (unsigned)gguf_get_str(f, kv->key, &s, err, sizeof err);
        }
        for (uint64_t i = 0; i < f->n_tensors; i++) {
            const struct gguf_tensor *t = &f->tensors[i];
            if (gguf_find_tensor(f, t->name) == NULL) abort();
            sink += fuzz_touch(t->data, t->size);
        }
        (void)sink;
    }
    gguf_close(f);
    free(buf);
    return 0;
}
