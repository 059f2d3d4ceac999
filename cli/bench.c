/* bench.c — `ppd bench`: plain decoding against PPD on prompt sets, in one
 * run; and the cost of one forward pass as the number of rows grows.
 *
 *   ppd bench -f PROMPTS.jsonl [-f MORE.jsonl ...] [--count N] [-n 128]
 *             [--ppd ADAPTER] [--tree FILE] [--no-ppd] [--temp T --seed S] ...
 *       each prompt's first turn through the chat template, generated alone
 *       (batch 1) twice: plain decoding (eng_generate) and PPD
 *       (eng_ppd_generate), the two runs of a prompt back to back and their
 *       order alternating from prompt to prompt, so machine noise falls on
 *       both alike.  Per file: accepted tokens per step (root included, the
 *       paper's measure) and their histogram, decode tokens/s of both, the
 *       speed-up, and the PPD step overhead (the share of decode time spent
 *       outside eng_forward_run).  PPD must reproduce plain decoding token for
 *       token (greedy, or sampling with the same seed): any prompt where it
 *       does not is counted, named on stderr, and makes the exit status 1.
 *   ppd bench --rows 1,8,16,64 [--prefix 256] [--repeat 15]
 *       one forward pass of R rows that all see a committed prefix (the shape
 *       of a PPD tree step), median over repeats; reports ms and the ratio to
 *       one row (JSON lines).
 * A table goes to stdout, or with --json one JSON object per prompt file;
 * progress goes to stderr.  The adapter and the tree are chosen as
 * `ppd generate --ppd` chooses them (cli/ppd_open.c), except that with no
 * adapter file an untrained text-initialised one is made in memory.
 *
 * Not here: batching several prompts at once (the server's scheduler), and
 * typical acceptance (not lossless, so the token check would not hold).
 */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ppd_open.h"
#include "prompts.h"
#include "server/settings.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/ppd/ppd.h"
#include "engine/calib/stats.h"

#define BENCH_DEFAULT_PROMPTS "../shared/data/eval-mt_bench.jsonl"

struct bench_opts {
    /* as the flags give them */
    const char *model, *rows, *device_name;
    const char *ppd, *tree;                 /* "auto", "none" (ppd) or a file */
    struct flag_list files;
    long ignore_eos, json, no_ppd, count, n_predict, threads, prefix, repeat, tree_budget, top_k, seed;
    double temp, top_p, min_p;
    /* what they mean for the engine */
    int device;                             /* enum eng_device */
    const char *adapter, *tree_file;        /* NULL: the model's committed adapter (else one made in memory); the built tree */
    struct eng_sampler_params sp;
};

#define O(field) offsetof(struct bench_opts, field)
#define BENCH(...) FLAG_OWN(__VA_ARGS__)

static const struct flag_opt bench_flags[] = {
    {&setting_model, O(model)},
    {BENCH(.name = "file", .short_flag = "-f", .kind = FLAG_LIST, .meta = "FILE",
           .help = "prompt set, JSON lines with \"turns\"; repeat for several (default " BENCH_DEFAULT_PROMPTS ")"),
     O(files)},
    {BENCH(.name = "count", .kind = FLAG_INT, .min = 1, .max = 1000000, .def = "10",
           .help = "first N prompts of each file"), O(count)},
    {BENCH(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "128",
           .help = "tokens per prompt"), O(n_predict)},
    {&setting_ignore_eos, O(ignore_eos)},
    {&setting_ppd, O(ppd)},
    {&setting_tree, O(tree)},
    {&setting_tree_budget, O(tree_budget)},
    {&setting_no_ppd, O(no_ppd)},
    {&setting_temp, O(temp)},
    {&setting_top_k, O(top_k)},
    {&setting_top_p, O(top_p)},
    {&setting_min_p, O(min_p)},
    {&setting_seed, O(seed)},
    {&setting_threads, O(threads)},
    {&setting_device, O(device_name)},
    {BENCH(.name = "json", .kind = FLAG_BOOL, .help = "one JSON object per prompt file instead of the table"), O(json)},
    {BENCH(.name = "rows", .kind = FLAG_STR, .meta = "LIST",
           .help = "instead: forward-pass cost for these row counts, e.g. 1,8,16,64"), O(rows)},
    {BENCH(.name = "prefix", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "256",
           .help = "committed KV entries the rows see"), O(prefix)},
    {BENCH(.name = "repeat", .kind = FLAG_INT, .min = 1, .max = 100000, .def = "15",
           .help = "passes per row count (the median is reported)"), O(repeat)},
};

