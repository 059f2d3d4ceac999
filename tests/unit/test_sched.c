/* test_sched.c — continuous batching (engine/decode/sched.c) and stop strings
 * (engine/decode/textout.c) on the default model.
 *
 * The central check: N sequences run together through the scheduler (sharing
 * batches, prompts split into chunks, admitted as slots free up) produce
 * exactly the tokens each produces alone through eng_generate, greedy and
 * seeded sampling alike.  Rows are batch-independent, so this is exact.
 * Then: cancellation frees the slot at the next step; requests wait while
 * every slot is busy; stop strings split across tokens are held back.
 *
 * With PPD (an untrained text-initialised adapter, so acceptance is low and
 * the interesting multi-token steps come from an oracle guess hook that
 * feeds the known continuation): the same requests give exactly the tokens
 * of plain decoding, greedy and seeded; a stop string or max_tokens ending
 * inside a multi-token step truncates exactly where plain decoding stops;
 * cancelling a PPD sequence frees its slot; the PPD counters add up.
 *
 * Prefix cache: a second turn (the first turn's prompt and answer, then more)
 * and a prompt sharing half of it reuse the kept KV entries and give exactly
 * the tokens of a cold prefill, plain and PPD, greedy and seeded; the
 * counters add up and nothing stays busy when idle.  A request sharing a long
 * prefix with one still prefilling waits for it and copies its entries, while
 * an unrelated one is admitted at once; cancelling either side works.
 * The block store behind the slots: five conversations through two slots,
 * then each one's second turn, which finds its first turn in the store and
 * gives exactly the tokens of a run without any cache (plain and PPD, greedy
 * and seeded); with a store of a few blocks (evictions, every block held on
 * a whole chain) and with every block hash made equal (tokens and parents
 * decide), the answers stay exact.
 *
 * The engine thread (engine/decode/runner.c) gives the same tokens as the requests
 * alone, with submissions arriving while it runs.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/unit/common_test.h"

#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/decode/logprobs.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/decode/runner.h"
#include "engine/decode/sched.h"
#include "engine/decode/textout.h"
#include "engine/load/tokenizer.h"

#define MAX_REQ 10

static const char *prompts[] = {
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each is prime. Be brief, but make sure the explanation "
    "is correct for every number you pick, and mention what a prime number is in the first place, "
    "using simple words that a child would understand.",
    "Hi",
    "Translate 'good morning' into Spanish and German.",
};
#define N_PROMPT (int)(sizeof prompts / sizeof prompts[0])

/* What the emit callback saw, per request (user = index). */
struct seen {
    char text[4096];
    size_t n_text;
    int n_events, n_tokens;
    enum eng_sched_finish finish;
    int n_gen;
    int32_t ids[256];
    int done;
    /* with logprobs: one entry per delivered token, and the prompt's */
    struct eng_logprob lp[256];
    int n_lp;
    struct eng_logprob lp_prompt[256];
    int n_lp_prompt_events;
    /* the request's figures in its last event */
    double t_admit, t_first, t_emit;
    int ppd_steps, ppd_drafted, ppd_accepted;
    int n_cached;
};

static struct seen seen[MAX_REQ];

static void on_event(void *user, const struct eng_sched_event *ev) {
    (void)user;
    struct seen *s = &seen[(intptr_t)ev->req->user];
    ck_assert_int_eq(s->done, 0);
    memcpy(s->text + s->n_text, ev->text, ev->n_text);
    s->n_text += ev->n_text;
    memcpy(s->ids + s->n_tokens, ev->ids, sizeof *ev->ids * (size_t)ev->n_ids);
    if (ev->lp) {
        ck_assert_int_eq(s->n_lp, s->n_tokens);
        memcpy(s->lp + s->n_lp, ev->lp, sizeof *ev->lp * (size_t)ev->n_ids);
        s->n_lp += ev->n_ids;
    }
    if (ev->lp_prompt) {
        ck_assert_int_le(ev->n_prompt, 256);
        ck_assert_int_eq(s->n_tokens, 0);   /* with the first tokens */
        memcpy(s->lp_prompt, ev->lp_prompt, sizeof *ev->lp_prompt * (size_t)ev->n_prompt);
        s->n_lp_prompt_events++;
    }
    s->n_tokens += ev->n_ids;
    s->t_admit = ev->t_admit;
    s->t_first = ev->t_first;
    s->t_emit = ev->t_emit;
    s->ppd_steps = ev->ppd_steps;
    s->ppd_drafted = ev->ppd_drafted;
    s->ppd_accepted = ev->ppd_accepted;
    s->n_cached = ev->n_cached;
    s->n_events++;
    if (ev->finish != ENG_SCHED_RUNNING) {
        s->done = 1;
        s->finish = ev->finish;
        s->n_gen = ev->n_gen;
    }
}

static struct eng_engine *open_engine_rows(int n_slot, int max_rows) {
    struct eng_engine_params ep = {.model_path = test_model_path(), .n_threads = 1, .n_ctx = 512,
                                   .n_slot = n_slot, .max_rows = max_rows};
    char err[512];
    struct eng_engine *e = NULL;
    int rc = eng_engine_open(&e, &ep, err, sizeof err);
    ck_assert_msg(rc == 0, "open: %s", err);
    return e;
}

static struct eng_engine *open_engine(int n_slot) { return open_engine_rows(n_slot, 64); }

/* PPD for the engine's model: an untrained adapter (N = 3, K = 10, the
 * paper's text initialisation) and a tree built from the paper's Vicuna-7B
 * accuracy table with budget L. */
struct ppd_fx {
    struct eng_ppd_adapter *ad;
    struct eng_ppd_tree_family *fam;
    struct eng_ppd ppd;
};

/* When set, ppd_fx_open takes the committed adapter next to the model (the
 * one users get) and its tuned tree instead of an untrained one. */
static bool committed_adapter;

static void ppd_fx_open(struct ppd_fx *x, const struct eng_engine *e, int tree_L) {
    char err[512];
    memset(x, 0, sizeof *x);
    if (committed_adapter) {
        char path[1024];
        ck_assert_int_eq(eng_ppd_adapter_default_path(test_model_path(), path, sizeof path), 0);
        ck_assert_msg(eng_ppd_adapter_load(&x->ad, path, e->model, err, sizeof err) == 0, "%s", err);
        ck_assert_ptr_nonnull(x->ad->accuracy);
        const int N = x->ad->n_prompt, K = x->ad->topk;
        double *acc = malloc(sizeof(double) * (size_t)N * (size_t)K);
        for (int i = 0; i < N * K; i++) acc[i] = x->ad->accuracy[i];
        ck_assert_int_eq(eng_ppd_tree_build(&x->fam, acc, N, K, x->ad->tree_budget > 0 ? x->ad->tree_budget : tree_L, NULL), 0);
        free(acc);
    } else {
        ck_assert_msg(eng_ppd_adapter_init_text(&x->ad, e->model, e->tok, 3, 10, ENG_PPD_INIT_TEXT, err, sizeof err) == 0,
                      "%s", err);
        ck_assert_int_eq(eng_ppd_tree_build(&x->fam, eng_ppd_acc_vicuna7b, 3, 10, tree_L, NULL), 0);
    }
    ck_assert_msg(eng_ppd_init(&x->ppd, x->ad, x->fam, err, sizeof err) == 0, "%s", err);
}

static void ppd_fx_close(struct ppd_fx *x) {
    eng_ppd_free(&x->ppd);
    eng_ppd_tree_family_free(x->fam);
    eng_ppd_adapter_free(x->ad);
}

/* The PPD counters' identities (sched.h); returns the steps. */
static long long check_ppd_counters(const struct eng_sched_stats *st) {
    long long steps = 0, emitted = 0, accepted = 0;
    for (int a = 0; a < ENG_PPD_MAX_PROMPT + 2; a++) {
        steps += st->ppd_hist[a];
        emitted += (long long)a * st->ppd_hist[a];
    }
    ck_assert_int_eq(st->ppd_hist[0], 0);
    for (int a = 3 + 2; a < ENG_PPD_MAX_PROMPT + 2; a++) ck_assert_int_eq(st->ppd_hist[a], 0);   /* at most N + 1 */
    for (int i = 1; i <= ENG_PPD_MAX_PROMPT; i++) {
        accepted += st->ppd_accepted_pos[i];
        if (i > 1) ck_assert_int_le(st->ppd_accepted_pos[i], st->ppd_accepted_pos[i - 1]);
        if (i > 3) ck_assert_int_eq(st->ppd_accepted_pos[i], 0);
    }
    ck_assert_int_eq(steps, st->ppd_steps);
    ck_assert_int_eq(emitted, st->ppd_emitted);
    ck_assert_int_eq(accepted, st->ppd_accepted);
    /* each step emits its accepted guesses plus one drawn token, except a
     * sequence's last step when it ends on an accepted guess */
    ck_assert_int_ge(st->ppd_accepted, st->ppd_emitted - st->ppd_steps);
    ck_assert_int_le(st->ppd_accepted, st->ppd_emitted - st->ppd_steps + st->ppd_seqs);
    ck_assert_int_le(st->ppd_accepted, st->ppd_draft_tokens);
    ck_assert_int_le(st->ppd_draft_tokens, 3 * st->ppd_steps);
    return steps;
}

