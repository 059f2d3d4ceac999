/* metrics.c — the server's Prometheus metrics (text exposition format 0.0.4).
 *
 * Every value lives in struct srv_metrics, owned by the loop thread: request
 * and token figures are updated as the engine's events arrive, the engine's
 * own figures (running/waiting, KV use, step time) come in its per-step stats
 * event.  So nothing here is shared between threads.  Names as
 * docs/serving.md ("Metrics") lists them (prefix ppd_, vLLM's meanings).
 *
 * PPD (spec-decode) figures come from the scheduler's cumulative counters
 * (engine/decode/sched.h): a "draft" is one sequence's PPD step; its draft tokens are
 * the guesses its tree could accept at most (the tree's depth), so
 * accepted / draft tokens is the acceptance rate and 1 + accepted / drafts the
 * mean accepted length, as with vLLM.  Per position i = 1..N: steps whose
 * i-th guess was accepted.  The accepted-length histogram counts the tokens
 * each step emitted (bucket le="a": at most a tokens; its sum is the emitted
 * total).  Without PPD they stay 0 and the per-position family is absent.
 *
 * Not here: HTTP (http.c serves the text), per-request labels.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve.h"
#include "kernels/cpu/cpu_isa.h"

static const double ttft_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
static const double e2e_bounds[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
static const double step_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

#define HIST_INIT(h, b) do { (h).bounds = (b); (h).n_bounds = (int)(sizeof(b) / sizeof((b)[0])); } while (0)

void srv_metrics_init(struct srv_metrics *m) {
    memset(m, 0, sizeof *m);
    HIST_INIT(m->ttft, ttft_bounds);
    HIST_INIT(m->itl, itl_bounds);
    HIST_INIT(m->e2e, e2e_bounds);
    HIST_INIT(m->queue, ttft_bounds);
    HIST_INIT(m->step, step_bounds);
}

void srv_hist_observe(struct srv_hist *h, double v) {
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

struct mbuf {
    char *p;
    size_t n, cap;
    bool bad;
};

static void mb_printf(struct mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_printf(struct mbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) { b->bad = true; return; }
        if ((size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
        size_t nc = (b->cap + (size_t)k) * 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->bad = true; return; }
        b->p = np;
        b->cap = nc;
    }
}

static void mb_head(struct mbuf *b, const char *name, const char *type, const char *help) {
    mb_printf(b, "# HELP ppd_%s %s\n# TYPE ppd_%s %s\n", name, help, name, type);
}

static void mb_counter(struct mbuf *b, const char *name, const char *help, unsigned long long v) {
    mb_head(b, name, "counter", help);
    mb_printf(b, "ppd_%s %llu\n", name, v);
}

static void mb_gauge(struct mbuf *b, const char *name, const char *help, double v) {
    mb_head(b, name, "gauge", help);
    mb_printf(b, "ppd_%s %.17g\n", name, v);
}

static void mb_hist(struct mbuf *b, const char *name, const char *help, const struct srv_hist *h) {
    mb_head(b, name, "histogram", help);
    unsigned long long cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        mb_printf(b, "ppd_%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], cum);
    }
    cum += h->counts[h->n_bounds];
    mb_printf(b, "ppd_%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
    mb_printf(b, "ppd_%s_sum %.17g\nppd_%s_count %llu\n", name, h->sum, name, h->count);
}

static double rss_bytes(void) {
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp) return 0;
    long pages = 0, rss = 0;
    int k = fscanf(fp, "%ld %ld", &pages, &rss);
    fclose(fp);
    return k == 2 ? (double)rss * (double)sysconf(_SC_PAGESIZE) : 0;
}

static void mb_ppd(struct mbuf *b, const struct srv_metrics *m) {
    const struct eng_sched_stats *e = &m->eng;
    const int N = m->ppd_n_prompt;
    mb_gauge(b, "spec_decode_enabled", "1 when the server decodes with PPD (requests may still opt out).", N > 0);
    mb_counter(b, "spec_decode_num_requests_total", "Requests decoded with PPD.", (unsigned long long)e->ppd_seqs);
    mb_counter(b, "spec_decode_num_drafts_total", "PPD steps (one per sequence per batched step).",
               (unsigned long long)e->ppd_steps);
    mb_counter(b, "spec_decode_num_draft_tokens_total",
               "Guesses the PPD steps' trees could accept at most (the tree depth per step).",
               (unsigned long long)e->ppd_draft_tokens);
    mb_counter(b, "spec_decode_num_accepted_tokens_total", "Guessed tokens accepted by PPD verification.",
               (unsigned long long)e->ppd_accepted);
    mb_counter(b, "spec_decode_num_emitted_tokens_total",
               "Tokens emitted by PPD steps (accepted guesses plus one drawn token each), before stop-string truncation.",
               (unsigned long long)e->ppd_emitted);
    /* every position of the tree, or position 1 at zero with PPD off (a
     * dashboard shows 0, not "no data") */
    mb_head(b, "spec_decode_num_accepted_tokens_per_pos_total", "counter",
            "PPD steps whose guess at this position (1 = the token after the root) was accepted.");
    for (int i = 1; i <= (N > 0 ? N : 1) && i <= ENG_PPD_MAX_PROMPT; i++)
        mb_printf(b, "ppd_spec_decode_num_accepted_tokens_per_pos_total{position=\"%d\"} %lld\n", i,
                  e->ppd_accepted_pos[i]);
    /* A histogram over whole token counts: bucket a holds the steps that
     * emitted at most a tokens. */
    mb_head(b, "spec_decode_accepted_length", "histogram", "Tokens emitted per PPD step (accepted guesses + 1).");
    long long cum = 0;
    const int top = N > 0 ? N + 1 : 1;
    for (int a = 1; a <= top && a < ENG_PPD_MAX_PROMPT + 2; a++) {
        cum += e->ppd_hist[a];
        mb_printf(b, "ppd_spec_decode_accepted_length_bucket{le=\"%d\"} %lld\n", a, cum);
    }
    mb_printf(b, "ppd_spec_decode_accepted_length_bucket{le=\"+Inf\"} %lld\n", e->ppd_steps);
    mb_printf(b, "ppd_spec_decode_accepted_length_sum %lld\nppd_spec_decode_accepted_length_count %lld\n",
              e->ppd_emitted, e->ppd_steps);
}

