/* flags.h — how ppd reads its flags: one declarative description per flag
 * (names, value kind, range or choices, default, help) and one parser, used
 * by the server's settings (config.c) and every command-line program (cli/).
 * The settings several programs share are described once, in settings.h.
 *
 * A program lists its flags as a table of struct flag_opt: which description
 * and where the value goes in the program's options struct.  The value's C
 * type follows the kind: FLAG_STR const char *, FLAG_INT long, FLAG_FLOAT
 * double, FLAG_BOOL long (0/1), FLAG_LIST struct flag_list.  Messages go to
 * stderr and name the flag. */
#ifndef PPD_SERVER_FLAGS_H
#define PPD_SERVER_FLAGS_H

#include <stddef.h>
#include <stdio.h>

#define PPD_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define PPD_VERSION "0.1.0"

enum flag_kind { FLAG_STR, FLAG_INT, FLAG_FLOAT, FLAG_BOOL, FLAG_LIST };

struct flag_spec {
    const char *name;        /* long flag without "--"; also the config-file key and PPD_<NAME> */
    const char *short_flag;  /* "-m" or NULL */
    const char *old_name;    /* an earlier long name still read, or NULL */
    enum flag_kind kind;
    long min, max;           /* FLAG_INT bounds */
    double fmin, fmax;       /* FLAG_FLOAT bounds */
    const char *choices;     /* FLAG_STR: the allowed values, "a|b|c"; NULL: any text */
    const char *def;         /* default as text; NULL: unset (or def_fn) */
    long (*def_fn)(void);    /* FLAG_INT: a default found at run time */
    const char *meta;        /* the value's name in --help ("FILE", "N"); NULL: from the kind */
    const char *help;
};

/* One flag of a program: its description and the offset of its value. */
struct flag_opt {
    const struct flag_spec *spec;
    size_t off;
};

/* A program's own flag, described in place in its table:
 *   {FLAG_OWN(.name = "count", .kind = FLAG_INT, .min = 1, .max = 1000, .def = "10", .help = "..."), O(count)} */
#define FLAG_OWN(...) (&(const struct flag_spec){__VA_ARGS__})

/* A repeatable flag's values, in the order given. */
#define FLAG_LIST_MAX 16
struct flag_list {
    const char *v[FLAG_LIST_MAX];
    int n;
};

/* A program's flag table and the name its messages start with ("ppd generate"). */
struct flag_table {
    const char *prog;
    const struct flag_opt *opts;
    int n_opts;
};
#define FLAG_TABLE(prog, opts) ((struct flag_table){(prog), (opts), (int)(sizeof(opts) / sizeof((opts)[0]))})

/* Every value to its default.  0 or 2 (a default that does not parse). */
int flag_defaults(const struct flag_table *t, void *base);
/* Set one flag's value from text (a config file, a variable, argv); what
 * names the source in messages.  0, or 2 after a message. */
int flag_set(const struct flag_table *t, const struct flag_opt *o, void *base, const char *what, const char *v);
/* The flag with this long name or earlier name; NULL when none. */
const struct flag_opt *flag_find(const struct flag_table *t, const char *name);
/* Read argv[1..argc): --name VALUE, --name=VALUE, -s VALUE, --bool.  Words
 * that are not flags go to rest (an error when rest is NULL or full).
 * Returns 0, 1 when --help was asked for (not printed), 2 after a message. */
int flag_parse(const struct flag_table *t, void *base, int argc, char **argv, struct flag_list *rest);
/* One line per flag: names, value, help, [range], (default). */
void flag_usage_line(FILE *fp, const struct flag_spec *s);
void flag_usage(FILE *fp, const struct flag_table *t);

/* Strict number parsing for flag values: the whole string must be a number in
 * [lo, hi]; otherwise print "ppd: FLAG: ..." to stderr and return -1. */
int flag_int(const char *flag, const char *s, long lo, long hi, long *out);
int flag_float(const char *flag, const char *s, double lo, double hi, double *out);
/* argv[*i + 1] or an error naming the flag. */
const char *flag_value(int argc, char **argv, int *i);
/* Read a whole file (NUL-terminated); NULL with a message on error. */
char *flag_read_file(const char *path);
/* Default thread count: the environment's PPD_THREADS, else the CPUs this
 * process may use (affinity mask, cgroup quota), at most 8. */
long flag_default_threads(void);

#endif