static void chat_ids(struct eng_engine *e, const char *text, int32_t **ids, int *n) {
    struct chat_msg m = {"user", text};
    char err[256];
    ck_assert_int_eq(eng_engine_chat_tokens(e, &m, 1, ids, n, err, sizeof err), 0);
}

/* The reference: the prompt alone through eng_generate in slot 0. */
static int solo(struct eng_engine *e, const int32_t *ids, int n, int n_predict, const struct eng_sampler_params *sp,
                int32_t *out) {
    struct eng_gen_params gp = {.n_predict = n_predict, .sp = *sp};
    struct eng_gen_stats st;
    ck_assert_int_eq(eng_generate(&e->fwd, &e->kv, 0, e->tok, ids, n, &gp, NULL, NULL, out, &st), 0);
    return st.n_gen;
}

/* Greedy guesses replaced by the known continuation of request `user`
 * (rank 0 of every prompt token), so steps accept up to N + 1 tokens. */
static const int32_t *oracle_ids[MAX_REQ];
static int oracle_n[MAX_REQ];

static void oracle_guess(void *user, int32_t *cand, int d, int K, int n_emitted) {
    const int i = (int)(intptr_t)user;
    for (int t = 1; t <= d; t++) {
        int at = n_emitted - 1 + t;
        if (!oracle_ids[i] || at >= oracle_n[i]) continue;
        int32_t *row = cand + 1 + (size_t)K * (t - 1);
        for (int r = 0; r < K; r++)   /* keep the siblings distinct */
            if (row[r] == oracle_ids[i][at]) row[r] = row[0];
        row[0] = oracle_ids[i][at];
    }
}

/* All prompts through one scheduler (with PPD when px is given; the last
 * request then opts out, and with `oracle` guesses come from the reference
 * continuations), each equal to its solo plain output. */
/* per_batch: calibration's per-batch-size trees instead of one: the L=20
 * tree with 1 sequence holding a slot, an L=6 tree with 2 or 4, plain one-row
 * steps with 3 (the tree changes between steps of the same sequence). */
static void run_together_ppd_trees(const struct eng_sampler_params *sp_base, int seed_step, bool use_ppd, bool oracle,
                                   bool per_batch) {
    struct eng_engine *e = open_engine_rows(4, 128);
    struct ppd_fx px;
    struct eng_ppd_tree_family *fam6 = NULL;
    struct eng_ppd ppd6 = {0};
    const struct eng_ppd *by_batch[5] = {NULL, NULL, &ppd6, NULL, &ppd6};
    if (use_ppd) ppd_fx_open(&px, e, 20);
    if (per_batch) {
        char err[256];
        by_batch[1] = &px.ppd;
        ck_assert_int_eq(eng_ppd_tree_build(&fam6, eng_ppd_acc_vicuna7b, 3, 10, 6, NULL), 0);
        ck_assert_msg(eng_ppd_init(&ppd6, px.ad, fam6, err, sizeof err) == 0, "%s", err);
        ck_assert_int_lt(ppd6.trees.max_T, px.ppd.trees.max_T);
    }
    int32_t *ids[N_PROMPT], ref[N_PROMPT][32];
    int n_ids[N_PROMPT], n_ref[N_PROMPT];
    const int max_tokens = 24;
    for (int i = 0; i < N_PROMPT; i++) {
        chat_ids(e, prompts[i], &ids[i], &n_ids[i]);
        struct eng_sampler_params sp = *sp_base;
        sp.seed += (uint64_t)(i * seed_step);
        n_ref[i] = solo(e, ids[i], n_ids[i], max_tokens, &sp, ref[i]);
    }
    memset(seen, 0, sizeof seen);
    struct eng_sched s;
    /* 64 rows per step (PPD: 4 trees of 24 rows, 96), 16 per prefilling
     * sequence: the long prompt takes several steps while the others decode;
     * 5 requests for 4 slots. */
    struct eng_sched_params p = {.max_rows = use_ppd ? 96 : 64, .prefill_chunk = 16, .emit = on_event};
    if (use_ppd) {
        p.ppd = &px.ppd;
        if (per_batch) p.ppd_by_batch = by_batch;
        if (oracle) p.ppd_guess_fn = oracle_guess;
        for (int i = 0; i < N_PROMPT; i++) { oracle_ids[i] = ref[i]; oracle_n[i] = n_ref[i]; }
    }
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sched_req *reqs[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) {
        struct eng_sampler_params sp = *sp_base;
        sp.seed += (uint64_t)(i * seed_step);
        ck_assert_int_eq(eng_sched_req_init(&reqs[i], e->tok, ids[i], n_ids[i], max_tokens, &sp, NULL, 0), 0);
        ck_assert(reqs[i]->use_ppd);
        reqs[i]->user = (void *)(intptr_t)i;
        if (i == N_PROMPT - 1) reqs[i]->use_ppd = false;   /* the per-request opt-out */
        eng_sched_submit(&s, reqs[i]);
    }
    int steps = 0, max_batch = 0;
    while (!eng_sched_idle(&s)) {
        int rc = eng_sched_step(&s);
        ck_assert_int_ge(rc, 0);
        if (rc > max_batch) max_batch = rc;
        ck_assert_int_le(eng_sched_n_running(&s), 4);
        ck_assert_int_lt(++steps, 1000);
    }
    ck_assert_int_gt(max_batch, 4);   /* prefill chunks really shared steps with decoding */
    long long n_gen_ppd = 0;
    for (int i = 0; i < N_PROMPT; i++) {
        ck_assert_int_eq(reqs[i]->ppd_on, use_ppd && i != N_PROMPT - 1);
        if (reqs[i]->ppd_on) n_gen_ppd += n_ref[i];
        ck_assert_int_eq(seen[i].done, 1);
        ck_assert_int_eq(seen[i].n_tokens, n_ref[i]);
        ck_assert_int_eq(seen[i].n_gen, n_ref[i]);
        ck_assert_int_eq(seen[i].n_lp + seen[i].n_lp_prompt_events, 0);   /* not asked for: none */
        for (int k = 0; k < n_ref[i]; k++)
            ck_assert_msg(seen[i].ids[k] == ref[i][k], "prompt %d token %d: %d alone, %d batched", i, k, ref[i][k],
                          seen[i].ids[k]);
        /* The streamed text is the decoded tokens, end-of-turn excluded. */
        char want[4096];
        int n_text_ids = n_ref[i] - (tok_is_eog(e->tok, ref[i][n_ref[i] - 1]) ? 1 : 0);
        size_t nw = tok_decode(e->tok, ref[i], (size_t)n_text_ids, 0, want, sizeof want);
        ck_assert_uint_eq(seen[i].n_text, nw);
        ck_assert(memcmp(seen[i].text, want, nw) == 0);
        enum eng_sched_finish want_fin =
            tok_is_eog(e->tok, ref[i][n_ref[i] - 1]) ? ENG_SCHED_FINISH_EOG : ENG_SCHED_FINISH_LENGTH;
        ck_assert_int_eq(seen[i].finish, want_fin);
        eng_sched_req_free(reqs[i]);
        free(ids[i]);
    }
    if (use_ppd) {
        const struct eng_sched_stats *st = &s.stats;
        ck_assert_int_eq(st->ppd_seqs, N_PROMPT - 1);
        long long n_steps = check_ppd_counters(st);
        /* no stop strings: every emitted token was delivered; the first token
         * of each PPD request comes from its prefill, not from a step */
        ck_assert_int_eq(st->ppd_emitted, n_gen_ppd - (N_PROMPT - 1));
        double mean = n_steps ? (double)st->ppd_emitted / (double)n_steps : 0;
        printf("PPD %s%s: %lld steps, %lld tokens, %.2f tokens/step, accepted per position %lld %lld %lld\n",
               sp_base->temperature > 0 ? "seeded" : "greedy", oracle ? " (oracle guesses)" : "", n_steps,
               st->ppd_emitted, mean, st->ppd_accepted_pos[1], st->ppd_accepted_pos[2], st->ppd_accepted_pos[3]);
        if (oracle && !per_batch) ck_assert(mean > 2.5);   /* the multi-token path really ran */
        if (oracle && per_batch) ck_assert(mean > 1.5);    /* plain steps (hist[1]) mixed with trees */
        if (per_batch) ck_assert_int_gt(st->ppd_hist[1], 0);
        eng_ppd_free(&ppd6);
        eng_ppd_tree_family_free(fam6);
        ppd_fx_close(&px);
    } else {
        ck_assert_int_eq(s.stats.ppd_steps, 0);
    }
    memset(oracle_ids, 0, sizeof oracle_ids);
    eng_sched_free(&s);
    eng_engine_close(e);
}

