/* fuzz_safetensors.c — libFuzzer target: the safetensors reader (st_parse,
 * which `ppd adapter import` uses through st_open) over arbitrary bytes.
 *
 * Any input must parse or fail with a message.  A parsed file's tensors must
 * lie inside the data area with a byte size matching dtype x shape (every
 * byte is read here, so ASan sees one that does not), and a float tensor
 * must convert to f32.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/load/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct st_file *f = NULL;
    char err[512] = "";
    if (st_parse(&f, data, size, "fuzz.safetensors", err, sizeof err)) {
        if (!err[0]) abort();   /* every failure explains itself */
        return 0;
    }
    volatile uint8_t sink = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const struct st_tensor *t = &f->tensors[i];
        if (t->end < t->begin || f->data_offset + t->end > f->size) abort();
        if (t->end - t->begin != t->n_elem * st_dtype_size(t->dtype)) abort();
        for (uint64_t b = 0; b < t->end - t->begin; b++) sink ^= ((const uint8_t *)t->data)[b];
        if (st_find_tensor(f, t->name) == NULL) abort();
        if ((t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) && t->n_elem <= (1u << 20)) {
            float *out = malloc(sizeof(float) * (t->n_elem ? t->n_elem : 1));
            if (!out) abort();
            char e2[256] = "";
            if (st_tensor_to_f32(f, t, out, t->n_elem, e2, sizeof e2)) abort();
            free(out);
        }
    }
    (void)sink;
    st_close(f);
    return 0;
}
