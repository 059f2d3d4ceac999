/* cli.h — the `ppd` subcommands.  Their flags are described in tables read
 * by server/flags.h; the settings they share with `ppd serve` are described
 * once, in server/settings.h.
 *
 * Each subcommand is `int cmd_NAME(int argc, char **argv)` returning the
 * process exit status (0 ok, 1 runtime error, 2 usage error).
 */
#ifndef PPD_CLI_H
#define PPD_CLI_H

#include <stdbool.h>

#include "server/flags.h"

int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_adapter(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_tree(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

#endif
