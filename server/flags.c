/* flags.c — the flag tables of flags.h: defaults, setting a value from text,
 * reading argv, --help lines; and strict value parsing.  Shared by the
 * server's settings (config.c) and the command-line programs (cli/).  Not
 * here: the config file and the PPD_* variables, which only the server
 * reads (config.c). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flags.h"
#include "engine/model/threadpool.h"

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

long flag_default_threads(void) {
    const char *env = getenv("PPD_THREADS");
    long v;
    if (env && *env && flag_int("PPD_THREADS", env, 1, 1024, &v) == 0) return v;
    const int n = eng_cpu_count();
    return n > 8 ? 8 : n;
}

/* The value's place in the options struct. */
#define FLAG_AT(base, o, type) ((type *)((char *)(base) + (o)->off))

static int flag_bool(const char *what, const char *v, long *out) {
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes")) *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !*v) *out = 0;
    else { fprintf(stderr, "ppd: %s: '%s' is not a boolean (1/0, true/false)\n", what, v); return -1; }
    return 0;
}

/* v is one of "a|b|c". */
static int flag_choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *p = choices; p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

int flag_set(const struct flag_table *t, const struct flag_opt *o, void *base, const char *what, const char *v) {
    const struct flag_spec *s = o->spec;
    switch (s->kind) {
    case FLAG_STR:
        if (s->choices && !flag_choice_ok(s->choices, v)) {
            fprintf(stderr, "%s: %s: '%s' is not one of ", t->prog, what, v);
            for (const char *p = s->choices; *p; p++) {
                if (*p == '|') fputs(", ", stderr);
                else fputc(*p, stderr);
            }
            fputc('\n', stderr);
            return 2;
        }
        *FLAG_AT(base, o, const char *) = v;
        return 0;
    case FLAG_INT:
        return flag_int(what, v, s->min, s->max, FLAG_AT(base, o, long)) ? 2 : 0;
    case FLAG_FLOAT:
        return flag_float(what, v, s->fmin, s->fmax, FLAG_AT(base, o, double)) ? 2 : 0;
    case FLAG_BOOL:
        return flag_bool(what, v, FLAG_AT(base, o, long)) ? 2 : 0;
    case FLAG_LIST: {
        struct flag_list *l = FLAG_AT(base, o, struct flag_list);
        if (l->n == FLAG_LIST_MAX) {
            fprintf(stderr, "%s: %s: at most %d values\n", t->prog, what, FLAG_LIST_MAX);
            return 2;
        }
        l->v[l->n++] = v;
        return 0;
    }
    }
    return 2;
}

int flag_defaults(const struct flag_table *t, void *base) {
    for (int i = 0; i < t->n_opts; i++) {
        const struct flag_opt *o = &t->opts[i];
        if (o->spec->def) {
            if (flag_set(t, o, base, o->spec->name, o->spec->def)) return 2;
        } else if (o->spec->def_fn) {
            *FLAG_AT(base, o, long) = o->spec->def_fn();
        }
    }
    return 0;
}

const struct flag_opt *flag_find(const struct flag_table *t, const char *name) {
    for (int i = 0; i < t->n_opts; i++) {
        const struct flag_spec *s = t->opts[i].spec;
        if (!strcmp(s->name, name) || (s->old_name && !strcmp(s->old_name, name))) return &t->opts[i];
    }
    return NULL;
}

/* The flag arg names, and where an inline value ("--name=VALUE") starts. */
static const struct flag_opt *flag_match(const struct flag_table *t, const char *arg, const char **inline_val) {
    *inline_val = NULL;
    for (int i = 0; i < t->n_opts; i++) {
        const struct flag_spec *s = t->opts[i].spec;
        if (s->short_flag && !strcmp(arg, s->short_flag)) return &t->opts[i];
        if (strncmp(arg, "--", 2)) continue;
        for (int k = 0; k < 2; k++) {
            const char *name = k ? s->old_name : s->name;
            if (!name) continue;
            size_t n = strlen(name);
            if (strncmp(arg + 2, name, n) || (arg[2 + n] && arg[2 + n] != '=')) continue;
            if (arg[2 + n] == '=') *inline_val = arg + 3 + n;
            return &t->opts[i];
        }
    }
    return NULL;
}

int flag_parse(const struct flag_table *t, void *base, int argc, char **argv, struct flag_list *rest) {
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *v;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) return 1;
        if (arg[0] != '-' || !arg[1]) {
            if (!rest || rest->n == FLAG_LIST_MAX) {
                fprintf(stderr, "%s: unexpected argument '%s' (see %s --help)\n", t->prog, arg, t->prog);
                return 2;
            }
            rest->v[rest->n++] = arg;
            continue;
        }
        const struct flag_opt *o = flag_match(t, arg, &v);
        if (!o) {
            fprintf(stderr, "%s: unknown flag '%s' (see %s --help)\n", t->prog, arg, t->prog);
            return 2;
        }
        char what[128];   /* the flag as typed, without "=VALUE" */
        snprintf(what, sizeof what, "%.*s", v ? (int)(v - 1 - arg) : (int)strlen(arg), arg);
        if (!v) v = o->spec->kind == FLAG_BOOL ? "1" : flag_value(argc, argv, &a);
        if (!v || flag_set(t, o, base, what, v)) return 2;
    }
    return 0;
}

void flag_usage_line(FILE *fp, const struct flag_spec *s) {
    static const char *meta_of_kind[] = {[FLAG_STR] = "TEXT", [FLAG_INT] = "N", [FLAG_FLOAT] = "X", [FLAG_LIST] = "TEXT"};
    const char *meta = s->kind == FLAG_BOOL ? "" : s->meta ? s->meta : meta_of_kind[s->kind];
    char left[64];
    snprintf(left, sizeof left, "%s%s--%s%s%s", s->short_flag ? s->short_flag : "", s->short_flag ? ", " : "", s->name,
             *meta ? " " : "", meta);
    fprintf(fp, "  %-26s %s", left, s->help);
    if (s->kind == FLAG_INT) fprintf(fp, " [%ld..%ld]", s->min, s->max);
    if (s->kind == FLAG_FLOAT) fprintf(fp, " [%g..%g]", s->fmin, s->fmax);
    const int def = s->def && s->kind != FLAG_BOOL;
    if (def || s->old_name)
        fprintf(fp, " (%s%s%s%s%s)", def ? "default " : "", def ? s->def : "", def && s->old_name ? "; " : "",
                s->old_name ? "also --" : "", s->old_name ? s->old_name : "");
    fputc('\n', fp);
}

void flag_usage(FILE *fp, const struct flag_table *t) {
    for (int i = 0; i < t->n_opts; i++) flag_usage_line(fp, t->opts[i].spec);
    fprintf(fp, "  %-26s this text\n", "-h, --help");
}
