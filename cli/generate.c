/* generate.c — `ppd generate`: one prompt from the command line.
 *
 * Text goes to stdout as it is produced (whole UTF-8 characters only); load
 * and progress messages go to stderr.  --json prints one object at the end
 * instead, with the token ids and timings (the form tests and scripts read).
 */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/load/tokenizer.h"
#include "ppd_open.h"
#include "server/settings.h"

struct gen_opts {
    /* as the flags give them */
    const char *model, *prompt, *prompt_file, *chat_template, *system, *device_name;
    const char *ppd, *tree;   /* "auto", "none" (ppd) or a file */
    long chat, json, ignore_eos, n_threads, n_ctx, n_predict, no_ppd, tree_budget, typical, verbose, top_k, seed;
    double temp, top_p, min_p, typical_eps, typical_alpha;
    /* what they mean for the engine */
    int device;                            /* enum eng_device */
    const char *ppd_adapter, *tree_file;   /* NULL: the model's committed adapter, if any; the built tree */
    struct eng_ppd_gen_opts popts;
    struct eng_sampler_params sp;
};

#define O(field) offsetof(struct gen_opts, field)
#define GEN(...) FLAG_OWN(__VA_ARGS__)

static const struct flag_opt gen_flags[] = {
    {&setting_model, O(model)},
    {GEN(.name = "prompt", .short_flag = "-p", .kind = FLAG_STR, .help = "prompt text"), O(prompt)},
    {GEN(.name = "file", .short_flag = "-f", .kind = FLAG_STR, .meta = "FILE", .help = "read the prompt from FILE"),
     O(prompt_file)},
    {GEN(.name = "chat", .kind = FLAG_BOOL, .help = "wrap the prompt as a user message in the model's chat template"),
     O(chat)},
    {GEN(.name = "system", .kind = FLAG_STR, .help = "system message (with --chat)"), O(system)},
    {&setting_chat_template, O(chat_template)},
    {GEN(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "128",
         .help = "new tokens at most"), O(n_predict)},
    {&setting_temp, O(temp)},
    {&setting_top_k, O(top_k)},
    {&setting_top_p, O(top_p)},
    {&setting_min_p, O(min_p)},
    {&setting_seed, O(seed)},
    {&setting_threads, O(n_threads)},
    {&setting_device, O(device_name)},
    {&setting_ctx_size, O(n_ctx)},
    {&setting_ignore_eos, O(ignore_eos)},
    {&setting_ppd, O(ppd)},
    {&setting_no_ppd, O(no_ppd)},
    {&setting_tree, O(tree)},
    {&setting_tree_budget, O(tree_budget)},
    {GEN(.name = "typical", .kind = FLAG_BOOL,
         .help = "PPD with Medusa typical acceptance (faster, not lossless; needs --temp > 0)"), O(typical)},
    {GEN(.name = "typical-eps", .kind = FLAG_FLOAT, .fmin = 1e-9, .fmax = 1, .def = "0.09", .meta = "E",
         .help = "typical acceptance threshold"), O(typical_eps)},
    {GEN(.name = "typical-alpha", .kind = FLAG_FLOAT, .fmin = 1e-9, .fmax = 100, .def = "0.3", .meta = "A",
         .help = "typical acceptance entropy factor"), O(typical_alpha)},
    {GEN(.name = "json", .kind = FLAG_BOOL, .help = "print one JSON object: text, tokens, timings, PPD statistics"),
     O(json)},
    {&setting_verbose, O(verbose)},
};

static const struct flag_table gen_table = FLAG_TABLE("ppd generate", gen_flags);

static void gen_usage(FILE *fp) {
    fprintf(fp, "usage: ppd generate [flags] (-p TEXT | -f FILE)\n");
    flag_usage(fp, &gen_table);
    fprintf(fp,
            "Models: GGUF files of the llama (Llama 2/3/3.1/3.2, TinyLlama, SmolLM, Mistral-style), qwen2 and\n"
            "qwen3 architectures, RoPE scaling none, linear, YaRN or Llama 3 frequency factors; weights in\n"
            "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS\n"
            "(so the usual Q4_K_M, Q5_K_M, Q3_K_M ... mixes).\n");
}

