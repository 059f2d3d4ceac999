/* calibrate.c — `ppd calibrate`: this device's step latency and the PPD
 * tree chosen for every number of decoding sequences (docs/calibration.md).
 *
 *   ppd calibrate [-m MODEL] [--ppd ADAPTER] [-np N] [-b ROWS] [-t N] [flags]
 *       measure (or load the cached table), print the latency table and the
 *       choice per batch size (the table `ppd serve` logs at start-up)
 *   --validate PROMPTS.jsonl   also decode the prompts with the batch-1 choice,
 *       its neighbouring budgets and plain decoding, alternating, and print
 *       predicted vs measured tokens/step and tokens/s
 *   --plot FILE.png            the latency curves with the chosen budgets marked (gnuplot)
 *
 * Not here: measuring and choosing (engine/calib/calibrate.c), the cache and the
 * fingerprint (engine/calib/calib_setup.c).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "prompts.h"
#include "server/settings.h"
#include "engine/calib/calib_setup.h"
#include "engine/err.h"
#include "engine/ppd/ppd_setup.h"
#include "engine/decode/generate.h"

struct calib_opts {
    /* as the flags give them */
    const char *model, *ppd, *cache, *validate, *plot, *device_name;
    long threads, n_slot, rows, ctx, prefix, L_max, count, n_predict, skip, force, no_cache, full;
    /* what they mean for the engine */
    int device;             /* enum eng_device */
    const char *adapter;    /* NULL: MODEL.ppd.gguf next to the model, else an untrained one */
};

#define STR_(x) #x
#define STR(x) STR_(x)
#define O(field) offsetof(struct calib_opts, field)
#define CALIB(...) FLAG_OWN(__VA_ARGS__)

static const struct flag_opt calib_flags[] = {
    {&setting_model, O(model)},
    {&setting_ppd, O(ppd)},
    {CALIB(.name = "parallel", .short_flag = "-np", .kind = FLAG_INT, .min = 1, .max = ENG_CALIB_MAX_SLOTS, .def = "4",
           .help = "sequences decoded at once: choices for 1..N"), O(n_slot)},
    {&setting_batch_size, O(rows)},
    {&setting_ctx_size, O(ctx)},
    {&setting_threads, O(threads)},
    /* the CPU by default, unlike the shared --device (server/settings.c) */
    {CALIB(.name = "device", .kind = FLAG_STR, .choices = "auto|cpu|cuda", .def = "cpu", .meta = "D",
           .help = "auto, cpu or cuda (auto: CUDA when a GPU is usable, else the CPU)"), O(device_name)},
    {CALIB(.name = "prefix", .kind = FLAG_INT, .min = 0, .max = 1 << 20, .def = STR(ENG_CALIB_PREFIX_DEFAULT),
           .help = "committed KV entries each measured row sees"), O(prefix)},
    {CALIB(.name = "max-L", .kind = FLAG_INT, .min = 1, .max = 4096, .def = STR(ENG_CALIB_BUDGET_MAX_DEFAULT),
           .help = "largest tree budget considered"), O(L_max)},
    {CALIB(.name = "cache", .kind = FLAG_STR, .meta = "DIR",
           .help = "where tables are cached (default $PPD_CALIB_CACHE, $XDG_CACHE_HOME/ppd, ~/.cache/ppd)"), O(cache)},
    {CALIB(.name = "no-cache", .kind = FLAG_BOOL, .help = "neither read nor write a cached table"), O(no_cache)},
    {CALIB(.name = "force", .kind = FLAG_BOOL, .help = "measure again even when a cached table matches"), O(force)},
    {CALIB(.name = "full", .kind = FLAG_BOOL,
           .help = "measure every row count (default: stop where no tree could beat plain decoding)"), O(full)},
    {CALIB(.name = "validate", .kind = FLAG_STR, .meta = "FILE",
           .help = "decode prompts (JSON lines with \"turns\") with the batch-1 choice and its neighbours: "
                   "predicted vs measured"), O(validate)},
    {CALIB(.name = "skip", .kind = FLAG_INT, .min = 0, .max = 1L << 30, .def = "0", .help = "--validate: prompts skipped"),
     O(skip)},
    {CALIB(.name = "count", .kind = FLAG_INT, .min = 1, .max = 100000, .def = "6", .help = "--validate: prompts decoded"),
     O(count)},
    {CALIB(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "128",
           .help = "--validate: tokens per prompt"), O(n_predict)},
    {CALIB(.name = "plot", .kind = FLAG_STR, .meta = "FILE.png",
           .help = "draw the latency curves with the chosen budgets (gnuplot)"), O(plot)},
};

static const struct flag_table calib_table = FLAG_TABLE("ppd calibrate", calib_flags);

