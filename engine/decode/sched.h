/* sched.h — continuous batching: many sequences, one forward pass per step.
 *
 * Design note.  A request (eng_sched_req) is built by the submitter with its
 * prompt ids, sampler parameters, token limit and stop strings, and handed to
 * eng_sched_submit; it waits in a FIFO until a KV slot is free.  Each
 * eng_sched_step():
 *   1. finishes cancelled requests (waiting or running) and frees their slots,
 *   2. admits waiting requests into free slots (FIFO),
 *   3. builds one eng_batch: every decoding sequence adds its rows first (one
 *      row for plain decoding; a PPD tree later), then prefilling sequences
 *      share what is left of max_rows evenly, at most prefill_chunk each, so a
 *      long prompt never stalls the running streams,
 *   4. runs one eng_forward_run,
 *   5. lets every sequence in the batch consume its logits rows: commit its KV
 *      rows, sample (per-request seeded RNG), detokenize, match stop strings,
 *      and emit one event per sequence per step.
 * Steps 3 and 5 are per-sequence "add rows / consume logits" functions, the
 * shape PPD plugs into.  Rows of different slots see only their own slot's
 * KV, and every row's result is independent of the batch it shares, so a
 * sequence produces exactly the tokens eng_generate produces for it alone.
 *
 * PPD (params.ppd set): a request with use_ppd (the default) and no
 * presence/frequency penalty (ppd.c does not apply them) decodes with PPD.
 * Its prompt is prefilled in ordinary chunks up to its last token; the last
 * token and the N prompt-token rows are one further prefill step
 * (eng_ppd_seq_prefill_add, N + 1 rows; the prompt's last chunk joins them
 * when it fits in the step), which yields the first token and the first
 * guesses; from then on each step adds the sequence's tree
 * (eng_ppd_seq_step_rows rows) and emits 1..N+1 tokens.  Those tokens pass one
 * at a time through the same end-of-generation / stop-string / max_tokens
 * checks as a plain token, so nothing after the first finishing token is
 * delivered or counted.  The sequence's eng_ppd_seq is seeded with the
 * request's seed and makes one eng_sample draw per emitted token in order, as
 * the plain path does with r->rng: the same seed gives the same tokens with
 * or without PPD (and greedy is bit-exact).  Sizing: every slot must be able
 * to hold its largest tree in one step, so init refuses (ENG_E_RANGE)
 * n_slot * max(max_T, N + 1) > max_rows rather than letting trees wait or
 * shrink under load; step latency stays predictable.
 *
 * Ownership: the request belongs to the scheduler from submit until the event
 * with finish != ENG_SCHED_RUNNING has been emitted; after that the scheduler
 * never touches it and the submitter frees it.  `cancel` is the only field
 * another thread may write while the request is inside.
 *
 * Logprobs (asked per request): each delivered token's entry is computed
 * from the very logits row it was drawn from, in the step that drew it, while
 * the forward pass's logits are still there: the last row for plain decoding,
 * the tree row ppd.c names (eng_ppd_seq.emit_row) for PPD.  Rows do not
 * depend on the batch, so PPD and plain decoding report the same bits.
 * Prompt logprobs make the request's prefill chunks compute the logits of
 * every row.
 *
 * Usage counting: every sampled token is delivered and counted (the
 * end-of-generation token too, as `ppd generate` counts it), except that
 * nothing after a completed stop string or past max_tokens is.
 *
 * Prefix cache (params.prefix_cache).  The KV cache is laid out per slot,
 * so the cache is the slots themselves: when a request leaves its slot, the
 * slot keeps the tokens of its committed KV entries (prompt and delivered
 * tokens, never tree rows: ppd.c commits only the accepted path, compacted
 * to the front), and those entries stay where they are.  Admission gives a
 * request the free slot whose kept tokens share the longest prefix with its
 * prompt (ties, and no match at all: the least recently used slot, so the
 * others keep their entries longest; an empty slot rather than a match that
 * would discard more kept entries than it reuses).  When a running
 * sequence's committed entries match longer (a request arriving while
 * another with the same system prompt runs), they are copied into the slot
 * instead, one buf_copy per layer for K and for V.  The request's KV length
 * and n_prefilled start there, and it prefills only the rest.
 * A request whose prompt shares at least ENG_SCHED_HOLD_MIN more tokens with
 * a sequence still prefilling (or admitted ahead of it in the same step)
 * than with anything cached is held back, keeping its place in the queue
 * while requests behind it are admitted, until that prefill has committed
 * the shared part; then it copies those entries as above.  So clients that
 * arrive together with one long system prompt compute it once.  The wait is
 * bounded (sched_hold), a held request is cancelled like any waiting one, and
 * a request with no such match is never held.  At least the last prompt token is
 * always computed, since its logits are needed (PPD: it goes with the prompt
 * rows as usual).  A K/V entry depends only on its token, its position and
 * the entries before it, and rows do not depend on the batch, so a hit gives
 * exactly the tokens of a cold prefill.  Requests with prompt logprobs do
 * not look up (every prompt row's logits are wanted).  Entries of a request
 * that failed are dropped.  Memory: one token id per KV entry, allocated at
 * init.
 * Behind the slots sits a block store (params.prefix_store_bytes,
 * prefix_store.h): before a new request overwrites kept entries it does not
 * reuse, the slot's full 32-token blocks are copied into the store (those
 * held already are skipped), so a conversation whose slot was taken keeps its
 * prefix.  At admission the store's longest chain for the prompt is compared
 * with the best slot and the best running sequence; when it is the longest,
 * its blocks are copied into the request's slot (an empty slot when there is
 * one, else the best-matching slot, which then copies only the blocks past
 * what it holds) and the prefill starts after them.  The same limits apply:
 * never the prompt's last token, never with prompt logprobs.
 *
 * Not here: threads, queues, HTTP or JSON (server/), tree buffers and
 * verification (engine/ppd/ppd.c, reached through the per-sequence hooks).
 * Nothing allocates in a step, except that admitting a PPD request sets up
 * its eng_ppd_seq (candidate arrays, sampler scratch); when that fails the
 * request decodes plainly, which gives the same tokens.
 */
