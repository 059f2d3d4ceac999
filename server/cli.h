/* cli.h — the `ppd` subcommands and the small argument helpers they share.
 *
 * Each subcommand is `int cmd_NAME(int argc, char **argv)` returning the
 * process exit status (0 ok, 1 runtime error, 2 usage error).
 */
#ifndef PPD_CLI_H
#define PPD_CLI_H

#include <stdbool.h>

#define PPD_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define PPD_VERSION "0.1.0"

int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_adapter(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_tree(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

/* Strict number parsing for flag values: the whole string must be a number in
 * [lo, hi]; otherwise print "ppd: FLAG: ..." to stderr and return -1. */
int cli_int(const char *flag, const char *s, long lo, long hi, long *out);
int cli_float(const char *flag, const char *s, double lo, double hi, double *out);
/* argv[*i + 1] or an error naming the flag. */
const char *cli_value(int argc, char **argv, int *i);
/* Read a whole file (NUL-terminated); NULL with a message on error. */
char *cli_read_file(const char *path);
/* Default thread count: the environment's PPD_THREADS, else the CPUs this
 * process may use (affinity mask, cgroup quota), at most 8. */
int cli_default_threads(void);

#endif
