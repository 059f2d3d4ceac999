/* serve.c — `ppd serve`: the HTTP server (server/), whose settings table also
 * reads the flags, PPD_* variables and config file (server/config.c). */
#include "cli.h"
#include "server/serve.h"

int cmd_serve(int argc, char **argv) { return srv_main(argc, argv); }
