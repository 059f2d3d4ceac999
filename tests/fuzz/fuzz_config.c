/* fuzz_config.c — libFuzzer target: `ppd serve`'s config file reader
 * (srv_config_load with --config FILE) over arbitrary bytes.
 *
 * Any file must load or be refused (exit status 2, with a line on stderr
 * naming the file, line and key); a loaded configuration must hold every
 * setting inside the range the table gives it, and every string setting the
 * server dereferences must be set.  The PPD_* environment is cleared first,
 * so only the file decides.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_file.h"
#include "server/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

extern char **environ;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    /* unset every PPD_* variable: the loader reads them after the file */
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++)
            if (!strncmp(*e, "PPD_", 4)) {
                char name[128];
                size_t n = strcspn(*e, "=");
                if (n >= sizeof name) continue;
                memcpy(name, *e, n);
                name[n] = 0;
                unsetenv(name);
                again = 1;
                break;
            }
    }
    fuzz_file_init("ppd-fuzz-config");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file_write(data, size);
    char *argv[] = {"serve", "--config", (char *)path, NULL};
    struct srv_config c;
    const int rc = srv_config_load(&c, 3, argv);
    if (rc != 0 && rc != 2) abort();
    if (rc == 0) {
        if (!c.model || !c.host || !c.device || !c.ppd || !c.tree || !c.calibrate || !c.ppd_accept) abort();
        if (c.port < 0 || c.port > 65535 || c.n_ctx < 16 || c.n_parallel < 1 || c.n_parallel > 256 || c.batch < 1 ||
            c.prefill_chunk < 1 || c.max_body < 1024 || c.keepalive_s < 1 || c.n_threads < 1 || c.tree_budget < 0)
            abort();
        volatile size_t sink = strlen(c.model) + strlen(c.host) + strlen(c.ppd) + strlen(c.tree);
        if (c.alias) sink += strlen(c.alias);
        if (c.api_key) sink += strlen(c.api_key);
        (void)sink;
    }
    srv_config_free(&c);
    return 0;
}