static int gen_parse(int argc, char **argv, struct gen_opts *o) {
    memset(o, 0, sizeof *o);
    int rc = flag_defaults(&gen_table, o);
    if (!rc) rc = flag_parse(&gen_table, o, argc, argv, NULL);
    if (rc == 1) gen_usage(stdout);
    if (rc) return rc;
    if (!!o->prompt + !!o->prompt_file != 1) {
        fprintf(stderr, "ppd generate: give exactly one of -p TEXT or -f FILE\n");
        return 2;
    }
    if (!*o->ppd || !*o->tree) {
        fprintf(stderr, "ppd generate: --%s: give a file, auto or none\n", !*o->ppd ? "ppd" : "tree");
        return 2;
    }
    const int ppd_named = strcmp(o->ppd, "auto") && strcmp(o->ppd, "none"), tree_named = strcmp(o->tree, "auto");
    if (o->no_ppd && (ppd_named || tree_named || o->typical)) {
        fprintf(stderr, "ppd generate: --no-ppd cannot be combined with --ppd, --tree or --typical\n");
        return 2;
    }
    if (o->typical && o->temp <= 0) {
        fprintf(stderr, "ppd generate: --typical needs --temp > 0 (at temperature 0 PPD is greedy and lossless)\n");
        return 2;
    }
    if (!strcmp(o->ppd, "none")) o->no_ppd = 1;
    o->ppd_adapter = ppd_named ? o->ppd : NULL;
    o->tree_file = tree_named ? o->tree : NULL;
    o->device = eng_device_parse(o->device_name);
    o->sp = (struct eng_sampler_params){.temperature = (float)o->temp, .top_k = (int)o->top_k, .top_p = (float)o->top_p,
                                        .min_p = (float)o->min_p, .seed = (uint64_t)o->seed};
    o->popts.accept = o->typical ? ENG_PPD_ACCEPT_TYPICAL : ENG_PPD_ACCEPT_EXACT;
    o->popts.typical.eps = (float)o->typical_eps;
    o->popts.typical.alpha = (float)o->typical_alpha;
    if (o->verbose) eng_log_set_level(ENG_LOG_DEBUG);
    return 0;
}

struct gen_stream {
    const struct tok *tok;
    struct tok_detok detok;
    char *text;          /* everything generated, for --json */
    size_t len, cap;
    int echo;            /* write to stdout as we go */
    char *piece;         /* tok_detok_cap() bytes */
    size_t piece_cap;
};

static void gen_append(struct gen_stream *s, const char *p, size_t n) {
    if (!n) return;
    if (s->echo) { fwrite(p, 1, n, stdout); fflush(stdout); }
    if (s->len + n + 1 > s->cap) {
        size_t nc = (s->len + n + 1) * 2;
        char *nt = realloc(s->text, nc);
        if (!nt) return;
        s->text = nt;
        s->cap = nc;
    }
    memcpy(s->text + s->len, p, n);
    s->len += n;
    s->text[s->len] = 0;
}