static void run_together_ppd(const struct eng_sampler_params *sp_base, int seed_step, bool use_ppd, bool oracle) {
    run_together_ppd_trees(sp_base, seed_step, use_ppd, oracle, false);
}

static void run_together(const struct eng_sampler_params *sp_base, int seed_step) {
    run_together_ppd(sp_base, seed_step, false, false);
}

START_TEST(test_greedy_batched_equals_alone) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    run_together(&sp, 0);
}
END_TEST

START_TEST(test_seeded_batched_equals_alone) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0.9f;
    sp.top_p = 0.95f;
    sp.top_k = 40;
    sp.seed = 1234;
    run_together(&sp, 7);
}
END_TEST

static void cancel_case(bool use_ppd) {
    struct eng_engine *e = open_engine(2);
    struct ppd_fx px;
    if (use_ppd) ppd_fx_open(&px, e, 20);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    int32_t *ids[3], ref[40];
    int n_ids[3];
    for (int i = 0; i < 3; i++) chat_ids(e, prompts[i == 2 ? 4 : i], &ids[i], &n_ids[i]);
    int n_ref = solo(e, ids[2], n_ids[2], 30, &sp, ref);
    memset(seen, 0, sizeof seen);
    struct eng_sched s;
    struct eng_sched_params p = {.emit = on_event, .ppd = use_ppd ? &px.ppd : NULL};
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sched_req *reqs[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(eng_sched_req_init(&reqs[i], e->tok, ids[i], n_ids[i], 30, &sp, NULL, 0), 0);
        reqs[i]->user = (void *)(intptr_t)i;
        eng_sched_submit(&s, reqs[i]);
    }
    /* Two slots: the third request waits while the first two run. */
    for (int k = 0; k < 3; k++) {
        ck_assert_int_gt(eng_sched_step(&s), 0);
        ck_assert_int_eq(eng_sched_n_running(&s), 2);
        ck_assert_int_eq(eng_sched_n_waiting(&s), 1);
        ck_assert_int_eq(seen[2].n_events, 0);
    }
    ck_assert_int_eq(seen[0].done, 0);
    /* with PPD, request 0 is decoding trees when it is cancelled */
    ck_assert_int_eq(reqs[0]->ppd_on, use_ppd);
    ck_assert_int_eq(reqs[0]->state, ENG_SEQ_DECODE);
    int before = seen[0].n_events;
    atomic_store(&reqs[0]->cancel, true);
    ck_assert_int_gt(eng_sched_step(&s), 0);
    /* Cancelled at the step boundary: one last event, no new token; its slot
     * went to the waiting request in the same step. */
    ck_assert_int_eq(seen[0].done, 1);
    ck_assert_int_eq(seen[0].finish, ENG_SCHED_FINISH_CANCELLED);
    ck_assert_int_eq(seen[0].n_events, before + 1);
    ck_assert_int_eq(eng_sched_n_running(&s), 2);
    ck_assert_int_eq(eng_sched_n_waiting(&s), 0);
    eng_sched_req_free(reqs[0]);
    /* Cancelling a request that still waits also ends it. */
    struct eng_sched_req *w;
    ck_assert_int_eq(eng_sched_req_init(&w, e->tok, ids[0], n_ids[0], 5, &sp, NULL, 0), 0);
    w->user = (void *)(intptr_t)3;
    eng_sched_submit(&s, w);
    atomic_store(&w->cancel, true);
    eng_sched_step(&s);
    ck_assert_int_eq(seen[3].done, 1);
    ck_assert_int_eq(seen[3].finish, ENG_SCHED_FINISH_CANCELLED);
    ck_assert_int_eq(seen[3].n_tokens, 0);
    eng_sched_req_free(w);
    while (!eng_sched_idle(&s)) ck_assert_int_ge(eng_sched_step(&s), 0);
    ck_assert_int_eq(eng_sched_kv_used(&s), 0);
    /* The request admitted late still produced its solo output. */
    ck_assert_int_eq(seen[2].n_tokens, n_ref);
    for (int k = 0; k < n_ref; k++) ck_assert_int_eq(seen[2].ids[k], ref[k]);
    for (int i = 1; i < 3; i++) eng_sched_req_free(reqs[i]);
    for (int i = 0; i < 3; i++) free(ids[i]);
    if (use_ppd) ppd_fx_close(&px);
    eng_sched_free(&s);
    eng_engine_close(e);
}

START_TEST(test_cancel_frees_slot_and_full_waits) { cancel_case(false); }
END_TEST

START_TEST(test_ppd_cancel_frees_slot) { cancel_case(true); }
END_TEST

START_TEST(test_ppd_greedy_equals_plain) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    run_together_ppd(&sp, 0, true, false);
    run_together_ppd(&sp, 0, true, true);
}
END_TEST

/* Calibration's per-batch-size trees, plain steps included: still exactly
 * the solo plain outputs, greedy and seeded. */
START_TEST(test_ppd_per_batch_trees_equal_plain) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    run_together_ppd_trees(&sp, 0, true, true, true);
    sp.temperature = 0.7f;
    sp.seed = 5;
    run_together_ppd_trees(&sp, 13, true, false, true);
}
END_TEST

/* The committed adapter at its tuned tree, 4 sequences sharing every step:
 * each emits exactly its plain tokens alone, greedy and seeded at 0.7. */
START_TEST(test_ppd_committed_adapter_batched) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    committed_adapter = true;
    sp.temperature = 0;
    run_together_ppd(&sp, 0, true, false);
    sp.temperature = 0.7f;
    sp.seed = 31;
    run_together_ppd(&sp, 13, true, false);
    committed_adapter = false;
}
END_TEST

START_TEST(test_ppd_seeded_equals_plain) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0.7f;
    sp.seed = 99;
    run_together_ppd(&sp, 13, true, false);
    sp.top_k = 40;
    sp.top_p = 0.9f;
    run_together_ppd(&sp, 13, true, true);
}
END_TEST

/* One request alone through a scheduler, with PPD (oracle guesses from
 * `cont`) or without; what it delivered lands in seen[0]. */
static void run_one(struct eng_engine *e, const struct eng_ppd *ppd, const int32_t *ids, int n_ids, int max_tokens,
                    const char *const *stop, int n_stop, const int32_t *cont, int n_cont, struct eng_sched_stats *st) {
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    memset(seen, 0, sizeof seen);
    oracle_ids[0] = cont;
    oracle_n[0] = n_cont;
    struct eng_sched s;
    struct eng_sched_params p = {.emit = on_event, .ppd = ppd, .ppd_guess_fn = oracle_guess};
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sched_req *r;
    ck_assert_int_eq(eng_sched_req_init(&r, e->tok, ids, n_ids, max_tokens, &sp, stop, n_stop), 0);
    r->user = (void *)(intptr_t)0;
    eng_sched_submit(&s, r);
    while (!eng_sched_idle(&s)) ck_assert_int_ge(eng_sched_step(&s), 0);
    ck_assert_int_eq(r->ppd_on, ppd != NULL);
    ck_assert_int_eq(seen[0].done, 1);
    *st = s.stats;
    eng_sched_req_free(r);
    oracle_ids[0] = NULL;
    eng_sched_free(&s);
}

static void expect_seen_equal(const struct seen *a, const struct seen *b, const char *what) {
    ck_assert_msg(a->n_tokens == b->n_tokens && a->n_gen == b->n_gen && a->finish == b->finish,
                  "%s: plain %d tokens (finish %d), PPD %d (finish %d)", what, a->n_tokens, a->finish, b->n_tokens,
                  b->finish);
    ck_assert_int_eq(b->n_gen, b->n_tokens);
    ck_assert(memcmp(a->ids, b->ids, sizeof *a->ids * (size_t)a->n_tokens) == 0);
    ck_assert_msg(a->n_text == b->n_text && !memcmp(a->text, b->text, a->n_text), "%s: text '%.*s' vs '%.*s'", what,
                  (int)a->n_text, a->text, (int)b->n_text, b->text);
}

/* Stop strings and max_tokens that end inside a multi-token PPD step cut the
 * step exactly where plain decoding stops: same tokens, text, usage, finish. */
