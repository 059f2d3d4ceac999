/* cli_distill.c — `ppd distill` (being written). */
#include <stdio.h>

#include "cli.h"

int cmd_distill(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ppd distill: not available yet\n");
    return 1;
}
