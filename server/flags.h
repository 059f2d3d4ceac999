/* flags.h — what the server's settings and the command-line programs share
 * about flags: the default model, the version, and strict parsing of a
 * flag's value.  Messages go to stderr prefixed "ppd: ". */
#ifndef PPD_SERVER_FLAGS_H
#define PPD_SERVER_FLAGS_H

#define PPD_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define PPD_VERSION "0.1.0"

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
int flag_default_threads(void);

#endif
