/* fuzz_calib.c — libFuzzer target: the calibration cache reader
 * (eng_calib_table_load), which reads a JSON file that any process with the
 * cache directory could have left, over arbitrary bytes.
 *
 * The loader takes a path, so each input is written to one private temporary
 * file, rewritten in place per run.  Any input must load, be "not found" (a
 * different fingerprint), or fail with a message; a loaded table must be
 * within its declared bounds (sorted, in range, every measured step
 * positive), since the chooser indexes it.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/calib/calibrate.h"
#include "engine/err.h"
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The fingerprint of the seed tables (tests/fuzz/corpus/fuzz_calib). */
#define FUZZ_FINGERPRINT "5c5b7e165af33e8b4e471ebcd7d0cd902b5812ad4aac92dae19a188098869618"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_file_init("ppd-fuzz-calib");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file_write(data, size);
    struct eng_calib_table t;
    char err[512] = "";
    const int rc = eng_calib_table_load(&t, FUZZ_FINGERPRINT, path, err, sizeof err);
    if (rc == ENG_E_NOT_FOUND) return 0;
    if (rc) {
        if (!err[0]) abort();   /* a damaged table explains itself */
        return 0;
    }
    if (t.n_b < 1 || t.n_b > ENG_CALIB_MAX_B || t.n_r < 1 || t.n_r > ENG_CALIB_MAX_R) abort();
    for (int i = 0; i < t.n_b; i++)
        if (t.b[i] < 1 || (i && t.b[i] <= t.b[i - 1])) abort();
    for (int i = 0; i < t.n_r; i++)
        if (t.r[i] < 1 || (i && t.r[i] <= t.r[i - 1])) abort();
    for (int i = 0; i < t.n_b; i++)
        for (int j = 0; j < t.n_r; j++)
            if (!(t.ms[i][j] >= 0) || !isfinite(t.ms[i][j])) abort();
    (void)eng_calib_step_ms(&t, t.b[0], 1.5);
    return 0;
}
