/* fuzz_adapter.c — libFuzzer target: the PPD adapter reader
 * (eng_ppd_adapter_load) over arbitrary bytes.
 *
 * The loader takes a path (it maps the file through the GGUF reader), so each
 * input is written to one private temporary file, rewritten in place per run.
 * Any input must load or fail with a message; a loaded adapter's arrays must
 * hold exactly the sizes its header claims (read in full here, so ASan sees an
 * undersized one).  No model is given: the fingerprint check is not fuzzed.
 *
 * Not here: the GGUF layer on its own (fuzz_gguf.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ppd/ppd_adapter.h"
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_file_init("ppd-fuzz-adapter");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file_write(data, size);
    struct eng_ppd_adapter *a = NULL;
    char err[512];
    if (eng_ppd_adapter_load(&a, path, NULL, err, sizeof err) == 0) {
        if (a->n_prompt < 1 || a->n_prompt > ENG_PPD_MAX_PROMPT || a->topk < 1 || a->topk > ENG_PPD_MAX_TOPK ||
            a->n_embd < 1)
            abort();
        volatile float sink = 0;
        for (size_t i = 0; i < (size_t)a->n_prompt * (size_t)a->n_embd; i++) sink += a->emb[i];
        if (a->accuracy)
            for (size_t i = 0; i < (size_t)a->n_prompt * (size_t)a->topk; i++) sink += a->accuracy[i];
        for (size_t i = 0; a->deep && i < (size_t)a->n_deep * (size_t)a->n_prompt * (size_t)a->n_embd; i++)
            sink += a->deep[i];
        if (a->joint) {   /* present only when (K+1)^N is small enough to hold it */
            const int nj = eng_ppd_joint_size(a->n_prompt, a->topk);
            if (nj < 1) abort();
            for (int i = 0; i < nj; i++) sink += a->joint[i];
        }
        sink += (float)strlen(a->base_name) + (float)strlen(a->provenance) + (float)strlen(a->init_text);
        (void)sink;
    } else if (!err[0]) {
        abort();   /* every failure explains itself */
    }
    eng_ppd_adapter_free(a);
    return 0;
}
