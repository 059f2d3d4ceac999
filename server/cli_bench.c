/* cli_bench.c — `ppd bench`: speed on a prompt set, and the cost of one
 * forward pass as the number of rows grows.
 *
 *   ppd bench [-f PROMPTS.jsonl] [--count N] [-n 128] [--ignore-eos] [--no-ppd]
 *       each prompt's first turn through the chat template, generated alone
 *       (batch 1); per-prompt prefill and decode tokens/s, then medians.
 *   ppd bench --rows 1,8,16,64 [--prefix 256] [--repeat 15]
 *       one forward pass of R rows that all see a committed prefix (the shape
 *       of a PPD tree step), median over repeats; reports ms and the ratio to
 *       one row.
 * Results go to stdout as one JSON object per line; progress to stderr.
 * Until PPD lands, plain decoding is the only mode (--no-ppd is implied).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/generate.h"
#include "engine/log.h"

#define BENCH_DEFAULT_PROMPTS "../shared/data/eval-mt_bench.jsonl"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n < 1) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void bench_usage(FILE *fp) {
    fprintf(fp,
            "usage: ppd bench [flags]\n"
            "  -m, --model FILE     GGUF model (default %s)\n"
            "  -f, --file FILE      prompt set, JSON lines with \"turns\" (default %s)\n"
            "      --count N        first N prompts (default 10)\n"
            "  -n, --n-predict N    tokens per prompt (default 128)\n"
            "      --ignore-eos     always generate n tokens (fixed-length speed runs)\n"
            "  -t, --threads N      CPU threads\n"
            "      --rows LIST      instead: forward-pass cost for these row counts, e.g. 1,8,16,64\n"
            "      --prefix N       committed KV entries the rows see (default 256)\n"
            "      --repeat N       passes per row count (default 15; the median is reported)\n"
            "      --no-ppd         plain decoding (the only mode until PPD lands)\n",
            PPD_DEFAULT_MODEL, BENCH_DEFAULT_PROMPTS);
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
    for (int i = 0; i < prefix || i < f->max_rows; i++) ids[i] = (int32_t)(1000 + (i * 7919) % 40000);
    kv->len[0] = 0;
    for (int i = 0; i < prefix; i += f->max_rows) {
        int n = prefix - i < f->max_rows ? prefix - i : f->max_rows;
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, 0, i, ids + i, n, true);
        if (eng_forward_run(f, &b, kv, NULL, 0)) { fprintf(stderr, "ppd bench: prefill failed\n"); return 1; }
    }
    kv->len[0] = prefix;
    double t1 = 0;
    const char *p = list;
    while (*p) {
        char *end;
        long rows = strtol(p, &end, 10);
        if (end == p || rows < 1 || rows > f->max_rows) {
            fprintf(stderr, "ppd bench: --rows: bad row count at '%s' (1..%d)\n", p, f->max_rows);
            return 2;
        }
        p = *end == ',' ? end + 1 : end;
        /* A tree-shaped step: all rows see the prefix and themselves, logits for all. */
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, 0, prefix, ids, (int)rows, false);
        for (int r = 0; r < rows; r++) b.want_logits[r] = true;
        double *t = malloc(sizeof *t * (size_t)repeat);
        eng_forward_run(f, &b, kv, NULL, 0);  /* warm-up */
        for (int k = 0; k < repeat; k++) {
            double t0 = eng_now_s();
            eng_forward_run(f, &b, kv, NULL, 0);
            t[k] = eng_now_s() - t0;
        }
        double med = median(t, repeat);
        free(t);
        if (rows == 1 || t1 == 0) t1 = med;
        printf("{\"bench\":\"rows\",\"rows\":%ld,\"prefix\":%d,\"step_ms\":%.3f,\"ratio_to_first\":%.3f,"
               "\"weight_bytes\":%zu}\n", rows, prefix, med * 1e3, med / t1, e->model->weight_bytes);
        fflush(stdout);
    }
    free(ids);
    eng_batch_free(&b);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    const char *model = PPD_DEFAULT_MODEL, *file = BENCH_DEFAULT_PROMPTS, *rows = NULL;
    long count = 10, n_predict = 128, threads = cli_default_threads(), prefix = 256, repeat = 15;
    int ignore_eos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VAL() do { if (!(v = cli_value(argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { bench_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { VAL(); file = v; }
        else if (!strcmp(a, "--count")) { VAL(); if (cli_int(a, v, 1, 1000000, &count)) return 2; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { VAL(); if (cli_int(a, v, 1, 1 << 20, &n_predict)) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { VAL(); if (cli_int(a, v, 1, 1024, &threads)) return 2; }
        else if (!strcmp(a, "--rows")) { VAL(); rows = v; }
        else if (!strcmp(a, "--prefix")) { VAL(); if (cli_int(a, v, 1, 1 << 20, &prefix)) return 2; }
        else if (!strcmp(a, "--repeat")) { VAL(); if (cli_int(a, v, 1, 100000, &repeat)) return 2; }
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "--no-ppd")) { }
        else { fprintf(stderr, "ppd bench: unknown flag '%s' (see --help)\n", a); return 2; }
#undef VAL
    }
    struct eng_engine_params ep = {.model_path = model, .n_threads = (int)threads, .n_slot = 1, .max_rows = 256,
                                   .n_ctx = rows ? (int)prefix + 512 : 0};
    char err[512];
    struct eng_engine *e = NULL;
    if (eng_engine_open(&e, &ep, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); return 1; }
    int status = 1;
    if (rows) {
        status = bench_rows(e, rows, (int)prefix, (int)repeat);
        eng_engine_close(e);
        return status;
    }
    FILE *fp = fopen(file, "r");
    if (!fp) { fprintf(stderr, "ppd bench: cannot open %s (use -f FILE)\n", file); eng_engine_close(e); return 1; }
    double *pre = calloc((size_t)count, sizeof *pre), *dec = calloc((size_t)count, sizeof *dec);
    int32_t *out = malloc(sizeof *out * (size_t)n_predict);
    char *line = NULL;
    size_t line_cap = 0;
    int n_done = 0;
    long total_gen = 0;
    while (n_done < count && getline(&line, &line_cap, fp) > 0) {
        json_error_t je;
        json_t *row = json_loads(line, 0, &je);
        json_t *turns = row ? json_object_get(row, "turns") : NULL;
        const char *text = turns ? json_string_value(json_array_get(turns, 0)) : NULL;
        if (!text) {
            fprintf(stderr, "ppd bench: %s: line %d has no \"turns\"[0] string\n", file, n_done + 1);
            json_decref(row);
            goto done;
        }
        struct chat_msg msg = {"user", text};
        int32_t *ids = NULL;
        int n_ids = 0;
        if (eng_engine_chat_tokens(e, &msg, 1, &ids, &n_ids, err, sizeof err)) {
            fprintf(stderr, "ppd bench: %s\n", err);
            json_decref(row);
            goto done;
        }
        json_decref(row);
        struct eng_gen_params gp = {.n_predict = (int)n_predict, .ignore_eog = ignore_eos};
        struct eng_gen_stats st;
        int rc = n_ids + n_predict < e->kv.max_seq
                     ? eng_generate(&e->fwd, &e->kv, 0, e->tok, ids, n_ids, &gp, NULL, NULL, out, &st)
                     : ENG_E_TOO_LONG;
        free(ids);
        if (rc) { fprintf(stderr, "ppd bench: prompt %d: %s\n", n_done + 1, eng_err_msg(rc)); goto done; }
        pre[n_done] = st.n_prompt / st.prefill_s;
        dec[n_done] = st.n_gen > 1 ? (st.n_gen - 1) / st.decode_s : 0;
        total_gen += st.n_gen;
        n_done++;
        fprintf(stderr, "\rppd bench: %d/%ld prompts, last: prefill %.0f tok/s, decode %.1f tok/s   ", n_done, count,
                pre[n_done - 1], dec[n_done - 1]);
    }
    fprintf(stderr, "\n");
    printf("{\"bench\":\"prompts\",\"engine\":\"ppd\",\"mode\":\"no-ppd\",\"threads\":%ld,\"prompts\":%d,"
           "\"n_predict\":%ld,\"generated\":%ld,\"prefill_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.1f}\n",
           threads, n_done, n_predict, total_gen, median(pre, n_done), median(dec, n_done));
    status = 0;
done:
    free(line);
    free(out);
    free(pre);
    free(dec);
    fclose(fp);
    eng_engine_close(e);
    return status;
}