#ifndef PPD_SCHED_H
#define PPD_SCHED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/model/batch.h"
#include "engine/model/forward.h"
#include "engine/model/kv_cache.h"
#include "engine/decode/logprobs.h"
#include "engine/decode/prefix_store.h"
#include "engine/ppd/ppd.h"
#include "engine/decode/sampler.h"
#include "engine/decode/textout.h"

struct tok;

enum eng_sched_finish {
    ENG_SCHED_RUNNING = 0,
    ENG_SCHED_FINISH_LENGTH,      /* max_tokens reached */
    ENG_SCHED_FINISH_EOG,         /* end-of-generation token */
    ENG_SCHED_FINISH_STOP,        /* a stop string completed */
    ENG_SCHED_FINISH_CONTEXT,     /* the slot's context is full */
    ENG_SCHED_FINISH_CANCELLED,   /* cancel was set */
    ENG_SCHED_FINISH_ERROR,       /* the forward pass failed (err holds the code) */
};

/* OpenAI's finish_reason for a finish: "stop", "length", or NULL when the
 * request produced no normal end (cancelled, error). */
const char *eng_sched_finish_reason(enum eng_sched_finish f);

/* A request waits for a sequence still prefilling when that sequence will
 * hold at least this many more of its prompt tokens than anything cached now. */
#define ENG_SCHED_HOLD_MIN 64

enum eng_sched_state { ENG_SEQ_WAITING = 0, ENG_SEQ_PREFILL, ENG_SEQ_DECODE, ENG_SEQ_DONE };

struct eng_sched_req {
    /* set by eng_sched_req_init, read-only afterwards */
    int32_t *prompt;                 /* [n_prompt] */
    int n_prompt;
    int max_tokens;                  /* >= 1 */
    bool ignore_eog;
    struct eng_sampler_params sp;
    void *user;                      /* the submitter's handle, passed back in events */
    double t_submit;                 /* eng_now_s() at submit */
    /* any thread */
    atomic_bool cancel;
    /* scheduler state */
    enum eng_sched_state state;
    int slot;
    int n_prefilled;                 /* prompt tokens whose K/V are committed */
    int32_t *out_ids;                /* [max_tokens] generated tokens */
    int n_gen;
    struct eng_rng rng;
    struct eng_textout text;
    double t_admit;
    int row0, n_rows;                /* this step's rows in the batch */
    struct eng_sched_req *next;      /* waiting FIFO */
    /* set by the submitter before submit; eng_sched_req_init sets true */
    bool use_ppd;                    /* decode with the scheduler's PPD when it has one */
    /* scheduler state */
    bool ppd_on;                     /* decided at admission: this request decodes with PPD */
    int add_err;                     /* this step's rows could not be added (ENG_E_*) */
    int ppd_depth;                   /* guesses this step's tree can accept at most (0: a plain step) */
    struct eng_ppd_seq ppd;          /* with ppd_on, from admission to retirement */
    /* logprobs (eng_sched_req_want_logprobs; off by default, and then free) */
    int n_top_logprobs;              /* -1: none; else alternatives per token, 0..ENG_LOGPROBS_MAX_TOP */
    struct eng_logprob *lp_step;     /* [ENG_PPD_MAX_PROMPT + 2] this step's delivered tokens */
    struct eng_logprob *lp_prompt;   /* [n_prompt] with prompt logprobs: [i] for prompt token i >= 1
                                        ([0] holds only the first token's id) */
    /* per-request figures (scheduler state, reported in every event) */
    double t_first;                  /* eng_now_s() when the first token was delivered (0: not yet) */
    int ppd_steps, ppd_drafted, ppd_accepted;   /* this request's PPD steps, as eng_sched_stats counts them */
    int n_cached;                    /* prompt tokens taken from the prefix cache at admission */
    int hold_left;                   /* waiting: steps it may still be held back (0: not held yet, -1: never) */
};