static const struct flag_table bench_table = FLAG_TABLE("ppd bench", bench_flags);

/* One prompt file's sums over its prompts. */
struct bench_acc {
    int prompts, mismatches;
    long base_gen, ppd_gen;           /* tokens generated */
    long base_dec_tok, ppd_dec_tok;   /* tokens after the first (the decode phase) */
    double base_dec_s, ppd_dec_s;
    double fwd_s, build_s, verify_s;  /* PPD decode time inside the forward pass, building, verifying */
    long steps;
    long hist[ENG_PPD_MAX_PROMPT + 2];
    double *pre_tps, *dec_tps;        /* [count] plain, per prompt (medians, as before PPD) */
};

static void bench_usage(FILE *fp) {
    fprintf(fp, "usage: ppd bench [flags]\n");
    flag_usage(fp, &bench_table);
    fprintf(fp, "With --ppd auto and no adapter next to the model, an untrained text-initialised one is made in memory;\n"
                "both runs of a prompt use the same --seed.\n"
                "Exit status 1 when PPD's tokens differ from plain decoding's on any prompt.\n");
}

static int bench_rows(struct eng_engine *e, const char *list, int prefix, int repeat) {
    struct eng_kv *kv = &e->kv;
    struct eng_forward *f = &e->fwd;
    if (prefix + 256 > kv->max_seq) {
        fprintf(stderr, "ppd bench: --prefix %d leaves no room in a context of %d\n", prefix, kv->max_seq);
        return 1;
    }
    /* Fill the prefix once with a causal prefill of arbitrary tokens. */
    struct eng_batch b;
    if (eng_batch_init(&b, f->max_rows, f->max_rows)) return 1;
    int32_t *ids = malloc(sizeof *ids * (size_t)(prefix > f->max_rows ? prefix : f->max_rows));
    double *t = malloc(sizeof *t * (size_t)repeat);
    int status = 1;
    if (!ids || !t) goto done;
    for (int i = 0; i < prefix || i < f->max_rows; i++) ids[i] = (int32_t)(1000 + (i * 7919) % 40000);
    kv->len[0] = 0;
    for (int i = 0; i < prefix; i += f->max_rows) {
        int n = prefix - i < f->max_rows ? prefix - i : f->max_rows;
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, 0, i, ids + i, n, true);
        if (eng_forward_run(f, &b, kv, NULL, 0)) { fprintf(stderr, "ppd bench: prefill failed\n"); goto done; }
    }
    kv->len[0] = prefix;
    double t1 = 0;
    const char *p = list;
    while (*p) {
        char *end;
        long rows = strtol(p, &end, 10);
        if (end == p || rows < 1 || rows > f->max_rows) {
            fprintf(stderr, "ppd bench: --rows: bad row count at '%s' (1..%d)\n", p, f->max_rows);
            status = 2;
            goto done;
        }
        p = *end == ',' ? end + 1 : end;
        /* A tree-shaped step: all rows see the prefix and themselves, logits for all. */
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, 0, prefix, ids, (int)rows, false);
        for (int r = 0; r < rows; r++) b.want_logits[r] = true;
        eng_forward_run(f, &b, kv, NULL, 0);  /* warm-up */
        for (int k = 0; k < repeat; k++) {
            double t0 = eng_now_s();
            eng_forward_run(f, &b, kv, NULL, 0);
            t[k] = eng_now_s() - t0;
        }
        double med = eng_median(t, repeat);
        if (rows == 1 || t1 == 0) t1 = med;
        printf("{\"bench\":\"rows\",\"rows\":%ld,\"prefix\":%d,\"step_ms\":%.3f,\"ratio_to_first\":%.3f,"
               "\"weight_bytes\":%zu}\n", rows, prefix, med * 1e3, med / t1, e->model->weight_bytes);
        fflush(stdout);
    }
    status = 0;