static void calib_usage(FILE *fp) {
    fprintf(fp, "usage: ppd calibrate [flags]\n");
    flag_usage(fp, &calib_table);
}

static int calib_parse(int argc, char **argv, struct calib_opts *o) {
    memset(o, 0, sizeof *o);
    int rc = flag_defaults(&calib_table, o);
    if (!rc) rc = flag_parse(&calib_table, o, argc, argv, NULL);
    if (rc == 1) calib_usage(stdout);
    if (rc) return rc;
    if (!*o->ppd || !strcmp(o->ppd, "none")) {
        fprintf(stderr, "ppd calibrate: --ppd: give a file or auto (calibration measures PPD)\n");
        return 2;
    }
    if (o->n_slot > o->rows) {
        fprintf(stderr, "ppd calibrate: --parallel %ld is larger than --batch-size %ld\n", o->n_slot, o->rows);
        return 2;
    }
    o->adapter = strcmp(o->ppd, "auto") ? o->ppd : NULL;
    o->device = eng_device_parse(o->device_name);
    return 0;
}

static void calib_progress_bar(void *user, int done, int total) {
    (void)user;
    const int w = 40, k = total ? done * w / total : w;
    fprintf(stderr, "\rppd calibrate: measuring [%.*s%*s] %d/%d", k, "########################################", w - k, "",
            done, total);
    if (done == total) fputc('\n', stderr);
}

static void calib_print_table(const struct eng_calib_table *t) {
    printf("step latency, ms (b sequences of r rows each, prefix %d, medians; measured in %.1f s)\n", t->prefix,
           t->seconds);
    if (t->stop_ratio > 0)
        printf("(-: not measured; each batch size stopped after two row counts whose step cost over %.2f one-row\n"
               " steps: %.3f, the most tokens per step a tree of this adapter is predicted to emit, x %.2f)\n",
               t->stop_ratio, t->stop_ratio / ENG_CALIB_STOP_MARGIN, ENG_CALIB_STOP_MARGIN);
    printf("%6s", "r");
    for (int i = 0; i < t->n_b; i++) printf(" %9s%-3d", "b=", t->b[i]);
    printf("\n");
    for (int j = 0; j < t->n_r; j++) {
        printf("%6d", t->r[j]);
        for (int i = 0; i < t->n_b; i++) {
            if (t->ms[i][j] > 0) printf(" %12.2f", t->ms[i][j]);
            else printf(" %12s", "-");
        }
        printf("\n");
    }
}

static void calib_print_choice(const struct eng_calib_choice *c) {
    printf("\nchosen tree per number of decoding sequences (L 0: plain decoding)\n");
    printf("%-10s %-5s %-14s %-12s %-14s %-16s %-16s\n", "sequences", "L", "rows/seq/step", "max rows", "tokens/step",
           "pred. tokens/s", "plain tokens/s");
    for (int b = 1; b <= c->n_slot; b++) {
        const struct eng_calib_pick *p = &c->by_batch[b];
        printf("%-10d %-5d %-14.1f %-12d %-14.3f %-16.1f %-16.1f\n", b, p->L, p->rows, b * p->max_T,
               p->tokens_per_step, p->tokens_per_s, c->plain_tokens_per_s[b]);
    }
}

static int calib_plot(const struct calib_opts *o, const struct eng_calib_table *t, const struct eng_calib_choice *c) {
    /* gnuplot's input files live in the temporary directory, not beside the picture */
    char dat[4096], marks[4096];
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dat, sizeof dat, "%s/ppd-calibrate-%ld.dat", tmp, (long)getpid());
    snprintf(marks, sizeof marks, "%s/ppd-calibrate-%ld.marks", tmp, (long)getpid());
    FILE *d = fopen(dat, "w"), *m = fopen(marks, "w");
    if (!d || !m) {
        if (d) fclose(d);
        if (m) fclose(m);
        fprintf(stderr, "ppd calibrate: cannot write %s\n", dat);
        return 1;
    }
    for (int j = 0; j < t->n_r; j++) {
        fprintf(d, "%d", t->r[j]);
        for (int i = 0; i < t->n_b; i++) {
            if (t->ms[i][j] > 0) fprintf(d, " %.4f", t->ms[i][j]);
            else fprintf(d, " NaN");
        }
        fprintf(d, "\n");
    }
    for (int i = 0; i < t->n_b; i++) {
        const struct eng_calib_pick *p = &c->by_batch[t->b[i]];
        fprintf(m, "%.4f %.4f \"%d seq: L=%d\"\n", p->rows, p->step_ms, t->b[i], p->L);
    }
    fclose(d);
    fclose(m);
    FILE *g = popen("gnuplot", "w");
    if (!g) { fprintf(stderr, "ppd calibrate: cannot run gnuplot\n"); return 1; }
    fprintf(g, "set terminal pngcairo size 900,520 font \",11\" noenhanced\nset output \"%s\"\n", o->plot);
    fprintf(g, "set title \"PPD calibration: step latency vs rows per sequence (prefix %d)\"\n", t->prefix);
    fprintf(g, "set logscale xy\nset xlabel \"rows per sequence per step\"\nset ylabel \"step latency, ms\"\n"
               "set key top left\nset grid\n");
    fprintf(g, "plot ");
    for (int i = 0; i < t->n_b; i++)
        fprintf(g, "\"%s\" using 1:%d with linespoints title \"%d sequence%s\", ", dat, i + 2, t->b[i],
                t->b[i] > 1 ? "s" : "");
    /* the chosen point of each measured batch size, on its curve */
    fprintf(g, "\"%s\" using 1:2:3 with labels point pt 7 ps 1.5 lc rgb \"black\" offset 1.5,-0.8 left "
               "title \"chosen (L 0: plain)\"\n", marks);
    int rc = pclose(g);
    remove(dat);
    remove(marks);
    if (rc) { fprintf(stderr, "ppd calibrate: gnuplot failed (%d)\n", rc); return 1; }
    printf("\nplot: %s\n", o->plot);
    return 0;
}

