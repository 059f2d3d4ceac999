/* metrics.c — the server's Prometheus metrics (text exposition format 0.0.4).
 *
 * Every value lives in struct srv_metrics, owned by the loop thread: request
 * and token figures are updated as the engine's events arrive, the engine's
 * own figures (running/waiting, KV use, step time) come in its per-step stats
 * event.  So nothing here is shared between threads.  Names follow
 * architecture.md §4 (prefix ppd_, vLLM's meanings); the four spec-decode
 * counters stay zero until PPD lands (the per-position family appears then).
 *
 * Not here: HTTP (http.c serves the text), per-request labels.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve.h"

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
    mb_counter(&b, "spec_decode_num_drafts_total", "PPD tree verification steps (0 without PPD).", m->spec_drafts);
    mb_counter(&b, "spec_decode_num_draft_tokens_total", "Candidate tokens verified by PPD (0 without PPD).",
               m->spec_draft_tokens);
    mb_counter(&b, "spec_decode_num_accepted_tokens_total", "Candidate tokens accepted by PPD (0 without PPD).",
               m->spec_accepted);
    mb_gauge(&b, "process_resident_memory_bytes", "Resident memory of the server process.", rss_bytes());
    if (b.bad) { free(b.p); return NULL; }
    return b.p;
}
