/* tree.c — `ppd tree`: PPD tree families from an adapter's measured accuracy.
 *
 *   ppd tree build -a ADAPTER [-L 20] -o FILE
 *       the two-stage builder (docs/ppd.md, "Building trees") at budget L
 *   ppd tree tune -a ADAPTER -f PROMPTS.jsonl [--sizes 4,8,...] [--count 6] [-n 128] [-o FILE]
 *       choose L for this machine by measurement: for each budget, decode the
 *       prompts with PPD and, alternating, without; keep the budget with the
 *       best measured speed-up and write its family
 *
 * The tuning prompts should not be the ones reported on (use training
 * prompts); greedy decoding, so the outputs of both runs must agree (checked).
 * Not here: the builder (engine/ppd_tree_build.c), online re-tuning under load.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "prompts.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/generate.h"
#include "engine/ppd.h"
#include "engine/ppd_setup.h"
#include "engine/ppd_tree.h"

#define TREE_L_DEFAULT 20

static void tree_usage(FILE *fp) {
    fprintf(fp,
            "usage: ppd tree build -a ADAPTER [-L BUDGET] -o FILE\n"
            "       ppd tree tune -a ADAPTER -f PROMPTS.jsonl [flags]\n"
            "  -a, --adapter FILE   PPD adapter with a measured accuracy table (ppd train)\n"
            "  -m, --model FILE     base model (tune; default %s)\n"
            "  -L, --size L         tree budget (build; default %d)\n"
            "  -f, --file FILE      tuning prompts, JSON lines with \"turns\" (use training prompts)\n"
            "      --skip N         skip the first N lines of the file (default 0)\n"
            "      --count N        prompts (default 6)\n"
            "  -n, --n-predict N    tokens per prompt (default 128)\n"
            "      --sizes LIST     budgets to try (default 2,4,6,8,12,16,24,32,48,64)\n"
            "  -t, --threads N      CPU threads\n"
            "  -o, --output FILE    tree family to write (JSON)\n"
            "      --set-adapter    record the chosen budget in the adapter (ppd.tree_L): the default\n"
            "                       tree of generate, bench and serve is then built with it\n",
            PPD_DEFAULT_MODEL, TREE_L_DEFAULT);
}

static int tree_from_adapter(const char *adapter, int L, struct eng_ppd_tree_family **fam,
                             struct eng_ppd_tree_build_info *info) {
    char err[512];
    struct eng_ppd_adapter *ad = NULL;
    if (eng_ppd_adapter_load(&ad, adapter, NULL, err, sizeof err)) { fprintf(stderr, "ppd tree: %s\n", err); return 1; }
    if (!ad->accuracy) {
        fprintf(stderr, "ppd tree: %s has no accuracy table (train it with `ppd train`)\n", adapter);
        eng_ppd_adapter_free(ad);
        return 1;
    }
    double *acc = eng_ppd_accuracy(ad);
    int rc = 1;
    if (acc) {
        rc = eng_ppd_tree_build_joint(fam, acc, eng_ppd_accuracy_joint(ad, acc), ad->n_prompt, ad->topk, L, info);
        if (rc) fprintf(stderr, "ppd tree: building with L=%d failed: %s\n", L, eng_err_msg(rc));
    }
    free(acc);
    eng_ppd_adapter_free(ad);
    return rc ? 1 : 0;
}

/* Record the chosen budget in the adapter (ppd.tree_L): the default tree of
 * `ppd generate`, `ppd bench` and `ppd serve` is then built with it. */
static int tune_set_adapter(const char *adapter, int L, double speedup) {
    char err[512];
    struct eng_ppd_adapter *ad = NULL;
    int rc = eng_ppd_adapter_load(&ad, adapter, NULL, err, sizeof err);
    if (!rc) {
        ad->tree_budget = L;
        ad->tuned_speedup = (float)speedup;
        rc = eng_ppd_adapter_save(ad, adapter, err, sizeof err);
    }
    eng_ppd_adapter_free(ad);
    if (rc) fprintf(stderr, "ppd tree: %s\n", err);
    return rc ? 1 : 0;
}

