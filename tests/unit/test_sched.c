/* test_sched.c — continuous batching (engine/sched.c) and stop strings
 * (engine/textout.c) on the default model.
 *
 * The central check: N sequences run together through the scheduler (sharing
 * batches, prompts split into chunks, admitted as slots free up) produce
 * exactly the tokens each produces alone through eng_generate, greedy and
 * seeded sampling alike.  Rows are batch-independent, so this is exact.
 * Then: cancellation frees the slot at the next step; requests wait while
 * every slot is busy; stop strings split across tokens are held back.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/engine.h"
#include "engine/err.h"
#include "engine/generate.h"
#include "engine/sched.h"
#include "engine/textout.h"
#include "engine/tokenizer.h"

#define MAX_REQ 8

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
};

static struct seen seen[MAX_REQ];

static void on_event(void *user, const struct eng_sched_event *ev) {
    (void)user;
    struct seen *s = &seen[(intptr_t)ev->req->user];
    ck_assert_int_eq(s->done, 0);
    memcpy(s->text + s->n_text, ev->text, ev->n_text);
    s->n_text += ev->n_text;
    memcpy(s->ids + s->n_tokens, ev->ids, sizeof *ev->ids * (size_t)ev->n_ids);
    s->n_tokens += ev->n_ids;
    s->n_events++;
    if (ev->finish != ENG_SCHED_RUNNING) {
        s->done = 1;
        s->finish = ev->finish;
        s->n_gen = ev->n_gen;
    }
}

static struct eng_engine *open_engine(int n_slot) {
    struct eng_engine_params ep = {.model_path = test_model_path(), .n_threads = 1, .n_ctx = 512,
                                   .n_slot = n_slot, .max_rows = 64};
    char err[512];
    struct eng_engine *e = NULL;
    int rc = eng_engine_open(&e, &ep, err, sizeof err);
    ck_assert_msg(rc == 0, "open: %s", err);
    return e;
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

static void run_together(const struct eng_sampler_params *sp_base, int seed_step) {
    struct eng_engine *e = open_engine(4);
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
    /* 64 rows per step, 16 per prefilling sequence: the long prompt takes
     * several steps while the others decode; 5 requests for 4 slots. */
    struct eng_sched_params p = {.max_rows = 64, .prefill_chunk = 16, .emit = on_event};
    ck_assert_int_eq(eng_sched_init(&s, &e->fwd, &e->kv, e->tok, &p), 0);
    struct eng_sched_req *reqs[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) {
        struct eng_sampler_params sp = *sp_base;
        sp.seed += (uint64_t)(i * seed_step);
        ck_assert_int_eq(eng_sched_req_init(&reqs[i], e->tok, ids[i], n_ids[i], max_tokens, &sp, NULL, 0), 0);
        reqs[i]->user = (void *)(intptr_t)i;
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
    for (int i = 0; i < N_PROMPT; i++) {
        ck_assert_int_eq(seen[i].done, 1);
        ck_assert_int_eq(seen[i].n_tokens, n_ref[i]);
        ck_assert_int_eq(seen[i].n_gen, n_ref[i]);
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
    eng_sched_free(&s);
    eng_engine_close(e);
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

START_TEST(test_cancel_frees_slot_and_full_waits) {
    struct eng_engine *e = open_engine(2);
    struct eng_sampler_params sp;
    eng_sampler_params_default(&sp);
    sp.temperature = 0;
    int32_t *ids[3], ref[40];
    int n_ids[3];
    for (int i = 0; i < 3; i++) chat_ids(e, prompts[i == 2 ? 4 : i], &ids[i], &n_ids[i]);
    int n_ref = solo(e, ids[2], n_ids[2], 30, &sp, ref);
    memset(seen, 0, sizeof seen);
    struct eng_sched s;
    struct eng_sched_params p = {.emit = on_event};
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
    eng_sched_free(&s);
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

int main(void) {
    Suite *s = suite_create("sched");
    TCase *tc = tcase_create("sched");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_stop_strings);
    tcase_add_test(tc, test_greedy_batched_equals_alone);
    tcase_add_test(tc, test_seeded_batched_equals_alone);
    tcase_add_test(tc, test_cancel_frees_slot_and_full_waits);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