/* Allocates the request and its buffers (prompt copied).  max_tokens >= 1. */
int eng_sched_req_init(struct eng_sched_req **out, const struct tok *tok, const int32_t *prompt, int n_prompt,
                       int max_tokens, const struct eng_sampler_params *sp, const char *const *stop, int n_stop);
void eng_sched_req_free(struct eng_sched_req *r);   /* accepts NULL */

/* Ask for logprobs (before submit): for every delivered token, the
 * log-probability of the model's raw distribution at its position and the
 * n_top (0..ENG_LOGPROBS_MAX_TOP) most likely tokens there; with prompt, also
 * for every prompt token after the first (the prefill then computes the
 * logits of every prompt row).  ENG_E_RANGE, ENG_E_NOMEM. */
int eng_sched_req_want_logprobs(struct eng_sched_req *r, int n_top, bool prompt);

/* What one sequence delivered in one step. */
struct eng_sched_event {
    struct eng_sched_req *req;
    const int32_t *ids;              /* tokens delivered this step (req->out_ids tail) */
    int n_ids;
    const char *text;                /* text released this step (may be empty) */
    size_t n_text;
    enum eng_sched_finish finish;    /* not RUNNING: the request's last event */
    int err;                         /* ENG_E_* with ENG_SCHED_FINISH_ERROR */
    int n_prompt, n_gen;             /* usage so far */
    double queue_s;                  /* submit to admission (0 if never admitted) */
    /* with logprobs: lp[0..n_ids) for ids; lp_prompt[1..n_prompt) once, in the
     * event that delivers the first token (NULL otherwise) */
    const struct eng_logprob *lp;
    const struct eng_logprob *lp_prompt;
    /* this request's figures so far (eng_now_s() times; 0: not yet) */
    double t_admit, t_first, t_emit;
    int ppd_steps, ppd_drafted, ppd_accepted;
    int n_cached;                    /* prompt tokens taken from the prefix cache */
};

/* Called on the scheduler's thread; must not call back into the scheduler. */
typedef void (*eng_sched_emit_fn)(void *user, const struct eng_sched_event *ev);

struct eng_sched_params {
    int n_slot;                      /* slots used (<= kv->n_slot); 0: all */
    int max_rows;                    /* rows per step (<= forward max_rows); 0: forward max_rows */
    int prefill_chunk;               /* rows per sequence per step while prefilling; 0: max_rows */
    eng_sched_emit_fn emit;
    void *user;
    /* PPD (optional; all zero: plain decoding for everyone) */
    const struct eng_ppd *ppd;       /* not owned; NULL: no PPD.  With ppd_by_batch, the widest
                                        of them (sequences are sized for it) */
    /* not owned; NULL: ppd for every step.  Else [n_slot + 1]: the trees (same
     * adapter as ppd) for a step with b sequences holding slots (decoding and
     * prefilling: counting the prefilling ones keeps room for their rows),
     * NULL for one plain row per decoding sequence (calibration's choice where
     * PPD does not pay).  Every b * rows(by_batch[b]) must fit max_rows. */
    const struct eng_ppd *const *ppd_by_batch;
    enum eng_ppd_accept ppd_accept;  /* EXACT (lossless, default) or TYPICAL (only for temperature > 0) */
    struct eng_ppd_typical ppd_typical;   /* eps 0: ppd.c's defaults */
    eng_ppd_guess_fn ppd_guess_fn;   /* tests: ppd.h's guess hook for every PPD sequence, user = req->user */
    bool prefix_cache;               /* keep finished sequences' KV in their slots for reuse (design note) */
    size_t prefix_store_bytes;       /* with prefix_cache: K/V bytes of the block store behind the slots
                                        (prefix_store.h); less than one block: no store */
};