done:
    free(t);
    free(ids);
    eng_batch_free(&b);
    return status;
}

static int bench_parse(int argc, char **argv, struct bench_opts *o) {
    memset(o, 0, sizeof *o);
    int rc = flag_defaults(&bench_table, o);
    if (!rc) rc = flag_parse(&bench_table, o, argc, argv, NULL);
    if (rc == 1) bench_usage(stdout);
    if (rc) return rc;
    if (!*o->ppd || !*o->tree) {
        fprintf(stderr, "ppd bench: --%s: give a file, auto or none\n", !*o->ppd ? "ppd" : "tree");
        return 2;
    }
    const int ppd_named = strcmp(o->ppd, "auto") && strcmp(o->ppd, "none"), tree_named = strcmp(o->tree, "auto");
    if (o->no_ppd && (ppd_named || tree_named)) {
        fprintf(stderr, "ppd bench: --no-ppd cannot be combined with --ppd or --tree\n");
        return 2;
    }
    if (!strcmp(o->ppd, "none")) o->no_ppd = 1;
    o->adapter = ppd_named ? o->ppd : NULL;
    o->tree_file = tree_named ? o->tree : NULL;
    o->device = eng_device_parse(o->device_name);
    o->sp = (struct eng_sampler_params){.temperature = (float)o->temp, .top_k = (int)o->top_k, .top_p = (float)o->top_p,
                                        .min_p = (float)o->min_p, .seed = (uint64_t)o->seed};
    if (!o->files.n) o->files.v[o->files.n++] = BENCH_DEFAULT_PROMPTS;
    return 0;
}

static const char *bench_basename(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Plain decoding and (unless --no-ppd) PPD on one prompt, in the order given;
 * adds to a.  Returns 0 or an ENG_E_* code. */
static int bench_prompt(struct eng_engine *e, const struct eng_ppd_setup *cp, const struct bench_opts *o, const int32_t *ids,
                        int n_ids, int ppd_first, int32_t *out_base, int32_t *out_ppd, struct bench_acc *a,
                        const char *file, int line) {
    struct eng_gen_params gp = {.n_predict = (int)o->n_predict, .ignore_eog = o->ignore_eos, .sp = o->sp};
    struct eng_gen_stats st = {0};
    struct eng_ppd_gen_stats pst = {0};
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        if ((k == 0) == !!ppd_first)
            rc = o->no_ppd ? 0
                           : eng_ppd_generate(&e->fwd, &e->kv, 0, e->tok, &cp->ppd, ids, n_ids, &gp, NULL, NULL,
                                              out_ppd, NULL, &pst, NULL);
        else
            rc = eng_generate(&e->fwd, &e->kv, 0, e->tok, ids, n_ids, &gp, NULL, NULL, out_base, &st);
    }
    if (rc) return rc;
    const int i = a->prompts++;
    a->pre_tps[i] = st.prefill_s > 0 ? st.n_prompt / st.prefill_s : 0;
    a->dec_tps[i] = st.n_gen > 1 && st.decode_s > 0 ? (st.n_gen - 1) / st.decode_s : 0;
    a->base_gen += st.n_gen;
    a->base_dec_tok += st.n_gen > 1 ? st.n_gen - 1 : 0;
    a->base_dec_s += st.decode_s;
    if (o->no_ppd) return 0;
    a->ppd_gen += pst.gen.n_gen;
    a->ppd_dec_tok += pst.gen.n_gen > 1 ? pst.gen.n_gen - 1 : 0;
    a->ppd_dec_s += pst.gen.decode_s;
    a->fwd_s += pst.forward_s;
    a->build_s += pst.build_s;
    a->verify_s += pst.verify_s;
    a->steps += pst.gen.steps;
    for (int h = 0; h < ENG_PPD_MAX_PROMPT + 2; h++) a->hist[h] += pst.hist[h];
    int n = st.n_gen < pst.gen.n_gen ? st.n_gen : pst.gen.n_gen, j = 0;
    while (j < n && out_base[j] == out_ppd[j]) j++;
    if (j < n || st.n_gen != pst.gen.n_gen) {
        a->mismatches++;
        fprintf(stderr, "\nppd bench: %s line %d: PPD differs from plain decoding at token %d (plain %d tokens, PPD %d)\n",
                file, line, j, st.n_gen, pst.gen.n_gen);
    }
    return 0;
}