/* The tree per number of sequences, calibrated or fixed: one series each,
 * whether PPD is on or off (a dashboard shows plain decoding, not "no data"). */
static void mb_trees(struct mbuf *b, const struct srv_metrics *m, int n_parallel) {
    if (m->calib_choice) return;   /* mb_calib exports the calibrated ones */
    mb_head(b, "tree_budget", "gauge",
            "Tree budget L in use for this many sequences holding slots (0: plain decoding, -1: a --tree file).");
    for (int n = 1; n <= n_parallel; n++) mb_printf(b, "ppd_tree_budget{batch_size=\"%d\"} %d\n", n, m->fixed_L);
    mb_head(b, "tree_rows", "gauge", "Rows per step of the largest tree state in use for this many sequences (all of them).");
    for (int n = 1; n <= n_parallel; n++)
        mb_printf(b, "ppd_tree_rows{batch_size=\"%d\"} %d\n", n, n * (m->fixed_rows > 0 ? m->fixed_rows : 1));
    mb_head(b, "calibration_predicted_tokens_per_second", "gauge",
            "Tokens per second the calibration predicted for this many sequences with its choice (0: not calibrated).");
    for (int n = 1; n <= n_parallel; n++)
        mb_printf(b, "ppd_calibration_predicted_tokens_per_second{batch_size=\"%d\"} 0\n", n);
}

/* The start-up calibration's choice: one series per number of sequences. */
static void mb_calib(struct mbuf *b, const struct srv_metrics *m) {
    const struct eng_calib_choice *c = m->calib_choice;
    if (!c) return;
    mb_head(b, "calibration_info", "gauge", "The start-up calibration (1): device, and whether its latency table was cached.");
    mb_printf(b, "ppd_calibration_info{device=\"%s\",cached=\"%s\"} 1\n", m->device ? m->device : "unknown",
              m->calib_cached ? "true" : "false");
    mb_gauge(b, "calibration_seconds", "Seconds the start-up calibration spent measuring (0 when cached).",
             m->calib_seconds);
    mb_head(b, "tree_budget", "gauge", "Tree budget L chosen for this many sequences holding slots (0: plain decoding).");
    for (int n = 1; n <= c->n_slot; n++)
        mb_printf(b, "ppd_tree_budget{batch_size=\"%d\"} %d\n", n, c->by_batch[n].L);
    mb_head(b, "tree_rows", "gauge", "Rows per step of the largest tree state chosen for this many sequences (all of them).");
    for (int n = 1; n <= c->n_slot; n++)
        mb_printf(b, "ppd_tree_rows{batch_size=\"%d\"} %d\n", n, n * c->by_batch[n].max_T);
    mb_head(b, "calibration_predicted_tokens_per_second", "gauge",
            "Tokens per second the calibration predicted for this many sequences with its choice.");
    for (int n = 1; n <= c->n_slot; n++)
        mb_printf(b, "ppd_calibration_predicted_tokens_per_second{batch_size=\"%d\"} %.3f\n", n, c->by_batch[n].tokens_per_s);
}