START_TEST(test_ppd_truncates_like_plain) {
    struct eng_engine *e = open_engine(1);
    struct ppd_fx px;
    ppd_fx_open(&px, e, 20);
    int32_t *ids, full[48];
    int n_ids;
    chat_ids(e, prompts[2], &ids, &n_ids);
    struct eng_sched_stats st;
    run_one(e, NULL, ids, n_ids, 40, NULL, 0, NULL, 0, &st);
    int n_full = seen[0].n_tokens;
    ck_assert_int_ge(n_full, 20);
    memcpy(full, seen[0].ids, sizeof *full * (size_t)n_full);
    struct seen plain;
    int cut_stop = 0, cut_len = 0;
    for (int k = 3; k <= 10; k++) {
        /* a stop string: the text of tokens k-1 and k */
        char stop[256];
        size_t ns = tok_decode(e->tok, full + k - 1, 2, 0, stop, sizeof stop - 1);
        stop[ns] = 0;
        const char *sv[] = {stop};
        if (ns == 0) continue;
        run_one(e, NULL, ids, n_ids, 40, sv, 1, NULL, 0, &st);
        plain = seen[0];
        ck_assert_int_eq(plain.finish, ENG_SCHED_FINISH_STOP);
        run_one(e, &px.ppd, ids, n_ids, 40, sv, 1, full, n_full, &st);
        expect_seen_equal(&plain, &seen[0], "stop string");
        check_ppd_counters(&st);
        /* the step that completed the stop string had produced more tokens */
        if (st.ppd_emitted > seen[0].n_gen - 1) cut_stop++;
        /* max_tokens = k */
        run_one(e, NULL, ids, n_ids, k, NULL, 0, NULL, 0, &st);
        plain = seen[0];
        ck_assert_int_eq(plain.finish, ENG_SCHED_FINISH_LENGTH);
        run_one(e, &px.ppd, ids, n_ids, k, NULL, 0, full, n_full, &st);
        expect_seen_equal(&plain, &seen[0], "max_tokens");
        check_ppd_counters(&st);
        ck_assert_int_eq(st.ppd_emitted, k - 1);
        /* the last step ended on an accepted guess: max_tokens cut it short */
        if (st.ppd_accepted > st.ppd_emitted - st.ppd_steps) cut_len++;
    }
    printf("PPD truncation: %d stop strings and %d max_tokens ended inside a step\n", cut_stop, cut_len);
    ck_assert_int_gt(cut_stop, 0);
    ck_assert_int_gt(cut_len, 0);
    free(ids);
    ppd_fx_close(&px);
    eng_engine_close(e);
}
END_TEST

/* ---- logprobs ---- */

/* One request alone with logprobs (n_top alternatives, prompt logprobs too),
 * with PPD (oracle guesses from `cont` when given) or without, the prompt
 * prefilled in chunks of prefill_chunk (0: one); what it delivered lands in
 * seen[0]. */
static void run_one_logprobs(struct eng_engine *e, const struct eng_ppd *ppd, const int32_t *ids, int n_ids,
                             int max_tokens, const struct eng_sampler_params *sp, int n_top, int prefill_chunk,
                             const int32_t *cont, int n_cont, struct eng_sched_stats *st) {
    memset(seen, 0, sizeof seen);
    oracle_ids[0] = cont;
    oracle_n[0] = n_cont;
    struct eng_sched s;
    struct eng_sched_params p = {.emit = on_event, .ppd = ppd, .prefill_chunk = prefill_chunk,
                                 .ppd_guess_fn = cont ? oracle_guess : NULL};
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sched_req *r;
    ck_assert_int_eq(eng_sched_req_init(&r, e->tok, ids, n_ids, max_tokens, sp, NULL, 0), 0);
    ck_assert_int_eq(eng_sched_req_want_logprobs(r, ENG_LOGPROBS_MAX_TOP + 1, false), ENG_E_RANGE);
    ck_assert_int_eq(eng_sched_req_want_logprobs(r, n_top, true), 0);
    r->user = (void *)(intptr_t)0;
    eng_sched_submit(&s, r);
    while (!eng_sched_idle(&s)) ck_assert_int_ge(eng_sched_step(&s), 0);
    ck_assert_int_eq(r->ppd_on, ppd != NULL);
    ck_assert_int_eq(seen[0].done, 1);
    ck_assert_int_eq(seen[0].n_lp, seen[0].n_tokens);
    ck_assert_int_eq(seen[0].n_lp_prompt_events, 1);
    ck_assert(seen[0].t_admit > 0 && seen[0].t_admit <= seen[0].t_first && seen[0].t_first <= seen[0].t_emit);
    *st = s.stats;
    eng_sched_req_free(r);
    oracle_ids[0] = NULL;
    eng_sched_free(&s);
}

/* The same bits: the token, its logprob, and the alternatives. */
static void expect_lp_equal(const struct eng_logprob *a, const struct eng_logprob *b, const char *what, int k) {
    ck_assert_msg(a->id == b->id && a->n_top == b->n_top, "%s %d: token %d/%d, %d/%d alternatives", what, k, a->id,
                  b->id, a->n_top, b->n_top);
    ck_assert_msg(!memcmp(&a->logprob, &b->logprob, sizeof a->logprob), "%s %d: logprob %.9g vs %.9g", what, k,
                  (double)a->logprob, (double)b->logprob);
    ck_assert(!memcmp(a->top_id, b->top_id, sizeof *a->top_id * (size_t)a->n_top));
    ck_assert_msg(!memcmp(a->top_logprob, b->top_logprob, sizeof *a->top_logprob * (size_t)a->n_top),
                  "%s %d: alternatives differ", what, k);
}

/* Each entry: the delivered token, <= 0, n_top alternatives in descending
 * order; the token's logprob equals its own entry among them, or is below
 * them all; greedy tokens are the first alternative. */
static void check_logprobs_shape(const struct seen *sn, int n_top, bool greedy) {
    for (int k = 0; k < sn->n_tokens; k++) {
        const struct eng_logprob *lp = &sn->lp[k];
        ck_assert_int_eq(lp->id, sn->ids[k]);
        ck_assert_int_eq(lp->n_top, n_top);
        ck_assert(lp->logprob <= 0);
        bool listed = false;
        for (int i = 0; i < n_top; i++) {
            ck_assert(lp->top_logprob[i] <= 0);
            if (i > 0) ck_assert(lp->top_logprob[i] <= lp->top_logprob[i - 1]);
            if (lp->top_id[i] == lp->id) {
                listed = true;
                ck_assert(!memcmp(&lp->top_logprob[i], &lp->logprob, sizeof lp->logprob));
            }
        }
        if (!listed && n_top > 0) ck_assert(lp->logprob <= lp->top_logprob[n_top - 1]);
        if (greedy) ck_assert_int_eq(lp->top_id[0], lp->id);
    }
}

/* The reference, computed another way: the prompt and the delivered tokens
 * in one causal batch (every row's logits) from an empty slot; the row of
 * position j gives the entry of token j + 1. */
static void teacher_forced(struct eng_engine *e, const int32_t *ids, int n_ids, const struct seen *sn, int n_top,
                           struct eng_logprob *out) {
    const int n = n_ids + sn->n_tokens - 1, n_vocab = e->model->hp.n_vocab;
    ck_assert_int_le(n, e->fwd.max_rows);
    int32_t *all = malloc(sizeof *all * (size_t)(n + 1));
    memcpy(all, ids, sizeof *all * (size_t)n_ids);
    memcpy(all + n_ids, sn->ids, sizeof *all * (size_t)sn->n_tokens);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, n, n), 0);
    ck_assert_int_eq(eng_batch_add_causal(&b, 0, 0, all, n, true), 0);
    for (int j = 0; j < n; j++) b.want_logits[j] = true;
    e->kv.len[0] = 0;
    ck_assert_int_eq(eng_forward_run(&e->fwd, &b, &e->kv, NULL, 0), 0);
    for (int j = 0; j < n; j++) {
        const int lrow = e->fwd.row_logit[j];
        eng_logprobs_compute(e->fwd.logits + (size_t)lrow * (size_t)n_vocab, n_vocab, all[j + 1], n_top, &out[j + 1]);
    }
    eng_batch_free(&b);
    free(all);
}

static struct seen lp_plain;
static struct eng_logprob lp_ref[512];

/* Logprobs through the scheduler: the entries of plain decoding equal, bit
 * for bit, those of a teacher-forced pass over the same tokens, and PPD
 * (multi-token steps through oracle guesses; an untrained adapter) reports
 * exactly plain decoding's, prompt included, greedy and seeded; the
 * request's PPD figures add up to the scheduler's. */