static int cmd_tree_tune(const char *model, const char *adapter, const char *file, long skip, long count,
                         long n_predict, const char *sizes, int n_threads, const char *out_path, int set_adapter) {
    char err[512];
    struct eng_engine_params ep = {.model_path = model, .n_threads = n_threads, .n_slot = 1, .max_rows = 512};
    struct eng_engine *e = NULL;
    if (eng_engine_open(&e, &ep, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); return 1; }
    struct cli_prompt *pr = NULL;
    int n_pr = 0, status = 1, best_L = 0;
    double best = 0;
    int32_t *a = malloc(sizeof(int32_t) * (size_t)n_predict), *b = malloc(sizeof(int32_t) * (size_t)n_predict);
    if (!a || !b || cli_prompts_load(e, "ppd tree", file, skip, count, n_predict, &pr, &n_pr)) goto done;
    struct eng_gen_params gp = {.n_predict = (int)n_predict, .ignore_eog = false, .prefill_chunk = 512};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = 0;
    printf("%-6s %-6s %-10s %-10s %-10s %-10s %-8s\n", "L", "T_max", "E[acc]", "acc/step", "base t/s", "ppd t/s", "speedup");
    for (const char *s = sizes; *s;) {
        char *end;
        long L = strtol(s, &end, 10);
        if (end == s || L < 1 || L > 256) { fprintf(stderr, "ppd tree: --sizes: bad budget at '%s'\n", s); goto done; }
        s = *end == ',' ? end + 1 : end;
        struct eng_ppd_tree_build_info info;
        struct eng_ppd_tree_family *fam = NULL;
        if (tree_from_adapter(adapter, (int)L, &fam, &info)) goto done;
        struct eng_ppd_adapter *ad = NULL;
        struct eng_ppd ppd = {0};
        if (eng_ppd_adapter_load(&ad, adapter, e->model, err, sizeof err) ||
            eng_ppd_init(&ppd, ad, fam, err, sizeof err)) {
            fprintf(stderr, "ppd tree: %s\n", err);
            eng_ppd_adapter_free(ad);
            eng_ppd_tree_family_free(fam);
            goto done;
        }
        double base_s = 0, ppd_s = 0;
        long base_n = 0, ppd_n = 0, steps = 0;
        int mismatch = 0;
        for (int i = 0; i < n_pr; i++) {
            struct eng_gen_stats gs;
            struct eng_ppd_gen_stats ps;
            int rc = eng_generate(&e->fwd, &e->kv, 0, e->tok, pr[i].ids, pr[i].n, &gp, NULL, NULL, a, &gs);
            if (!rc) rc = eng_ppd_generate(&e->fwd, &e->kv, 0, e->tok, &ppd, pr[i].ids, pr[i].n, &gp, NULL, NULL, b,
                                           NULL, &ps, NULL);
            if (rc) { fprintf(stderr, "ppd tree: generation failed: %s\n", eng_err_msg(rc)); break; }
            mismatch |= gs.n_gen != ps.gen.n_gen || memcmp(a, b, sizeof(int32_t) * (size_t)gs.n_gen) != 0;
            base_s += gs.decode_s, base_n += gs.n_gen - 1;
            ppd_s += ps.gen.decode_s, ppd_n += ps.gen.n_gen - 1, steps += ps.gen.steps;
        }
        const double bt = base_n / (base_s > 0 ? base_s : 1), pt = ppd_n / (ppd_s > 0 ? ppd_s : 1);
        printf("%-6ld %-6d %-10.3f %-10.3f %-10.1f %-10.1f %-8.3f%s\n", L, ppd.trees.max_T, info.tokens_per_step,
               steps ? (double)ppd_n / (double)steps : 0.0, bt, pt, pt / bt, mismatch ? "  OUTPUT DIFFERS" : "");
        fflush(stdout);
        eng_ppd_free(&ppd);
        eng_ppd_adapter_free(ad);
        if (mismatch) { eng_ppd_tree_family_free(fam); fprintf(stderr, "ppd tree: PPD output differs from plain decoding\n"); goto done; }
        if (pt / bt > best) {
            best = pt / bt;
            best_L = (int)L;
            if (out_path && eng_ppd_tree_family_save(fam, out_path, err, sizeof err)) {
                fprintf(stderr, "ppd tree: %s\n", err);
                eng_ppd_tree_family_free(fam);
                goto done;
            }
        }
        eng_ppd_tree_family_free(fam);
    }
    printf("best: L=%d, speed-up %.3f%s%s\n", best_L, best, out_path ? ", written to " : "", out_path ? out_path : "");
    status = set_adapter && best_L > 0 ? tune_set_adapter(adapter, best_L, best) : 0;
done:
    cli_prompts_free(pr, n_pr);
    free(a), free(b);
    eng_engine_close(e);
    return status;
}

