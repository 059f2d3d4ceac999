/* flags.c — strict flag-value parsing, shared by the server's settings
 * (config.c) and the command-line programs (cli/). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flags.h"
#include "engine/threadpool.h"

int flag_int(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "ppd: %s: '%s' is not an integer in [%ld, %ld]\n", flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int flag_float(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "ppd: %s: '%s' is not a number in [%g, %g]\n", flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

const char *flag_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "ppd: %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

char *flag_read_file(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) { fprintf(stderr, "ppd: cannot open %s: %s\n", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) { fclose(fp); fprintf(stderr, "ppd: %s: out of memory\n", path); return NULL; }
        n += fread(buf + n, 1, cap - n - 1, fp);
        if (n < cap - 1) break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) { free(buf); fprintf(stderr, "ppd: error reading %s\n", path); return NULL; }
    buf[n] = 0;
    return buf;
}

int flag_default_threads(void) {
    const char *env = getenv("PPD_THREADS");
    long v;
    if (env && *env && flag_int("PPD_THREADS", env, 1, 1024, &v) == 0) return (int)v;
    const int n = eng_cpu_count();
    return n > 8 ? 8 : n;
}