START_TEST(test_logprobs_ppd_equal_plain) {
    struct eng_engine *e = open_engine_rows(1, 128);
    struct ppd_fx px;
    ppd_fx_open(&px, e, 20);
    int32_t *ids;
    int n_ids;
    chat_ids(e, prompts[0], &ids, &n_ids);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    struct eng_sched_stats st;
    for (int seeded = 0; seeded < 2; seeded++) {
        sp.temperature = seeded ? 0.8f : 0.0f;
        sp.seed = 3;
        const int n_top = seeded ? 20 : 5;
        run_one_logprobs(e, NULL, ids, n_ids, 24, &sp, n_top, 8, NULL, 0, &st);
        lp_plain = seen[0];
        ck_assert_int_eq(lp_plain.ppd_steps, 0);
        check_logprobs_shape(&lp_plain, n_top, !seeded);
        teacher_forced(e, ids, n_ids, &lp_plain, n_top, lp_ref);
        for (int j = 1; j < n_ids; j++) expect_lp_equal(&lp_ref[j], &lp_plain.lp_prompt[j], "prompt token", j);
        for (int k = 0; k < lp_plain.n_tokens; k++)
            expect_lp_equal(&lp_ref[n_ids + k], &lp_plain.lp[k], "teacher-forced token", k);
        run_one_logprobs(e, &px.ppd, ids, n_ids, 24, &sp, n_top, 0, lp_plain.ids, lp_plain.n_tokens, &st);
        expect_seen_equal(&lp_plain, &seen[0], "logprobs");
        for (int j = 1; j < n_ids; j++) expect_lp_equal(&lp_plain.lp_prompt[j], &seen[0].lp_prompt[j], "PPD prompt", j);
        for (int k = 0; k < lp_plain.n_tokens; k++) expect_lp_equal(&lp_plain.lp[k], &seen[0].lp[k], "PPD token", k);
        /* several tokens per step really came from tree rows */
        ck_assert_int_lt(seen[0].ppd_steps, seen[0].n_tokens - 2);
        ck_assert_int_eq(seen[0].ppd_steps, st.ppd_steps);
        ck_assert_int_eq(seen[0].ppd_drafted, st.ppd_draft_tokens);
        ck_assert_int_eq(seen[0].ppd_accepted, st.ppd_accepted);
        ck_assert_int_gt(seen[0].ppd_accepted, 0);
    }
    free(ids);
    ppd_fx_close(&px);
    eng_engine_close(e);
}
END_TEST

/* The committed adapter, real guesses: still plain decoding's logprobs. */
START_TEST(test_logprobs_committed_adapter) {
    struct eng_engine *e = open_engine_rows(1, 128);
    struct ppd_fx px;
    committed_adapter = true;
    ppd_fx_open(&px, e, 20);
    committed_adapter = false;
    int32_t *ids;
    int n_ids;
    chat_ids(e, prompts[1], &ids, &n_ids);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    struct eng_sched_stats st;
    run_one_logprobs(e, NULL, ids, n_ids, 32, &sp, 3, 0, NULL, 0, &st);
    lp_plain = seen[0];
    run_one_logprobs(e, &px.ppd, ids, n_ids, 32, &sp, 3, 0, NULL, 0, &st);
    expect_seen_equal(&lp_plain, &seen[0], "committed adapter");
    for (int k = 0; k < lp_plain.n_tokens; k++) expect_lp_equal(&lp_plain.lp[k], &seen[0].lp[k], "PPD token", k);
    printf("logprobs with the committed adapter: %d tokens in %d PPD steps\n", seen[0].n_tokens, seen[0].ppd_steps);
    ck_assert_int_gt(seen[0].ppd_accepted, 0);
    free(ids);
    ppd_fx_close(&px);
    eng_engine_close(e);
}
END_TEST

/* The sizing rule; requests with penalties decode plainly. */
START_TEST(test_ppd_sizing_and_penalties) {
    struct eng_engine *e = open_engine_rows(4, 128);
    struct ppd_fx px;
    ppd_fx_open(&px, e, 20);
    ck_assert_int_eq(px.ppd.trees.max_T, 24);
    struct eng_sched s;
    struct eng_sched_params p = {.max_rows = 95, .emit = on_event, .ppd = &px.ppd};
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), ENG_E_RANGE);   /* 4 x 24 > 95 */
    p.max_rows = 96;
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    sp.presence_penalty = 0.5f;
    int32_t *ids;
    int n_ids;
    chat_ids(e, prompts[0], &ids, &n_ids);
    memset(seen, 0, sizeof seen);
    struct eng_sched_req *r;
    ck_assert_int_eq(eng_sched_req_init(&r, e->tok, ids, n_ids, 4, &sp, NULL, 0), 0);
    r->user = (void *)(intptr_t)0;
    eng_sched_submit(&s, r);
    while (!eng_sched_idle(&s)) ck_assert_int_ge(eng_sched_step(&s), 0);
    ck_assert(!r->ppd_on);
    ck_assert_int_eq(seen[0].n_gen, 4);
    ck_assert_int_eq(s.stats.ppd_seqs, 0);
    eng_sched_req_free(r);
    free(ids);
    eng_sched_free(&s);
    ppd_fx_close(&px);
    eng_engine_close(e);
}
END_TEST

/* Push the tokens of `text` one at a time through a textout with `stop`;
 * the concatenated takes must be `want`, and each take must be a prefix of
 * want (nothing released is ever taken back). */
static void check_stop(struct eng_engine *e, const char *text, const char *const *stop, int n_stop, const char *want,
                       bool want_stopped) {
    int32_t *ids;
    int n;
    ck_assert_int_eq(tok_encode_alloc(e->tok, text, strlen(text), false, false, &ids, &n), 0);
    struct eng_textout t;
    ck_assert_int_eq(eng_textout_init(&t, e->tok, stop, n_stop), 0);
    char got[1024];
    size_t n_got = 0;
    bool stopped = false;
    for (int i = 0; i < n && !stopped; i++) {
        stopped = eng_textout_push(&t, ids[i]);
        size_t k;
        const char *p = eng_textout_take(&t, &k);
        memcpy(got + n_got, p, k);
        n_got += k;
        ck_assert_msg(n_got <= strlen(want) && !memcmp(got, want, n_got), "released '%.*s' is not a prefix of '%s'",
                      (int)n_got, got, want);
    }
    if (!stopped) {
        eng_textout_finish(&t);
        size_t k;
        const char *p = eng_textout_take(&t, &k);
        memcpy(got + n_got, p, k);
        n_got += k;
    }
    got[n_got] = 0;
    ck_assert_str_eq(got, want);
    ck_assert_int_eq(stopped, want_stopped);
    eng_textout_free(&t);
    free(ids);
}

START_TEST(test_stop_strings) {
    struct eng_engine *e = open_engine(1);
    const char *text = "Hello world, this is a test of stop strings.";
    const char *s1[] = {"is a t"};                 /* spans several tokens */
    check_stop(e, text, s1, 1, "Hello world, this ", true);
    const char *s2[] = {"orl"};                    /* inside one token */
    check_stop(e, text, s2, 1, "Hello w", true);
    const char *s3[] = {"xyz", "test of", "Hello world, this is a test of stop strings. And more"};
    check_stop(e, text, s3, 3, "Hello world, this is a ", true);
    const char *s4[] = {"strings!", "Hello world, this is a test of stop strings. And more"};
    check_stop(e, text, s4, 2, text, false);       /* held-back prefixes released at the end */
    check_stop(e, text, NULL, 0, text, false);
    const char *s5[] = {"", "\xc3"};               /* empty ignored; a stop on a byte boundary */
    check_stop(e, "caf\xc3\xa9 ok", s5, 2, "caf", true);
    struct eng_textout t;
    char long_stop[ENG_TEXTOUT_MAX_STOP_LEN + 2];
    memset(long_stop, 'a', sizeof long_stop - 1);
    long_stop[sizeof long_stop - 1] = 0;
    const char *s6[] = {long_stop};
    ck_assert_int_eq(eng_textout_init(&t, e->tok, s6, 1), ENG_E_RANGE);
    const char *s7[] = {"a", "b", "c", "d", "e"};
    ck_assert_int_eq(eng_textout_init(&t, e->tok, s7, 5), ENG_E_RANGE);
    eng_engine_close(e);
}
END_TEST

/* ---- prefix cache ---- */

/* Run requests [i0, i1) (prompts pr/npr, user = index, seed + index)
 * through s until idle. */
static void pc_phase(struct eng_sched *s, const struct tok *tok, int32_t *const *pr, const int *npr, int i0, int i1,
                     const struct eng_sampler_params *sp_base) {
    struct eng_sched_req *reqs[MAX_REQ];
    for (int i = i0; i < i1; i++) {
        struct eng_sampler_params sp = *sp_base;
        sp.seed += (uint64_t)i;
        ck_assert_int_eq(eng_sched_req_init(&reqs[i], tok, pr[i], npr[i], 24, &sp, NULL, 0), 0);
        reqs[i]->user = (void *)(intptr_t)i;
        eng_sched_submit(s, reqs[i]);
    }
    for (int steps = 0; !eng_sched_idle(s); steps++) {
        ck_assert_int_ge(eng_sched_step(s), 0);
        ck_assert_int_lt(steps, 1000);
    }
    for (int i = i0; i < i1; i++) {
        ck_assert_int_eq(seen[i].done, 1);
        eng_sched_req_free(reqs[i]);
    }
}