int cmd_tree(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        tree_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1], *adapter = NULL, *out = NULL, *file = NULL, *model = PPD_DEFAULT_MODEL;
    const char *sizes = "2,4,6,8,12,16,24,32,48,64";
    int set_adapter = 0;
    long L = TREE_L_DEFAULT, skip = 0, count = 6, n_predict = 128, threads = flag_default_threads();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
#define VAL() do { if (!(v = flag_value(argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "-a") || !strcmp(a, "--adapter")) { VAL(); adapter = v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { VAL(); out = v; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { VAL(); file = v; }
        else if (!strcmp(a, "--sizes")) { VAL(); sizes = v; }
        else if (!strcmp(a, "--set-adapter")) set_adapter = 1;
        else if (!strcmp(a, "-L") || !strcmp(a, "--size")) { VAL(); if (flag_int(a, v, 1, 256, &L)) return 2; }
        else if (!strcmp(a, "--skip")) { VAL(); if (flag_int(a, v, 0, 100000000, &skip)) return 2; }
        else if (!strcmp(a, "--count")) { VAL(); if (flag_int(a, v, 1, 100000, &count)) return 2; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { VAL(); if (flag_int(a, v, 2, 100000, &n_predict)) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { VAL(); if (flag_int(a, v, 1, 1024, &threads)) return 2; }
        else { fprintf(stderr, "ppd tree: unknown flag '%s' (see --help)\n", a); return 2; }
#undef VAL
    }
    if (!adapter) { fprintf(stderr, "ppd tree: -a ADAPTER is required\n"); return 2; }
    if (!strcmp(sub, "build")) {
        if (!out) { fprintf(stderr, "ppd tree build: -o FILE is required\n"); return 2; }
        struct eng_ppd_tree_family *fam = NULL;
        struct eng_ppd_tree_build_info info;
        if (tree_from_adapter(adapter, (int)L, &fam, &info)) return 1;
        char err[512];
        int rc = eng_ppd_tree_family_save(fam, out, err, sizeof err);
        eng_ppd_tree_family_free(fam);
        if (rc) { fprintf(stderr, "ppd tree: %s\n", err); return 1; }
        printf("{\"tree\":\"%s\",\"L\":%ld,\"expected_accepted_per_step\":%.4f}\n", out, L, info.tokens_per_step);
        return 0;
    }
    if (!strcmp(sub, "tune")) {
        if (!file) { fprintf(stderr, "ppd tree tune: -f PROMPTS.jsonl is required\n"); return 2; }
        return cmd_tree_tune(model, adapter, file, skip, count, n_predict, sizes, (int)threads, out, set_adapter);
    }
    fprintf(stderr, "ppd tree: unknown subcommand '%s' (build, tune)\n", sub);
    return 2;
}