static int gen_on_tokens(void *user, const int32_t *ids, int n) {
    struct gen_stream *s = user;
    for (int i = 0; i < n; i++) {
        if (tok_is_eog(s->tok, ids[i])) continue;   /* end-of-turn markers are not text */
        size_t k = tok_detok_push(s->tok, &s->detok, ids[i], s->piece, s->piece_cap);
        if (k != (size_t)-1) gen_append(s, s->piece, k);
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    struct gen_opts o;
    int rc = gen_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    char *file_text = NULL;
    if (o.prompt_file && !(file_text = flag_read_file(o.prompt_file))) return 1;
    const char *prompt = o.prompt ? o.prompt : file_text;

    struct eng_engine_params ep = {.model_path = o.model, .device = o.device, .n_threads = o.n_threads, .n_ctx = o.n_ctx,
                                   .n_slot = 1, .max_rows = 512, .chat_template = o.chat_template};
    char err[512];
    struct eng_engine *e = NULL;
    int32_t *ids = NULL, *out = NULL;
    int n_ids = 0, status = 1, use_ppd = 0, *acc_len = NULL;
    struct gen_stream s = {0};
    struct eng_ppd_setup cp = {0};
    if (eng_engine_open(&e, &ep, err, sizeof err)) {
        fprintf(stderr, "ppd: %s\n", err);
        goto done;
    }
    /* PPD on unless --no-ppd, when an adapter is named or sits next to the model */
    struct eng_ppd_setup_opts po = {.model_path = o.model, .adapter = o.ppd_adapter, .tree_file = o.tree_file, .tree_budget = (int)o.tree_budget};
    if (!o.no_ppd && cli_ppd_open(&cp, &po, e, o.n_threads, false, "ppd")) goto done;
    use_ppd = cp.src != ENG_PPD_OFF;
    if (o.chat) {
        struct chat_msg msgs[2];
        int n = 0;
        if (o.system) msgs[n++] = (struct chat_msg){"system", o.system};
        msgs[n++] = (struct chat_msg){"user", prompt};
        if (eng_engine_chat_tokens(e, msgs, n, &ids, &n_ids, err, sizeof err)) {
            fprintf(stderr, "ppd: %s\n", err);
            goto done;
        }
    } else if ((rc = eng_engine_text_tokens(e, prompt, &ids, &n_ids))) {
        fprintf(stderr, "ppd: cannot tokenize the prompt: %s\n", eng_err_msg(rc));
        goto done;
    }
    if (n_ids < 1) { fprintf(stderr, "ppd: the prompt is empty\n"); goto done; }
    if (n_ids >= e->kv.max_seq) {
        fprintf(stderr, "ppd: the prompt has %d tokens; the context holds %d (-c)\n", n_ids, e->kv.max_seq);
        goto done;
    }
    long room = e->kv.max_seq - n_ids;
    if (o.n_predict > room) o.n_predict = room;
    out = malloc(sizeof *out * (size_t)o.n_predict);
    acc_len = malloc(sizeof *acc_len * (size_t)o.n_predict);
    if (!out || !acc_len) goto done;
    struct eng_gen_params gp = {.n_predict = (int)o.n_predict, .ignore_eog = o.ignore_eos, .sp = o.sp};
    struct eng_gen_stats st;
    struct eng_ppd_gen_stats pst = {0};
    s.tok = e->tok;
    s.echo = !o.json;
    tok_detok_init(&s.detok, 0);
    s.piece_cap = tok_detok_cap(e->tok);
    if (!(s.piece = malloc(s.piece_cap))) goto done;
    if (use_ppd) {
        rc = eng_ppd_generate(&e->fwd, &e->kv, 0, e->tok, &cp.ppd, ids, n_ids, &gp, gen_on_tokens, &s, out, acc_len,
                              &pst, &o.popts);
        st = pst.gen;
    } else {
        rc = eng_generate(&e->fwd, &e->kv, 0, e->tok, ids, n_ids, &gp, gen_on_tokens, &s, out, &st);
        /* plain decoding: the first token comes from the prefill, then one per step */
        for (int i = 0; i < st.n_gen - 1; i++) acc_len[i] = 1;
        st.steps = st.n_gen > 0 ? st.n_gen - 1 : 0;
        pst.hist[1] = st.steps;
        pst.forward_s = st.decode_s;
    }
    if (rc) {
        fprintf(stderr, "ppd: generation failed: %s\n", eng_err_msg(rc));
        goto done;
    }
    long acc_sum = 0;
    for (int i = 0; i < st.steps; i++) acc_sum += acc_len[i];
    double mean_acc = st.steps ? (double)acc_sum / st.steps : 0;
    double overhead = st.steps > 0 && st.decode_s > 0 ? (st.decode_s - pst.forward_s) / st.decode_s : 0;
    char tail[TOK_DETOK_FLUSH_CAP];
    size_t nt = tok_detok_flush(&s.detok, tail, sizeof tail);
    if (nt != (size_t)-1) gen_append(&s, tail, nt);
    double decode_tps = st.n_gen > 1 && st.decode_s > 0 ? (st.n_gen - 1) / st.decode_s : 0;
    double prefill_tps = st.prefill_s > 0 ? st.n_prompt / st.prefill_s : 0;
    static const char *finish_names[] = {"length", "stop", "stop", "length"};
    if (o.json) {
        json_t *j = json_object(), *toks = json_array(), *acc = json_array();
        for (int i = 0; i < st.n_gen; i++) json_array_append_new(toks, json_integer(out[i]));
        json_t *hist = json_array();
        for (int i = 0; i < st.steps; i++) json_array_append_new(acc, json_integer(acc_len[i]));
        int top = ENG_PPD_MAX_PROMPT + 1;
        while (top > 0 && !pst.hist[top]) top--;
        for (int a = 0; a <= top; a++) json_array_append_new(hist, json_integer(pst.hist[a]));
        json_object_set_new(j, "text", json_stringn(s.text ? s.text : "", s.len));
        json_object_set_new(j, "tokens", toks);
        json_object_set_new(j, "n_prompt", json_integer(st.n_prompt));
        json_object_set_new(j, "n_gen", json_integer(st.n_gen));
        json_object_set_new(j, "steps", json_integer(st.steps));
        json_object_set_new(j, "tokens_per_step", acc);
        json_object_set_new(j, "finish_reason", json_string(finish_names[st.finish]));
        json_object_set_new(j, "prefill_s", json_real(st.prefill_s));
        json_object_set_new(j, "decode_s", json_real(st.decode_s));
        json_object_set_new(j, "prefill_tokens_per_s", json_real(prefill_tps));
        json_object_set_new(j, "decode_tokens_per_s", json_real(decode_tps));
        json_object_set_new(j, "ppd", json_boolean(use_ppd));
        json_object_set_new(j, "mean_accepted_per_step", json_real(mean_acc));
        json_object_set_new(j, "accepted_hist", hist);
        json_object_set_new(j, "forward_s", json_real(pst.forward_s));
        json_object_set_new(j, "step_overhead", json_real(overhead));
        if (use_ppd) {
            json_t *rows = json_array();
            for (int d = 1; d <= cp.ppd.n_prompt; d++) json_array_append_new(rows, json_integer(cp.ppd.trees.st[d].T));
            json_object_set_new(j, "tree_rows", rows);
            json_object_set_new(j, "adapter", json_string(cp.ad->provenance));
            json_object_set_new(j, "acceptance", json_string(o.popts.accept == ENG_PPD_ACCEPT_TYPICAL ? "typical" : "exact"));
        }
        json_object_set_new(j, "threads", json_integer(o.n_threads));
        char *txt = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (txt) { puts(txt); free(txt); }
        json_decref(j);
    } else {
        printf("\n");
        fprintf(stderr, "ppd: prompt %d tokens (%.1f tok/s), generated %d tokens (%.1f tok/s), finish: %s\n",
                st.n_prompt, prefill_tps, st.n_gen, decode_tps, finish_names[st.finish]);
        if (use_ppd)
            fprintf(stderr, "ppd: PPD %d steps, %.3f tokens per step, %.1f%% of step time outside the forward pass\n",
                    st.steps, mean_acc, 100.0 * overhead);
    }
    status = 0;
done:
    free(s.text);
    free(s.piece);
    free(out);
    free(acc_len);
    eng_ppd_setup_close(&cp);
    free(ids);
    free(file_text);
    eng_engine_close(e);
    return status;
}