/* A token list: a's first n_a, then b's first n_b, then c's n_c. */
static int32_t *pc_cat(const int32_t *a, int n_a, const int32_t *b, int n_b, const int32_t *c, int n_c, int *n) {
    int32_t *t = malloc(sizeof *t * (size_t)(n_a + n_b + n_c));
    ck_assert_ptr_nonnull(t);
    if (n_a) memcpy(t, a, sizeof *t * (size_t)n_a);   /* an empty part may be NULL */
    if (n_b) memcpy(t + n_a, b, sizeof *t * (size_t)n_b);
    if (n_c) memcpy(t + n_a + n_b, c, sizeof *t * (size_t)n_c);
    *n = n_a + n_b + n_c;
    return t;
}

/* Six requests in five phases: [0] a long prompt A; [1] the second turn A +
 * answer + a question; [3] an unrelated prompt (it takes the empty slot
 * rather than the second turn's for the chat template they share); [2] half
 * of A and another question (from the second turn's slot); then together [4]
 * the second turn again (half of A from [2]'s slot) and [5] [2] again, which
 * copies [4]'s committed entries from its running slot.  Once cold (no cache, plain: the
 * reference) and once with the cache (with PPD when asked, its guesses from
 * the reference so that multi-token steps commit compacted entries). */
static void pc_case(bool use_ppd, bool seeded) {
    struct eng_engine *e = open_engine_rows(2, 64);
    struct ppd_fx px;
    if (use_ppd) ppd_fx_open(&px, e, 20);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    if (seeded) { sp.temperature = 0.8f; sp.seed = 1234; }
    else sp.temperature = 0;
    int32_t *pr[6], *q1, *q2;
    int npr[6], nq1, nq2;
    chat_ids(e, prompts[2], &pr[0], &npr[0]);
    chat_ids(e, prompts[1], &pr[3], &npr[3]);
    chat_ids(e, prompts[0], &q1, &nq1);
    chat_ids(e, prompts[4], &q2, &nq2);
    const int half = npr[0] / 2;
    pr[2] = pc_cat(pr[0], half, q2, nq2, NULL, 0, &npr[2]);
    int32_t ref[6][32];
    int n_ref[6];
    for (int pass = 0; pass < 2; pass++) {
        const bool cache = pass == 1;
        memset(seen, 0, sizeof seen);
        struct eng_sched s;
        struct eng_sched_params p = {.max_rows = 64, .prefill_chunk = 16, .emit = on_event, .prefix_cache = cache};
        if (cache && use_ppd) {
            p.ppd = &px.ppd;
            p.ppd_guess_fn = oracle_guess;
            for (int i = 0; i < 6; i++) { oracle_ids[i] = ref[i]; oracle_n[i] = n_ref[i]; }
        }
        ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
        pc_phase(&s, e->tok, pr, npr, 0, 1, &sp);
        if (!cache) {
            pr[1] = pc_cat(pr[0], npr[0], seen[0].ids, seen[0].n_tokens, q1, nq1, &npr[1]);
            pr[4] = pc_cat(pr[1], npr[1], NULL, 0, NULL, 0, &npr[4]);
            pr[5] = pc_cat(pr[2], npr[2], NULL, 0, NULL, 0, &npr[5]);
        }
        pc_phase(&s, e->tok, pr, npr, 1, 2, &sp);
        pc_phase(&s, e->tok, pr, npr, 3, 4, &sp);
        pc_phase(&s, e->tok, pr, npr, 2, 3, &sp);
        pc_phase(&s, e->tok, pr, npr, 4, 6, &sp);
        ck_assert_int_eq(eng_sched_n_running(&s), 0);
        ck_assert_int_eq(eng_sched_kv_used(&s), 0);
        long long hits = 0, queries = 0;
        for (int i = 0; i < 6; i++) {
            hits += seen[i].n_cached;
            queries += npr[i];
            if (!cache) {
                ck_assert_int_eq(seen[i].n_cached, 0);
                n_ref[i] = seen[i].n_tokens;
                memcpy(ref[i], seen[i].ids, sizeof *ref[i] * (size_t)n_ref[i]);
                continue;
            }
            ck_assert_msg(seen[i].n_tokens == n_ref[i], "request %d: %d tokens cold, %d with the cache", i, n_ref[i],
                          seen[i].n_tokens);
            for (int k = 0; k < n_ref[i]; k++)
                ck_assert_msg(seen[i].ids[k] == ref[i][k], "request %d token %d: %d cold, %d with the cache", i, k,
                              ref[i][k], seen[i].ids[k]);
        }
        if (cache) {
            /* the second turn finds A and (all but the last token of) its answer */
            ck_assert_int_ge(seen[1].n_cached, npr[0]);
            ck_assert_int_le(seen[1].n_cached, npr[0] + n_ref[0]);
            if (!use_ppd) ck_assert_int_eq(seen[1].n_cached, npr[0] + n_ref[0] - 1);
            ck_assert_int_eq(seen[3].n_cached, 0);      /* the empty slot */
            ck_assert_int_eq(seen[2].n_cached, half);   /* from the second turn's slot */
            ck_assert_int_eq(seen[4].n_cached, half);   /* from [2]'s slot */
            ck_assert_int_eq(seen[5].n_cached, half);   /* copied from [4]'s running slot */
            ck_assert_int_eq(s.stats.pc_hits, hits);
            ck_assert_int_eq(s.stats.pc_queries, queries);
            /* idle: both slots free and keeping what their last requests committed */
            ck_assert_int_eq(s.stats.pc_slots, 2);
            ck_assert_int_eq(s.stats.pc_tokens, (long)s.pc_len[0] + s.pc_len[1]);
            ck_assert_int_gt(s.stats.pc_tokens, npr[2]);
            ck_assert_int_le(s.stats.pc_tokens, 2L * e->kv.max_seq);
            if (use_ppd) ck_assert_int_gt(s.stats.ppd_accepted, 0);
            printf("prefix cache%s%s: %lld of %lld prompt tokens from the cache\n", use_ppd ? " PPD" : "",
                   seeded ? " seeded" : " greedy", hits, queries);
            eng_sched_prefix_clear(&s);
            ck_assert_int_eq(s.stats.pc_slots, 0);
            ck_assert_int_eq(s.stats.pc_tokens, 0);
        } else {
            ck_assert_int_eq(s.stats.pc_queries + s.stats.pc_hits + s.stats.pc_slots, 0);
        }
        eng_sched_free(&s);
    }
    memset(oracle_ids, 0, sizeof oracle_ids);
    for (int i = 0; i < 6; i++) free(pr[i]);
    free(q1);
    free(q2);
    if (use_ppd) ppd_fx_close(&px);
    eng_engine_close(e);
}

START_TEST(test_prefix_cache_equals_cold) {
    pc_case(false, false);
    pc_case(false, true);
}
END_TEST

START_TEST(test_prefix_cache_ppd_equals_cold) {
    pc_case(true, false);
    pc_case(true, true);
}
END_TEST

/* ---- the block store behind the slots ---- */

/* Five conversations: one long paragraph, then a question of their own, so
 * their chains share their first blocks and branch. */
static const char *store_questions[5] = {
    "Now tell me which of the numbers you picked is the largest, and how you would check that it has no divisor "
    "other than one and itself without a calculator.",
    "After that, write a short poem about prime numbers for a school notice board, four lines long, with a rhyme "
    "in the second and fourth lines.",
    "Also explain the difference between a prime number and an odd number, since many children think that every "
    "odd number must be prime.",
    "Finally, suggest a game that two children could play with a pair of dice to practise spotting prime numbers "
    "during a rainy afternoon at home.",
    "Then describe how the ancient Greeks found prime numbers with a sieve, step by step, as if you were talking "
    "to a curious ten-year-old.",
};

enum store_mode { STORE_ROOMY, STORE_TINY, STORE_COLLIDE };

/* The block store's invariants (prefix_store.h): within its size, every block
 * held hangs on a whole chain from block 0, referenced by its children only
 * (nothing is pinned between steps). */
static void check_store_whole(const struct eng_sched *s) {
    const struct eng_pstore *ps = &s->store;
    ck_assert_int_le(ps->n_used, ps->cap);
    ck_assert_int_eq(s->stats.pc_store_blocks, ps->n_used);
    ck_assert_int_eq(ps->pinned, -1);
    for (int i = 0; i < ps->cap; i++) {
        if (!ps->used[i]) continue;
        int depth = 0;
        for (int j = ps->parent[i]; j >= 0; j = ps->parent[j]) {
            ck_assert_msg(ps->used[j], "block %d hangs on block %d, which is not held", i, j);
            ck_assert_int_lt(++depth, ps->cap);
        }
        int children = 0;
        for (int j = 0; j < ps->cap; j++) children += ps->used[j] && ps->parent[j] == i;
        ck_assert_int_eq(ps->ref[i], children);
    }
}