/* Decode the prompts with each budget of `Ls` (0: plain) and plain decoding,
 * alternating per prompt; predicted vs measured. */
static int calib_validate(const struct calib_opts *o, struct eng_engine *e, const struct eng_ppd_adapter *ad,
                          const struct eng_calib_table *t, const struct eng_calib_choice *c) {
    struct cli_prompt *pr = NULL;
    int n_pr = 0, status = 1;
    int32_t *a = malloc(sizeof(int32_t) * (size_t)o->n_predict), *b = malloc(sizeof(int32_t) * (size_t)o->n_predict);
    double *acc = eng_ppd_accuracy(ad);
    if (!a || !b || !acc ||
        cli_prompts_load(e, "ppd calibrate", o->validate, o->skip, o->count, o->n_predict, &pr, &n_pr))
        goto done;
    int cand[64], Ls[8], nL = 0;
    const int n_cand = eng_calib_candidates(cand, 64, (int)o->L_max), L1 = c->by_batch[1].L;
    int at = -1;
    for (int k = 0; k < n_cand; k++)
        if (cand[k] == L1) at = k;
    Ls[nL++] = 0;
    for (int k = at - 2; k <= at + 2; k++)
        if (k >= 0 && k < n_cand && (at >= 0 || k >= 2)) Ls[nL++] = cand[k];
    if (at < 0) { nL = 1; for (int k = 0; k < 4 && k < n_cand; k++) Ls[nL++] = cand[k]; }
    struct eng_gen_params gp = {.n_predict = (int)o->n_predict, .ignore_eog = false, .prefill_chunk = 256};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = 0;
    printf("\nvalidation on %d prompts of %s (1 sequence, greedy, -n %ld)\n", n_pr, o->validate, o->n_predict);
    printf("%-5s %-6s %-16s %-16s %-16s %-16s %-8s\n", "L", "rows", "pred. tok/step", "meas. tok/step",
           "pred. tok/s", "meas. tok/s", "chosen");
    double plain_tps = 0;
    for (int k = 0; k < nL; k++) {
        struct eng_calib_pick pick;
        if (eng_calib_predict(&pick, t, acc, eng_ppd_accuracy_joint(ad, acc), ad->n_prompt, ad->topk, Ls[k], 1)) goto done;
        struct eng_ppd ppd = {0};
        struct eng_ppd_tree_family *fam = NULL;
        char err[512];
        if (Ls[k] > 0 && (eng_ppd_tree_build_joint(&fam, acc, eng_ppd_accuracy_joint(ad, acc), ad->n_prompt, ad->topk, Ls[k], NULL) ||
                          eng_ppd_init(&ppd, ad, fam, err, sizeof err))) {
            fprintf(stderr, "ppd calibrate: tree L=%d: cannot build\n", Ls[k]);
            eng_ppd_tree_family_free(fam);
            goto done;
        }
        eng_ppd_tree_family_free(fam);
        double base_s = 0, ppd_s = 0;
        long base_n = 0, ppd_n = 0, steps = 0;
        int rc = 0, mismatch = 0;
        for (int i = 0; i < n_pr && !rc; i++) {
            struct eng_gen_stats gs;
            struct eng_ppd_gen_stats ps;
            rc = eng_generate(&e->fwd, &e->kv, 0, e->tok, pr[i].ids, pr[i].n, &gp, NULL, NULL, a, &gs);
            base_s += gs.decode_s, base_n += gs.n_gen - 1;
            if (rc || Ls[k] == 0) continue;
            rc = eng_ppd_generate(&e->fwd, &e->kv, 0, e->tok, &ppd, pr[i].ids, pr[i].n, &gp, NULL, NULL, b, NULL, &ps,
                                  NULL);
            mismatch |= gs.n_gen != ps.gen.n_gen || memcmp(a, b, sizeof(int32_t) * (size_t)gs.n_gen) != 0;
            ppd_s += ps.gen.decode_s, ppd_n += ps.gen.n_gen - 1, steps += ps.gen.steps;
        }
        eng_ppd_free(&ppd);
        if (rc) { fprintf(stderr, "ppd calibrate: generation failed: %s\n", eng_err_msg(rc)); goto done; }
        if (mismatch) { fprintf(stderr, "ppd calibrate: PPD output differs from plain decoding (L=%d)\n", Ls[k]); goto done; }
        const double bt = base_n / (base_s > 0 ? base_s : 1);
        if (Ls[k] == 0) plain_tps = bt;
        /* measured PPD speed scaled by this budget's own plain run, so the
         * rows compare even when the machine's speed drifts between them */
        const double meas_tps = Ls[k] == 0 ? bt : (ppd_n / (ppd_s > 0 ? ppd_s : 1)) * (plain_tps > 0 ? plain_tps / bt : 1);
        const double meas_tpstep = Ls[k] == 0 ? 1.0 : steps ? (double)ppd_n / (double)steps : 0;
        printf("%-5d %-6.1f %-16.3f %-16.3f %-16.1f %-16.1f %-8s\n", Ls[k], pick.rows, pick.tokens_per_step,
               meas_tpstep, pick.tokens_per_s, meas_tps, Ls[k] == L1 ? "<- yes" : "");
        fflush(stdout);
    }
    status = 0;
done:
    cli_prompts_free(pr, n_pr);
    free(a), free(b), free(acc);
    return status;
}