char *srv_metrics_render(const struct srv_metrics *m, const struct srv_config *c) {
    struct mbuf b = {0};
    b.cap = 8192;
    if (!(b.p = malloc(b.cap))) return NULL;
    mb_gauge(&b, "num_requests_running", "Requests holding a KV slot (prefilling or decoding).", m->n_running);
    mb_gauge(&b, "num_requests_waiting", "Requests queued for a free KV slot.", m->n_waiting);
    mb_gauge(&b, "kv_cache_usage_perc", "Fraction of the KV cache entries in use (0..1).",
             m->kv_total ? (double)m->kv_used / (double)m->kv_total : 0);
    mb_gauge(&b, "num_slots", "KV slots (sequences decoded at once, -np).", (double)c->n_parallel);
    mb_head(&b, "request_success_total", "counter", "Requests that finished normally, by finish reason.");
    mb_printf(&b, "ppd_request_success_total{finished_reason=\"stop\"} %llu\n", m->success_stop);
    mb_printf(&b, "ppd_request_success_total{finished_reason=\"length\"} %llu\n", m->success_length);
    mb_counter(&b, "request_cancelled_total", "Requests cancelled because the client went away or on shutdown.",
               m->cancelled);
    mb_counter(&b, "request_failed_total", "Requests that failed inside the engine.", m->failed);
    mb_counter(&b, "http_rejected_total", "Requests answered with an error status before reaching the engine.",
               m->http_rejected);
    mb_counter(&b, "prompt_tokens_total", "Prompt tokens processed.", m->prompt_tokens);
    mb_counter(&b, "generation_tokens_total", "Generated tokens delivered (after stop and max_tokens).", m->gen_tokens);
    mb_counter(&b, "engine_steps_total", "Batched forward steps run by the scheduler.", m->steps);
    mb_hist(&b, "time_to_first_token_seconds", "Time from request arrival to its first generated token.", &m->ttft);
    mb_hist(&b, "inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", &m->itl);
    mb_hist(&b, "e2e_request_latency_seconds", "Time from request arrival to its last token.", &m->e2e);
    mb_hist(&b, "request_queue_time_seconds", "Time a request waited for a KV slot.", &m->queue);
    mb_hist(&b, "step_duration_seconds", "Wall time of one batched scheduler step.", &m->step);
    mb_gauge(&b, "step_duration_max_seconds", "Wall time of the longest batched scheduler step since start.",
             m->step_max_s);
    mb_head(&b, "cpu_info", "gauge", "The CPU kernels' instruction-set path in use (1), and the best this CPU has.");
    mb_printf(&b, "ppd_cpu_info{isa=\"%s\",detected=\"%s\"} 1\n", kq_isa_name(kq_isa()),
              kq_isa_name(kq_isa_detected()));
    mb_gauge(&b, "prefix_cache_enabled", "1 when finished requests' KV entries are kept for reuse.", m->prefix_cache);
    mb_counter(&b, "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
               (unsigned long long)m->eng.pc_queries);
    mb_counter(&b, "prefix_cache_hits_total", "Prompt tokens served from the prefix cache (not prefilled).",
               (unsigned long long)m->eng.pc_hits);
    mb_counter(&b, "prefix_cache_held_total",
               "Requests held back until a sequence still prefilling had computed the prompt prefix they share.",
               (unsigned long long)m->eng.pc_held);
    mb_gauge(&b, "prefix_cache_slots", "Free KV slots holding a finished request's entries for reuse.",
             m->eng.pc_slots);
    mb_gauge(&b, "prefix_cache_tokens", "KV entries kept in free slots for reuse.", (double)m->eng.pc_tokens);
    mb_counter(&b, "prefix_cache_store_hits_total",
               "Prompt tokens served from the prefix cache's block store (part of prefix_cache_hits_total).",
               (unsigned long long)m->eng.pc_store_hits);
    mb_counter(&b, "prefix_cache_store_evictions_total", "Blocks evicted from the prefix cache's block store.",
               (unsigned long long)m->eng.pc_store_evicted);
    mb_gauge(&b, "prefix_cache_blocks", "Blocks of 32 KV entries held in the prefix cache's block store.",
             m->eng.pc_store_blocks);
    mb_gauge(&b, "prefix_cache_block_capacity", "Blocks the prefix cache's block store may hold (--prefix-cache-size).",
             m->eng.pc_store_cap);
    mb_gauge(&b, "prefix_cache_block_bytes", "Bytes of one block of the prefix cache's block store (K and V, every layer).",
             (double)m->eng.pc_store_block_bytes);
    mb_ppd(&b, m);
    mb_calib(&b, m);
    mb_trees(&b, m, (int)c->n_parallel);
    mb_gauge(&b, "process_resident_memory_bytes", "Resident memory of the server process.", rss_bytes());
    if (b.bad) { free(b.p); return NULL; }
    return b.p;
}