/* Requests [0, 5): the conversations' first turns one after another through
 * two slots (each evicts an earlier one from its slot, which stores it);
 * [5, 10): their second turns (first prompt, its answer, another question).
 * Once cold (no cache at all, plain: the reference), then with the slots and
 * the store in each mode: roomy (64 blocks; every second turn finds at least
 * its first prompt's full blocks in the store), tiny (5 blocks: evictions) and
 * colliding (roomy, every hash equal). */
static void store_case(bool use_ppd, bool seeded, const enum store_mode *modes, int n_modes) {
    struct eng_engine *e = open_engine_rows(2, 64);
    struct ppd_fx px;
    if (use_ppd) ppd_fx_open(&px, e, 20);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    if (seeded) { sp.temperature = 0.8f; sp.seed = 4321; }
    else sp.temperature = 0;
    int32_t *pr[10], *follow;
    int npr[10], n_follow;
    for (int i = 0; i < 5; i++) {
        char text[2048];
        snprintf(text, sizeof text, "%s %s", prompts[2], store_questions[i]);
        chat_ids(e, text, &pr[i], &npr[i]);
        ck_assert_int_ge(npr[i], 3 * ENG_PSTORE_BLOCK);
    }
    chat_ids(e, prompts[4], &follow, &n_follow);
    const size_t block = eng_pstore_block_bytes(&e->kv);
    int32_t ref[10][32];
    int n_ref[10];
    for (int pass = 0; pass <= n_modes; pass++) {
        const bool cache = pass > 0;
        const enum store_mode mode = cache ? modes[pass - 1] : STORE_ROOMY;
        memset(seen, 0, sizeof seen);
        struct eng_sched s;
        struct eng_sched_params p = {.max_rows = 64, .prefill_chunk = 16, .emit = on_event, .prefix_cache = cache,
                                     .prefix_store_bytes = cache ? (mode == STORE_TINY ? 5 : 64) * block : 0};
        if (cache && use_ppd) {
            p.ppd = &px.ppd;
            p.ppd_guess_fn = oracle_guess;
            for (int i = 0; i < 10; i++) { oracle_ids[i] = ref[i]; oracle_n[i] = n_ref[i]; }
        }
        ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
        ck_assert_int_eq(s.store.cap, cache ? (mode == STORE_TINY ? 5 : 64) : 0);
        if (mode == STORE_COLLIDE) s.store.hash_mask = 0;
        for (int i = 0; i < 5; i++) {
            pc_phase(&s, e->tok, pr, npr, i, i + 1, &sp);
            if (cache) check_store_whole(&s);
        }
        if (!cache)
            for (int i = 0; i < 5; i++)
                pr[5 + i] = pc_cat(pr[i], npr[i], seen[i].ids, seen[i].n_tokens, follow, n_follow, &npr[5 + i]);
        const long long store_hits = s.stats.pc_store_hits;
        if (cache) ck_assert_int_gt(s.stats.pc_store_saved, 0);
        for (int i = 5; i < 10; i++) {
            pc_phase(&s, e->tok, pr, npr, i, i + 1, &sp);
            if (cache) check_store_whole(&s);
        }
        long long want = 0;
        for (int i = 0; i < 10; i++) {
            if (!cache) {
                ck_assert_int_eq(seen[i].n_cached, 0);
                n_ref[i] = seen[i].n_tokens;
                memcpy(ref[i], seen[i].ids, sizeof *ref[i] * (size_t)n_ref[i]);
                continue;
            }
            ck_assert_msg(seen[i].n_tokens == n_ref[i], "mode %d request %d: %d tokens cold, %d with the store", mode,
                          i, n_ref[i], seen[i].n_tokens);
            for (int k = 0; k < n_ref[i]; k++)
                ck_assert_msg(seen[i].ids[k] == ref[i][k], "mode %d request %d token %d: %d cold, %d with the store",
                              mode, i, k, ref[i][k], seen[i].ids[k]);
            if (i < 5) continue;
            const int full = npr[i - 5] / ENG_PSTORE_BLOCK * ENG_PSTORE_BLOCK;
            want += full;
            if (mode != STORE_TINY) ck_assert_int_ge(seen[i].n_cached, full);
        }
        if (cache) {
            const long long got = s.stats.pc_store_hits - store_hits;
            printf("block store%s%s mode %d: second turns took %lld prompt tokens from the store (first prompts' "
                   "full blocks: %lld), %lld blocks stored, %lld evicted\n", use_ppd ? " PPD" : "",
                   seeded ? " seeded" : " greedy", mode, got, want, s.stats.pc_store_saved, s.stats.pc_store_evicted);
            ck_assert_int_le(s.stats.pc_store_hits, s.stats.pc_hits);
            ck_assert_int_eq(s.stats.pc_store_cap, s.store.cap);
            ck_assert_uint_eq(s.stats.pc_store_block_bytes, block);
            if (mode == STORE_TINY) {
                ck_assert_int_gt(s.stats.pc_store_evicted, 0);
                ck_assert_int_le(s.stats.pc_store_blocks, 5);
            } else {
                ck_assert_int_ge(got, want);
                ck_assert_int_eq(s.stats.pc_store_evicted, 0);
            }
            if (use_ppd) ck_assert_int_gt(s.stats.ppd_accepted, 0);
        }
        eng_sched_free(&s);
    }
    memset(oracle_ids, 0, sizeof oracle_ids);
    for (int i = 0; i < 10; i++) free(pr[i]);
    free(follow);
    if (use_ppd) ppd_fx_close(&px);
    eng_engine_close(e);
}

START_TEST(test_prefix_store_second_turns_equal_cold) {
    const enum store_mode all[] = {STORE_ROOMY, STORE_TINY, STORE_COLLIDE}, roomy[] = {STORE_ROOMY};
    store_case(false, false, all, 3);
    store_case(false, true, roomy, 1);
}
END_TEST

START_TEST(test_prefix_store_ppd_equals_cold) {
    const enum store_mode modes[] = {STORE_ROOMY, STORE_TINY};
    store_case(true, false, modes, 2);
    store_case(true, true, modes, 1);
}
END_TEST

/* Hold-back.  P is a long prompt, B is P and a question, C is unrelated;
 * three slots, 16-row chunks.  mode 0: the three arrive together: P and C
 * are admitted at once (C is never held), B waits while P prefills and then
 * copies all of P's entries.  mode 1: P is cancelled while B waits; B goes on
 * from what P's slot kept.  mode 2: B is cancelled while it waits.  Every
 * finished request's tokens equal a cold run's (no cache, all three batched,
 * which equals each alone). */
