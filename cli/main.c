/* main.c — `ppd`, one binary with git-style subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "engine/model/backend.h"
#include "kernels/cpu/cpu_isa.h"


struct cli_cmd { const char *name; int (*fn)(int, char **); const char *help; };

static const struct cli_cmd cli_cmds[] = {
    {"serve", cmd_serve, "the OpenAI-compatible HTTP server (--help lists its settings)"},
    {"generate", cmd_generate, "generate text for one prompt (--json for machine-readable output)"},
    {"bench", cmd_bench, "prefill and decode speed over a prompt set"},
    {"adapter", cmd_adapter, "make, import or inspect a PPD adapter (init, import, show)"},
    {"distill", cmd_distill, "let the model answer a prompt set greedily (training data for `ppd train`)"},
    {"train", cmd_train, "train PPD prompt tokens on distilled sequences"},
    {"tree", cmd_tree, "build a PPD tree family from an adapter, or choose its size for this machine"},
    {"calibrate", cmd_calibrate, "measure this device's step latency and choose the PPD tree per batch size"},
};

static void usage(FILE *fp) {
    fprintf(fp, "ppd %s — LLM inference with Parallel Prompt Decoding\n\nusage: ppd COMMAND [flags]\n\n", PPD_VERSION);
    for (unsigned i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        fprintf(fp, "  %-10s %s\n", cli_cmds[i].name, cli_cmds[i].help);
    fprintf(fp, "\n`ppd COMMAND --help` lists a command's flags.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("ppd %s\n", PPD_VERSION);
        printf("features: cpu=%s (this CPU has up to %s) cuda=%s\n", kq_isa_name(kq_isa()),
               kq_isa_name(kq_isa_detected()), eng_backend_cuda_built() ? "built" : "not built");
        return 0;
    }
    for (unsigned i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        if (!strcmp(argv[1], cli_cmds[i].name)) return cli_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "ppd: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