static double ratio(double x, double y) { return y > 0 ? x / y : 0; }

static int bench_hist_top(const struct bench_acc *a) {
    int top = ENG_PPD_MAX_PROMPT + 1;
    while (top > 1 && !a->hist[top]) top--;
    return top;
}

static void bench_report_json(const struct bench_opts *o, const struct eng_ppd_setup *cp, const char *file,
                              struct bench_acc *a) {
    json_t *j = json_object();
    json_object_set_new(j, "bench", json_string("prompts"));
    json_object_set_new(j, "engine", json_string("ppd"));
    json_object_set_new(j, "mode", json_string(o->no_ppd ? "no-ppd" : "ppd"));
    json_object_set_new(j, "file", json_string(file));
    json_object_set_new(j, "threads", json_integer(o->threads));
    json_object_set_new(j, "prompts", json_integer(a->prompts));
    json_object_set_new(j, "n_predict", json_integer(o->n_predict));
    json_object_set_new(j, "temperature", json_real(o->sp.temperature));
    json_object_set_new(j, "seed", json_integer((json_int_t)o->sp.seed));
    json_object_set_new(j, "generated", json_integer(a->base_gen));
    /* plain decoding, medians over prompts (the figures of the baseline-only bench) */
    json_object_set_new(j, "prefill_tokens_per_s", json_real(eng_median(a->pre_tps, a->prompts)));
    json_object_set_new(j, "decode_tokens_per_s", json_real(eng_median(a->dec_tps, a->prompts)));
    if (!o->no_ppd) {
        double base_tps = ratio((double)a->base_dec_tok, a->base_dec_s), ppd_tps = ratio((double)a->ppd_dec_tok, a->ppd_dec_s);
        long acc = 0;
        json_t *hist = json_array(), *rows = json_array();
        for (int h = 0; h <= bench_hist_top(a); h++) {
            json_array_append_new(hist, json_integer(a->hist[h]));
            acc += h * a->hist[h];
        }
        for (int d = 1; d <= cp->ppd.n_prompt; d++) json_array_append_new(rows, json_integer(cp->ppd.trees.st[d].T));
        json_object_set_new(j, "adapter",
                            json_string(cp->src == ENG_PPD_TEXT_INIT ? "text-init (untrained)" : cp->path));
        json_object_set_new(j, "adapter_provenance", json_string(cp->ad->provenance));
        json_object_set_new(j, "tree", o->tree_file ? json_string(o->tree_file) : json_null());
        json_object_set_new(j, "tree_L", o->tree_file ? json_null() : json_integer(cp->tree_budget));
        json_object_set_new(j, "tree_rows", rows);
        json_object_set_new(j, "ppd_generated", json_integer(a->ppd_gen));
        json_object_set_new(j, "mismatches", json_integer(a->mismatches));
        json_object_set_new(j, "steps", json_integer(a->steps));
        json_object_set_new(j, "mean_accepted_per_step", json_real(ratio((double)acc, (double)a->steps)));
        json_object_set_new(j, "accepted_hist", hist);
        /* decode speeds as total tokens over total time, so the ratio is the time saved */
        json_object_set_new(j, "baseline_decode_tokens_per_s", json_real(base_tps));
        json_object_set_new(j, "ppd_decode_tokens_per_s", json_real(ppd_tps));
        json_object_set_new(j, "speedup", json_real(ratio(ppd_tps, base_tps)));
        json_object_set_new(j, "baseline_decode_s", json_real(a->base_dec_s));
        json_object_set_new(j, "ppd_decode_s", json_real(a->ppd_dec_s));
        json_object_set_new(j, "forward_s", json_real(a->fwd_s));
        json_object_set_new(j, "build_s", json_real(a->build_s));
        json_object_set_new(j, "verify_s", json_real(a->verify_s));
        json_object_set_new(j, "step_overhead", json_real(ratio(a->ppd_dec_s - a->fwd_s, a->ppd_dec_s)));
        json_object_set_new(j, "step_ms", json_real(1e3 * ratio(a->ppd_dec_s, (double)a->steps)));
        json_object_set_new(j, "overhead_us_per_step", json_real(1e6 * ratio(a->ppd_dec_s - a->fwd_s, (double)a->steps)));
    }
    char *txt = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (txt) { puts(txt); free(txt); }
    json_decref(j);
    fflush(stdout);
}

