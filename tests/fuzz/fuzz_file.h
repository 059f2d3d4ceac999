/* fuzz_file.h — for the fuzz targets whose function under test reads a path,
 * not a buffer: one private temporary file per process, rewritten in place
 * with each input and removed at exit.
 * Header-only (static functions) because every target is one .c file.
 */
#ifndef PPD_FUZZ_FILE_H
#define PPD_FUZZ_FILE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char fuzz_file_path[64];
static int fuzz_file_fd = -1;

static void fuzz_file_cleanup(void) {
    if (fuzz_file_fd >= 0) unlink(fuzz_file_path);
}

/* Create the file (its name starts with prefix); aborts on failure. */
static void fuzz_file_init(const char *prefix) {
    snprintf(fuzz_file_path, sizeof fuzz_file_path, "/tmp/%s-XXXXXX", prefix);
    fuzz_file_fd = mkstemp(fuzz_file_path);
    if (fuzz_file_fd < 0) { perror("mkstemp"); abort(); }
    atexit(fuzz_file_cleanup);
}

/* The file now holds exactly data[0..size); returns its path. */
static const char *fuzz_file_write(const uint8_t *data, size_t size) {
    if (ftruncate(fuzz_file_fd, 0) || (size && pwrite(fuzz_file_fd, data, size, 0) != (ssize_t)size)) abort();
    return fuzz_file_path;
}

#endif
