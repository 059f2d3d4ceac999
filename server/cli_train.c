/* cli_train.c — `ppd train` (being written). */
#include <stdio.h>

#include "cli.h"

int cmd_train(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ppd train: not available yet\n");
    return 1;
}