static void bench_report_header(const struct bench_opts *o, const struct eng_ppd_setup *cp) {
    char mode[96];
    if (o->sp.temperature > 0)
        snprintf(mode, sizeof mode, "sampling T=%g seed %llu", o->sp.temperature, (unsigned long long)o->sp.seed);
    else
        snprintf(mode, sizeof mode, "greedy");
    printf("ppd bench: %s, -n %ld%s, %ld threads\n", mode, o->n_predict, o->ignore_eos ? " --ignore-eos" : "", o->threads);
    if (o->no_ppd) {
        printf("%-28s %7s %7s %13s %13s\n", "file", "prompts", "tokens", "prefill tok/s", "decode tok/s");
        return;
    }
    printf("adapter: %s (%s)\n", cp->src == ENG_PPD_TEXT_INIT ? "text-init (untrained)" : cp->path, cp->ad->provenance);
    if (o->tree_file) printf("tree: %s, rows per step by state:", o->tree_file);
    else printf("tree: built with L=%d, rows per step by state:", cp->tree_budget);
    for (int d = 1; d <= cp->ppd.n_prompt; d++) printf(" %d", cp->ppd.trees.st[d].T);
    printf("\n%-28s %7s %7s %8s %11s %9s %8s %9s %10s\n", "file", "prompts", "tokens", "acc/step", "plain tok/s",
           "PPD tok/s", "speed-up", "overhead", "mismatches");
}

static void bench_report_row(const struct bench_opts *o, const char *file, struct bench_acc *a) {
    const char *name = bench_basename(file);
    if (o->no_ppd) {
        printf("%-28s %7d %7ld %13.1f %13.1f\n", name, a->prompts, a->base_gen, eng_median(a->pre_tps, a->prompts),
               eng_median(a->dec_tps, a->prompts));
        fflush(stdout);
        return;
    }
    double base_tps = ratio((double)a->base_dec_tok, a->base_dec_s), ppd_tps = ratio((double)a->ppd_dec_tok, a->ppd_dec_s);
    long acc = 0;
    for (int h = 0; h <= bench_hist_top(a); h++) acc += h * a->hist[h];
    printf("%-28s %7d %7ld %8.3f %11.1f %9.1f %7.2fx %8.2f%% %10d\n", name, a->prompts, a->ppd_gen,
           ratio((double)acc, (double)a->steps), base_tps, ppd_tps, ratio(ppd_tps, base_tps),
           100 * ratio(a->ppd_dec_s - a->fwd_s, a->ppd_dec_s), a->mismatches);
    printf("  accepted per step (steps):");
    for (int h = 1; h <= bench_hist_top(a); h++) printf(" %d: %ld", h, a->hist[h]);
    printf("\n  PPD step %.2f ms: forward %.2f, rows %.3f, verify %.3f, rest %.3f\n",
           1e3 * ratio(a->ppd_dec_s, (double)a->steps), 1e3 * ratio(a->fwd_s, (double)a->steps),
           1e3 * ratio(a->build_s, (double)a->steps), 1e3 * ratio(a->verify_s, (double)a->steps),
           1e3 * ratio(a->ppd_dec_s - a->fwd_s - a->build_s - a->verify_s, (double)a->steps));
    fflush(stdout);
}

