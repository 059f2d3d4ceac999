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
 * The model, threads and verbose flags are the settings every program shares
 * (server/settings.h).
 * Not here: the builder (engine/ppd/ppd_tree_build.c), online re-tuning under load.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "prompts.h"
#include "server/settings.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_setup.h"
#include "engine/ppd/ppd_tree.h"

#define TREE_L_MAX 256

/* One table for both subcommands: build reads -a, -L and -o; tune the rest. */
struct tree_opts {
    const char *adapter, *model, *file, *sizes, *output;
    long L, skip, count, n_predict, threads, set_adapter, verbose;
};

#define STR_(x) #x
#define STR(x) STR_(x)
#define O(field) offsetof(struct tree_opts, field)
#define TREE(...) FLAG_OWN(__VA_ARGS__)

static const struct flag_opt tree_flags[] = {
    {TREE(.name = "adapter", .short_flag = "-a", .kind = FLAG_STR, .meta = "FILE",
          .help = "PPD adapter with a measured accuracy table (ppd train)"), O(adapter)},
    {&setting_model, O(model)},
    {TREE(.name = "size", .short_flag = "-L", .kind = FLAG_INT, .min = 1, .max = TREE_L_MAX, .def = "20", .meta = "L",
          .help = "build: tree budget"), O(L)},
    {TREE(.name = "file", .short_flag = "-f", .kind = FLAG_STR, .meta = "FILE",
          .help = "tune: prompts, JSON lines with \"turns\" (use training prompts)"), O(file)},
    {TREE(.name = "skip", .kind = FLAG_INT, .min = 0, .max = 100000000, .def = "0",
          .help = "tune: skip the first N lines of the file"), O(skip)},
    {TREE(.name = "count", .kind = FLAG_INT, .min = 1, .max = 100000, .def = "6", .help = "tune: prompts"), O(count)},
    {TREE(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = 2, .max = 100000, .def = "128",
          .help = "tune: tokens per prompt"), O(n_predict)},
    {TREE(.name = "sizes", .kind = FLAG_STR, .def = "2,4,6,8,12,16,24,32,48,64", .meta = "LIST",
          .help = "tune: budgets to try, comma-separated, each in [1.." STR(TREE_L_MAX) "]"), O(sizes)},
    {&setting_threads, O(threads)},
    {TREE(.name = "output", .short_flag = "-o", .kind = FLAG_STR, .meta = "FILE",
          .help = "tree family to write (JSON); tune: the best budget's"), O(output)},
    {TREE(.name = "set-adapter", .kind = FLAG_BOOL,
          .help = "tune: record the chosen budget in the adapter (ppd.tree_L): the default tree of generate, "
                  "bench and serve is then built with it"), O(set_adapter)},
    {&setting_verbose, O(verbose)},
};

static const struct flag_table tree_table = FLAG_TABLE("ppd tree", tree_flags);

static void tree_usage(FILE *fp) {
    fprintf(fp, "usage: ppd tree build -a ADAPTER [-L BUDGET] -o FILE\n"
                "       ppd tree tune -a ADAPTER -f PROMPTS.jsonl [flags]\n");
    flag_usage(fp, &tree_table);
}

/* Every budget of "4,8,..." in [1, TREE_L_MAX]: the first bad one is a
 * usage error before any model is opened. */
static int tree_sizes_ok(const char *sizes) {
    const char *s = sizes;
    do {
        char *end;
        long L = strtol(s, &end, 10);
        if (end == s || L < 1 || L > TREE_L_MAX || (*end && *end != ',')) {
            fprintf(stderr, "ppd tree: --sizes: bad budget at '%s' (comma-separated, each in [1, %d])\n", s,
                    TREE_L_MAX);
            return 0;
        }
        s = *end == ',' ? end + 1 : end;
    } while (*s);
    return 1;
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
    const char *sub = argv[1];
    if (strcmp(sub, "build") && strcmp(sub, "tune")) {
        fprintf(stderr, "ppd tree: unknown subcommand '%s' (build, tune)\n", sub);
        return 2;
    }
    struct tree_opts o;
    memset(&o, 0, sizeof o);
    int rc = flag_defaults(&tree_table, &o);
    if (!rc) rc = flag_parse(&tree_table, &o, argc - 1, argv + 1, NULL);
    if (rc == 1) tree_usage(stdout);
    if (rc) return rc == 1 ? 0 : rc;
    if (o.verbose) eng_log_set_level(ENG_LOG_DEBUG);
    if (!o.adapter) { fprintf(stderr, "ppd tree: -a ADAPTER is required\n"); return 2; }
    if (!strcmp(sub, "build")) {
        if (!o.output) { fprintf(stderr, "ppd tree build: -o FILE is required\n"); return 2; }
        struct eng_ppd_tree_family *fam = NULL;
        struct eng_ppd_tree_build_info info;
        if (tree_from_adapter(o.adapter, (int)o.L, &fam, &info)) return 1;
        char err[512];
        rc = eng_ppd_tree_family_save(fam, o.output, err, sizeof err);
        eng_ppd_tree_family_free(fam);
        if (rc) { fprintf(stderr, "ppd tree: %s\n", err); return 1; }
        printf("{\"tree\":\"%s\",\"L\":%ld,\"expected_accepted_per_step\":%.4f}\n", o.output, o.L, info.tokens_per_step);
        return 0;
    }
    if (!o.file) { fprintf(stderr, "ppd tree tune: -f PROMPTS.jsonl is required\n"); return 2; }
    if (!tree_sizes_ok(o.sizes)) return 2;
    return cmd_tree_tune(o.model, o.adapter, o.file, o.skip, o.count, o.n_predict, o.sizes, (int)o.threads, o.output,
                         (int)o.set_adapter);
}