int cmd_calibrate(int argc, char **argv) {
    struct calib_opts o;
    int rc = calib_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    char err[768], path[4096];
    struct eng_engine_params ep = {.model_path = o.model, .device = o.device, .n_threads = (int)o.threads, .n_ctx = (int)o.ctx,
                                   .n_slot = (int)o.n_slot, .max_rows = (int)o.rows};
    struct eng_engine *e = NULL;
    if (eng_engine_open(&e, &ep, err, sizeof err)) { fprintf(stderr, "ppd calibrate: %s\n", err); return 1; }
    struct eng_ppd_setup cp;
    struct eng_ppd_setup_opts po = {.model_path = o.model, .adapter = o.adapter, .untrained = true, .max_rows = -1};
    int status = 1;
    if (eng_ppd_setup_open(&cp, &po, e, err, sizeof err)) {
        fprintf(stderr, "ppd: %s\n", err);
        eng_ppd_setup_close(&cp);
        eng_engine_close(e);
        return 1;
    }
    struct eng_calib_table t;
    struct eng_calib_choice *c = calloc(1, sizeof *c);
    double *acc = eng_ppd_accuracy(cp.ad);
    if (!c || !acc) goto done;
    struct eng_calib_setup_opts so = {.model_path = o.model, .adapter_path = cp.src == ENG_PPD_FILE ? cp.path : NULL,
                                  .cache_dir = o.no_cache ? "" : o.cache, .n_threads = (int)o.threads,
                                  .n_slot = (int)o.n_slot, .prefix = (int)o.prefix, .force = o.force,
                                  .progress = calib_progress_bar, .ad = cp.ad, .stop_budget_max = o.full ? 0 : (int)o.L_max};
    bool cached = false;
    if ((rc = eng_calib_setup_table(&t, e, &so, &cached, path, sizeof path))) {
        fprintf(stderr, "ppd calibrate: measuring failed: %s\n", eng_err_msg(rc));
        goto done;
    }
    printf("device %s, %ld threads, model %s, adapter %s (N=%d, K=%d)\n", e->be.iface->name, o.threads, o.model,
           cp.src == ENG_PPD_FILE ? cp.path : "untrained", cp.ad->n_prompt, cp.ad->topk);
    printf("table %s%s\n\n", path[0] ? path : "(not cached)", cached ? " (cached: not measured again)" : "");
    calib_print_table(&t);
    if ((rc = eng_calib_choose(c, &t, acc, eng_ppd_accuracy_joint(cp.ad, acc), cp.ad->n_prompt, cp.ad->topk, (int)o.n_slot, (int)o.L_max))) {
        fprintf(stderr, "ppd calibrate: no choice fits: %s\n", eng_err_msg(rc));
        goto done;
    }
    calib_print_choice(c);
    if (o.plot && calib_plot(&o, &t, c)) goto done;
    if (o.validate && calib_validate(&o, e, cp.ad, &t, c)) goto done;
    status = 0;
done:
    free(acc);
    free(c);
    eng_ppd_setup_close(&cp);
    eng_engine_close(e);
    return status;
}