/* One prompt file: returns 0, or 1 after printing why. */
static int bench_file(struct eng_engine *e, const struct eng_ppd_setup *cp, const struct bench_opts *o, const char *file,
                      struct bench_acc *a) {
    struct cli_prompt *p = NULL;
    int n = 0, status = 1;
    int32_t *out_base = malloc(sizeof *out_base * (size_t)o->n_predict);
    int32_t *out_ppd = malloc(sizeof *out_ppd * (size_t)o->n_predict);
    if (!out_base || !out_ppd || cli_prompts_load(e, "ppd bench", file, 0, o->count, o->n_predict, &p, &n)) goto done;
    for (int i = 0; i < n; i++) {
        int rc = bench_prompt(e, cp, o, p[i].ids, p[i].n, a->prompts % 2, out_base, out_ppd, a, file, p[i].line);
        if (rc) { fprintf(stderr, "ppd bench: %s line %d: %s\n", file, p[i].line, eng_err_msg(rc)); goto done; }
        fprintf(stderr, "\rppd bench: %s: %d/%d prompts   ", bench_basename(file), a->prompts, n);
    }
    fprintf(stderr, "\n");
    status = 0;
done:
    cli_prompts_free(p, n);
    free(out_base);
    free(out_ppd);
    return status;
}

int cmd_bench(int argc, char **argv) {
    struct bench_opts o;
    int rc = bench_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    struct eng_engine_params ep = {.model_path = o.model, .device = o.device, .n_threads = (int)o.threads, .n_slot = 1, .max_rows = 256,
                                   .n_ctx = o.rows ? (int)o.prefix + 512 : 0};
    char err[512];
    struct eng_engine *e = NULL;
    if (eng_engine_open(&e, &ep, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); return 1; }
    if (o.rows) {
        int status = bench_rows(e, o.rows, (int)o.prefix, (int)o.repeat);
        eng_engine_close(e);
        return status;
    }
    struct eng_ppd_setup cp = {0};
    struct eng_ppd_setup_opts po = {.model_path = o.model, .adapter = o.adapter, .tree_file = o.tree_file, .tree_budget = (int)o.tree_budget,
                              .untrained = true};
    struct bench_acc a = {0};
    int status = 1, mismatches = 0;
    if (!o.no_ppd && cli_ppd_open(&cp, &po, e, (int)o.threads, true, "ppd bench")) goto done;
    a.pre_tps = calloc((size_t)o.count, sizeof *a.pre_tps);
    a.dec_tps = calloc((size_t)o.count, sizeof *a.dec_tps);
    if (!a.pre_tps || !a.dec_tps) goto done;
    if (!o.json) bench_report_header(&o, &cp);
    for (int i = 0; i < o.files.n; i++) {
        struct bench_acc fresh = {.pre_tps = a.pre_tps, .dec_tps = a.dec_tps};
        a = fresh;
        if (bench_file(e, &cp, &o, o.files.v[i], &a)) goto done;
        if (o.json) bench_report_json(&o, &cp, o.files.v[i], &a);
        else bench_report_row(&o, o.files.v[i], &a);
        mismatches += a.mismatches;
    }
    if (mismatches) fprintf(stderr, "ppd bench: %d prompts where PPD's tokens differ from plain decoding's\n", mismatches);
    status = mismatches ? 1 : 0;
done:
    free(a.pre_tps);
    free(a.dec_tps);
    eng_ppd_setup_close(&cp);
    eng_engine_close(e);
    return status;
}