static void pc_hold_case(bool use_ppd, bool seeded, int mode) {
    struct eng_engine *e = open_engine_rows(3, 96);
    struct ppd_fx px;
    if (use_ppd) ppd_fx_open(&px, e, 20);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    if (seeded) { sp.temperature = 0.8f; sp.seed = 99; }
    else sp.temperature = 0;
    int32_t *a, *b, *q, *pr[3];
    int na, nb, nq, npr[3];
    chat_ids(e, prompts[2], &a, &na);
    chat_ids(e, prompts[0], &b, &nb);
    chat_ids(e, prompts[4], &q, &nq);
    pr[0] = pc_cat(a, na, b, nb, NULL, 0, &npr[0]);
    pr[1] = pc_cat(pr[0], npr[0], q, nq, NULL, 0, &npr[1]);
    chat_ids(e, prompts[1], &pr[2], &npr[2]);
    ck_assert_int_ge(npr[0], ENG_SCHED_HOLD_MIN + 16);
    int32_t ref[3][32];
    int n_ref[3];
    for (int pass = 0; pass < 2; pass++) {
        const bool cache = pass == 1;
        memset(seen, 0, sizeof seen);
        struct eng_sched s;
        struct eng_sched_params p = {.max_rows = 96, .prefill_chunk = 16, .emit = on_event, .prefix_cache = cache};
        if (cache && use_ppd) {
            p.ppd = &px.ppd;
            p.ppd_guess_fn = oracle_guess;
            for (int i = 0; i < 3; i++) { oracle_ids[i] = ref[i]; oracle_n[i] = n_ref[i]; }
        }
        ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
        struct eng_sched_req *reqs[3];
        const int n_req = cache && mode > 0 ? 2 : 3;
        for (int i = 0; i < n_req; i++) {
            struct eng_sampler_params spi = sp;
            spi.seed += (uint64_t)i;
            ck_assert_int_eq(eng_sched_req_init(&reqs[i], e->tok, pr[i], npr[i], 24, &spi, NULL, 0), 0);
            reqs[i]->user = (void *)(intptr_t)i;
            eng_sched_submit(&s, reqs[i]);
        }
        ck_assert_int_gt(eng_sched_step(&s), 0);
        if (cache) {
            /* P (and C) admitted in the first step; B waits */
            ck_assert_int_eq(eng_sched_n_running(&s), n_req - 1);
            ck_assert_int_eq(eng_sched_n_waiting(&s), 1);
            ck_assert_int_eq(reqs[1]->state, ENG_SEQ_WAITING);
            ck_assert_int_eq(s.stats.pc_held, 1);
            if (mode == 1) atomic_store(&reqs[0]->cancel, true);
            if (mode == 2) atomic_store(&reqs[1]->cancel, true);
        }
        for (int steps = 0; !eng_sched_idle(&s); steps++) {
            ck_assert_int_ge(eng_sched_step(&s), 0);
            ck_assert_int_lt(steps, 1000);
        }
        for (int i = 0; i < n_req; i++) {
            ck_assert_int_eq(seen[i].done, 1);
            const bool cancelled = cache && mode > 0 && i == mode - 1;
            if (cancelled) ck_assert_int_eq(seen[i].finish, ENG_SCHED_FINISH_CANCELLED);
            if (!cache) {
                n_ref[i] = seen[i].n_tokens;
                memcpy(ref[i], seen[i].ids, sizeof *ref[i] * (size_t)n_ref[i]);
            } else if (!cancelled) {
                ck_assert_msg(seen[i].n_tokens == n_ref[i], "request %d: %d tokens cold, %d held", i, n_ref[i],
                              seen[i].n_tokens);
                for (int k = 0; k < n_ref[i]; k++)
                    ck_assert_msg(seen[i].ids[k] == ref[i][k], "request %d token %d: %d cold, %d held", i, k,
                                  ref[i][k], seen[i].ids[k]);
            }
            eng_sched_req_free(reqs[i]);
        }
        if (cache) {
            ck_assert_int_eq(seen[0].n_cached, 0);
            if (mode == 0) {
                ck_assert_int_eq(seen[1].n_cached, npr[0]);   /* all of P, copied from its slot */
                ck_assert_int_eq(seen[2].n_cached, 0);
            }
            if (mode == 1) ck_assert_int_eq(seen[1].n_cached, 16);   /* P's one chunk, kept in its slot */
            ck_assert_int_eq(s.stats.pc_held, 1);
            ck_assert_int_eq(eng_sched_kv_used(&s), 0);
        } else {
            ck_assert_int_eq(s.stats.pc_held, 0);
        }
        eng_sched_free(&s);
    }
    memset(oracle_ids, 0, sizeof oracle_ids);
    for (int i = 0; i < 3; i++) free(pr[i]);
    free(a);
    free(b);
    free(q);
    if (use_ppd) ppd_fx_close(&px);
    eng_engine_close(e);
}

START_TEST(test_prefix_cache_hold) {
    pc_hold_case(false, false, 0);
    pc_hold_case(true, true, 0);
    pc_hold_case(false, false, 1);
    pc_hold_case(true, false, 2);
}
END_TEST

/* The engine thread (engine/decode/runner.c): requests submitted from this thread,
 * some while it already runs, give exactly the tokens each gives alone; the
 * prepare hook runs once, before any step; every step ends with step_done;
 * stop finishes what was queued.  The callbacks only record (they run on the
 * engine thread); the checks follow the join. */
struct runner_log {
    int n_prepare, steps_before_prepare, n_step_done, n_failed_steps;
    int events_at_step_end;          /* events seen by the time of the last step_done */
    int n_events;
};
static struct runner_log runner_log;
static int32_t runner_ids[MAX_REQ][64];
static int runner_n[MAX_REQ], runner_done[MAX_REQ];

static void runner_prepare(void *user) {
    (void)user;
    runner_log.n_prepare++;
}

static void runner_step_done(void *user, int rc) {
    (void)user;
    if (!runner_log.n_prepare) runner_log.steps_before_prepare++;
    if (rc < 0) runner_log.n_failed_steps++;
    runner_log.n_step_done++;
    runner_log.events_at_step_end = runner_log.n_events;
}

static void runner_on_event(void *user, const struct eng_sched_event *ev) {
    (void)user;
    const int i = (int)(intptr_t)ev->req->user;
    for (int k = 0; k < ev->n_ids && runner_n[i] < 64; k++) runner_ids[i][runner_n[i]++] = ev->ids[k];
    if (ev->finish != ENG_SCHED_RUNNING) runner_done[i]++;
    runner_log.n_events++;
}

START_TEST(test_runner_equals_alone) {
    struct eng_engine *e = open_engine(4);
    struct eng_sampler_params greedy;
    eng_sampler_params_default(&greedy);
    greedy.temperature = 0;
    const int max_tokens = 20;
    int32_t *ids[N_PROMPT], ref[N_PROMPT][32];
    int n_ids[N_PROMPT], n_ref[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) {
        chat_ids(e, prompts[i], &ids[i], &n_ids[i]);
        n_ref[i] = solo(e, ids[i], n_ids[i], max_tokens, &greedy, ref[i]);
    }
    memset(&runner_log, 0, sizeof runner_log);
    memset(runner_n, 0, sizeof runner_n);
    memset(runner_done, 0, sizeof runner_done);
    struct eng_sched_req *reqs[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) {
        ck_assert_int_eq(eng_sched_req_init(&reqs[i], e->tok, ids[i], n_ids[i], max_tokens, &greedy, NULL, 0), 0);
        reqs[i]->user = (void *)(intptr_t)i;
    }
    struct eng_runner r;
    const struct eng_sched_params p = {.max_rows = 64, .prefill_chunk = 16, .emit = runner_on_event};
    const struct eng_runner_hooks h = {.prepare = runner_prepare, .step_done = runner_step_done};
    ck_assert_int_eq(eng_runner_start(&r, &e->fwd, &e->kv, e->tok, &p, &h), 0);
    eng_runner_submit(&r, reqs, 2);   /* two together, then the rest one by one while it runs */
    for (int i = 2; i < N_PROMPT; i++) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        eng_runner_submit(&r, &reqs[i], 1);
    }
    eng_runner_stop(&r);
    ck_assert_int_eq(runner_log.n_prepare, 1);
    ck_assert_int_eq(runner_log.steps_before_prepare, 0);
    ck_assert_int_eq(runner_log.n_failed_steps, 0);
    ck_assert_int_gt(runner_log.n_step_done, 0);
    ck_assert_int_eq(runner_log.events_at_step_end, runner_log.n_events);   /* the last step's events precede its step_done */
    for (int i = 0; i < N_PROMPT; i++) {
        ck_assert_int_eq(runner_done[i], 1);
        ck_assert_int_eq(runner_n[i], n_ref[i]);
        for (int k = 0; k < n_ref[i]; k++)
            ck_assert_msg(runner_ids[i][k] == ref[i][k], "prompt %d token %d: %d alone, %d on the engine thread", i, k,
                          ref[i][k], runner_ids[i][k]);
        eng_sched_req_free(reqs[i]);
        free(ids[i]);
    }
    eng_runner_stop(&r);   /* a second stop does nothing */
    eng_engine_close(e);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sched");
    TCase *tc = tcase_create("sched");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, test_stop_strings);
    tcase_add_test(tc, test_greedy_batched_equals_alone);
    tcase_add_test(tc, test_seeded_batched_equals_alone);
    tcase_add_test(tc, test_cancel_frees_slot_and_full_waits);
    tcase_add_test(tc, test_ppd_sizing_and_penalties);
    tcase_add_test(tc, test_ppd_greedy_equals_plain);
    tcase_add_test(tc, test_ppd_per_batch_trees_equal_plain);
    tcase_add_test(tc, test_ppd_seeded_equals_plain);
    tcase_add_test(tc, test_ppd_committed_adapter_batched);
    tcase_add_test(tc, test_ppd_truncates_like_plain);
    tcase_add_test(tc, test_ppd_cancel_frees_slot);
    tcase_add_test(tc, test_logprobs_ppd_equal_plain);
    tcase_add_test(tc, test_logprobs_committed_adapter);
    tcase_add_test(tc, test_prefix_cache_equals_cold);
    tcase_add_test(tc, test_prefix_cache_ppd_equals_cold);
    tcase_add_test(tc, test_prefix_cache_hold);
    tcase_add_test(tc, test_prefix_store_second_turns_equal_cold);
    tcase_add_test(tc, test_prefix_store_ppd_equals_cold);
    tcase_add_test(tc, test_runner_equals_alone);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