struct eng_sched_stats {
    int n_rows;                      /* rows in the last step's batch */
    int n_decode, n_prefill;         /* sequences decoding / prefilling in it */
    double step_s;                   /* wall time of the last step */
    long long n_steps;
    /* PPD, cumulative.  A PPD step is one eng_ppd_seq_step_finish of one
     * sequence (a batched step holds one per PPD sequence).  Emitted tokens
     * are what the step produced, before stop-string truncation (usage counts
     * delivered tokens).  A step's accepted guesses are its accepted length
     * minus the root (ppd.c's last_acc - 1); it emitted accepted + 1 tokens,
     * except when its last accepted guess ended the sequence (end of
     * generation or max_tokens), then accepted.  So:
     *   sum hist[a] = ppd_steps,  sum a * hist[a] = ppd_emitted,
     *   sum accepted_pos[i] = ppd_accepted,  accepted_pos[i] >= accepted_pos[i+1],
 *   ppd_accepted <= ppd_draft_tokens <= N * ppd_steps. */
    long long ppd_seqs;                              /* requests admitted with PPD */
    long long ppd_steps;
    long long ppd_emitted;
    long long ppd_accepted;
    long long ppd_draft_tokens;      /* sum over steps of the tree's depth: guesses a step could accept */
    long long ppd_hist[ENG_PPD_MAX_PROMPT + 2];      /* [a]: steps that emitted a tokens, a = 1..N+1 */
    long long ppd_accepted_pos[ENG_PPD_MAX_PROMPT + 1];   /* [i]: steps whose i-th guess (i = 1..N) was accepted */
    /* prefix cache: cumulative prompt tokens looked up and found; now, free
     * slots that hold kept entries and those entries */
    long long pc_queries, pc_hits;
    long long pc_held;               /* requests held back for a prefix still being prefilled */
    int pc_slots;
    long pc_tokens;
    /* the block store: cumulative prompt tokens of requests admitted on its
     * match (part of pc_hits), blocks copied in and evicted; now, blocks held,
     * how many fit, and the bytes of one */
    long long pc_store_hits, pc_store_saved, pc_store_evicted;
    int pc_store_blocks, pc_store_cap;
    size_t pc_store_block_bytes;
};

struct eng_sched {
    struct eng_forward *f;
    struct eng_kv *kv;
    const struct tok *tok;
    struct eng_sched_params p;
    struct eng_batch batch;
    struct eng_sampler_scratch *scratch;
    float *pen_logits;               /* [n_vocab] penalised copy of a logits row */
    struct eng_sched_req **active;   /* [n_slot] admitted requests, admission order */
    int n_active;
    bool *slot_busy;                 /* [n_slot] */
    /* prefix cache (p.prefix_cache): what a free slot's KV entries hold */
    int32_t *pc_tok;                 /* (n_slot, max_seq) token of each kept entry */
    int *pc_len;                     /* [n_slot] kept entries (0 while the slot is busy) */
    long long *pc_stamp;             /* [n_slot] when the slot was last released (LRU) */
    long long pc_clock;
    struct eng_pstore store;         /* the block store (store.cap 0: none) */
    struct eng_sched_req *wait_head, *wait_tail;
    int n_waiting;
    struct eng_sched_stats stats;
};

/* ENG_E_RANGE when there are more slots than rows per step (each decoding
 * sequence needs one row every step), or, with p->ppd, when n_slot trees of
 * max(max_T, N + 1) rows do not fit in max_rows (logged with the figures). */
int eng_sched_init(struct eng_sched *s, struct eng_forward *f, struct eng_kv *kv, const struct tok *tok,
                   const struct eng_sched_params *p);
/* Frees the scheduler's memory; requests still inside are not emitted or
 * freed (cancel them and step until idle first). */
/* Replace the PPD trees (calibration, at start-up): only while no request
 * holds a slot (ENG_E_BUSY otherwise); the sizing rule is checked again
 * (ENG_E_RANGE).  widest NULL: no PPD. */
int eng_sched_set_ppd(struct eng_sched *s, const struct eng_ppd *widest, const struct eng_ppd *const *by_batch);
void eng_sched_free(struct eng_sched *s);   /* accepts NULL */

/* Forget every kept prefix (someone else wrote the slots' KV).  The block
 * store keeps its blocks: they are copies, whatever happens to the slots. */
void eng_sched_prefix_clear(struct eng_sched *s);

void eng_sched_submit(struct eng_sched *s, struct eng_sched_req *r);

/* One step (see the design note).  Returns the number of rows run (0 when
 * there was nothing to run), or a negative ENG_E_* code when the forward
 * pass failed; then every sequence in that batch has been finished with
 * ENG_SCHED_FINISH_ERROR and its slot freed. */
int eng_sched_step(struct eng_sched *s);

/* No request waiting or running. */
bool eng_sched_idle(const struct eng_sched *s);
int eng_sched_n_running(const struct eng_sched *s);
int eng_sched_n_waiting(const struct eng_sched *s);
/* KV entries committed over all slots, and the total. */
long eng_sched_kv_used(const struct eng_sched *s);
long eng_sched_kv_total(const struct eng_sched *s);

#endif
