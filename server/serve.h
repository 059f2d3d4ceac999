/* serve.h — the pieces of `ppd serve` and what they share.
 *
 * Threads (docs/architecture.md, "Threads"): the loop thread owns the uv loop, the MHD
 * daemon, every connection and srv_req, and the metrics; the engine thread
 * (engine/decode/runner.h) owns the engine (model, KV cache) and the scheduler.
 * They meet only in two queues: the runner's inbox carries submissions (each
 * choice's job), the outbox (queue.h) carries srv_events.  The one other thing the loop touches on a submitted
 * request is its atomic cancel flag.  The tokenizer and chat template are
 * read-only after load, so the loop thread tokenizes prompts itself and can
 * reject an over-long one before anything is queued.
 *
 * A request with n choices is n engine jobs (srv_choice), each its own
 * sequence with its own seed (seed + index), batched by the scheduler like
 * any others; the srv_req answers once every job has ended.
 *
 * Files: config.c (settings), queue.c (the outbox), api.c (OpenAI JSON in and
 * out, the error formatter), api_logprobs.c (the logprobs objects),
 * metrics.c (Prometheus text), events.c (the engine thread's settings and
 * callbacks, which fill the outbox), serve_calib.c (the
 * start-up calibration on the engine thread), http.c (MHD on libuv, routes,
 * request lifecycle, SSE), server.c (start-up, signals, drain).
 */
#ifndef PPD_SERVER_SERVE_H
#define PPD_SERVER_SERVE_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "engine/calib/calib_setup.h"
#include "engine/engine.h"
#include "engine/ppd/ppd_setup.h"
#include "engine/decode/runner.h"
#include "engine/decode/sched.h"
#include "queue.h"

enum srv_kind { SRV_CHAT = 1, SRV_COMPLETION };

#define SRV_MAX_CHOICES 16               /* n at most */
#define SRV_MAX_COMPLETION_LOGPROBS 5    /* /v1/completions' logprobs at most (OpenAI's bound) */

/* An error on its way to the client: an ENG_E_* code (which gives the HTTP
 * status), a message, the offending field and OpenAI's string code. */
struct srv_err {
    int code;
    char msg[512];
    const char *param;       /* NULL: null */
    const char *oai_code;    /* NULL: null */
};

/* A validated generation request (api.c). */
struct srv_gen {
    enum srv_kind kind;
    bool stream, include_usage;
    bool ignore_eos;         /* llama.cpp's extension: keep going past end-of-turn tokens */
    bool use_ppd;            /* our extension "ppd": false decodes this request plainly (default true) */
    int max_tokens;          /* 0: the server default */
    struct eng_sampler_params sp;
    const char *stop[ENG_TEXTOUT_MAX_STOP];   /* into the parsed JSON */
    int n_stop;
    int32_t *prompt;         /* malloc'd */
    int n_prompt;
    int n_choices;           /* n */
    int logprobs;            /* -1: none; else alternatives per token (chat top_logprobs, completions logprobs) */
    bool echo;               /* completions: the prompt before the completion (with logprobs: its tokens too) */
    char *echo_text;         /* malloc'd with echo: the prompt's text */
    size_t n_echo_text;
};

/* ---- metrics (loop thread only) ---- */
#define SRV_HIST_MAX_BUCKET 16
struct srv_hist {
    const double *bounds;
    int n_bounds;
    unsigned long long counts[SRV_HIST_MAX_BUCKET + 1];   /* per bucket, last: +Inf */
    double sum;
    unsigned long long count;
};

struct srv_metrics {
    int n_running, n_waiting;
    long kv_used, kv_total;
    unsigned long long success_stop, success_length, cancelled, failed;
    unsigned long long prompt_tokens, gen_tokens, steps, http_rejected;
    struct srv_hist ttft, itl, e2e, queue, step;
    double step_max_s;               /* the longest step since start (the histogram only bounds it) */
    struct eng_sched_stats eng;      /* the engine's cumulative counters (PPD) as of its last stats event */
    int ppd_n_prompt;                /* N when PPD is on, else 0 (no per-position series) */
    const struct eng_calib_choice *calib_choice;   /* the start-up calibration's choice, NULL: none */
    /* Without a calibration choice (PPD off, calibration off or still running):
     * the tree every batch size uses: its budget (0: plain decoding, -1: a
     * --tree file) and rows per sequence (1: plain decoding). */
    int fixed_L, fixed_rows;
    bool calib_cached;
    double calib_seconds;
    const char *device;              /* the backend's name */
    bool prefix_cache;               /* the scheduler keeps prefixes */
};

void srv_metrics_init(struct srv_metrics *m);
void srv_hist_observe(struct srv_hist *h, double v);
/* The Prometheus text exposition of everything; malloc'd. */
char *srv_metrics_render(const struct srv_metrics *m, const struct srv_config *c);

/* ---- engine -> loop events ---- */
enum srv_ev_kind { SRV_EV_SEQ = 1, SRV_EV_STATS };

struct srv_event {
    struct srv_qnode node;   /* first: the queue links through it */
    enum srv_ev_kind kind;
    struct srv_choice *choice;   /* SRV_EV_SEQ */
    int finish;              /* enum eng_sched_finish */
    int err;
    int n_ids, n_prompt, n_gen;
    double queue_s;
    struct eng_logprob *lp;  /* malloc'd [n_lp] with logprobs, else NULL */
    int n_lp;
    struct eng_logprob *lp_prompt;   /* malloc'd [n_prompt] once, with prompt logprobs */
    double t_admit, t_first, t_emit;
    int ppd_steps, ppd_drafted, ppd_accepted;
    int n_cached;            /* prompt tokens taken from the prefix cache */
    /* SRV_EV_STATS */
    int n_running, n_waiting, n_rows;
    long kv_used, kv_total;
    double step_s;
    struct eng_sched_stats stats;    /* a copy of the scheduler's statistics after the step */
    size_t n_text;
    char text[];
};

/* ---- the server ---- */
struct srv {
    struct srv_config cfg;
    char model_id[256];
    struct eng_engine *eng;          /* tok and chat read by both threads, the rest engine thread only */
    int n_ctx;
    struct eng_runner runner;        /* the engine thread and its scheduler (engine/decode/runner.h) */
    bool runner_started;
    struct srv_queue outbox;         /* engine thread -> loop: srv_events */
    struct srv_qnode *step_first, *step_last;   /* engine thread only: the running step's events */
    struct eng_ppd_setup ppd;        /* adapter and trees; read-only while serving (src: whether PPD is on) */
    int tree_budget;                 /* budget of the auto tree in use (0: a tree file) */
    /* Start-up calibration (serve_calib.c): the engine thread measures and
     * chooses before its first step; until calib_pending drops to 0 /health
     * answers 503 and requests wait in the inbox.  The results below are
     * written before the release store and read by the loop thread after. */
    bool calibrate;                  /* decided at start (PPD on, auto tree, no --tree-budget, --calibrate auto) */
    _Atomic int calib_pending;
    struct eng_calib_result *calib;  /* the choice and its trees (NULL: none) */
    /* loop thread only from here */
    uv_loop_t *loop;
    uv_async_t wake;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, drain_timer, keepalive_timer;
    uv_signal_t sig_int, sig_term;
    struct MHD_Daemon *mhd;
    int listen_port;
    int n_jobs;                      /* submitted, final event not yet received */
    int n_open;                      /* srv_reqs alive */
    bool draining, stopping, force_stop;
    unsigned long long next_id;
    struct srv_metrics metrics;
    struct srv_req *reqs;            /* every live srv_req (for drain) */
    /* server.c's drain step: while draining, stop once no job is left and no
     * request is open; http.c calls it when a request ends. */
    void (*try_finish)(struct srv *s);
};

/* One choice of a request: one engine job (loop thread, except that the
 * engine holds `job` between submit and its last event). */
struct srv_choice {
    struct srv_req *req;
    int index;
    struct eng_sched_req *job;       /* owned by the engine between submit and the last event */
    struct srv_event *spare;         /* the last event's carrier if malloc fails on the engine thread */
    bool done;                       /* the job's last event arrived */
    bool echoed;                     /* echo: the prompt went out */
    char *text;                      /* not streamed: the text so far */
    size_t n_text, cap_text;
    json_t *logprobs;                /* not streamed, with logprobs: the choice's logprobs object */
    long n_chars;                    /* completions' text_offset: characters of the token strings so far */
    int n_gen, finish, err;
    double t_admit, t_first, t_end, t_last;
    int ppd_steps, ppd_drafted, ppd_accepted;
    int n_cached;                    /* prompt tokens taken from the prefix cache */
};

/* One HTTP request (loop thread). */
struct srv_req {
    struct srv *srv;
    struct srv_req *prev, *next;     /* srv->reqs */
    struct MHD_Connection *conn;
    char *body;
    size_t n_body, cap_body;
    bool body_too_large;
    size_t n_dropped;                /* body bytes read past max_body and dropped */
    bool dispatched;                 /* a final response or stream was set up */
    bool conn_gone;                  /* MHD finished with the connection */
    bool suspended;
    bool finished;                   /* the job's last event arrived */
    bool timed_out;                  /* cancelled by the --timeout deadline */
    enum srv_kind kind;
    bool stream, include_usage;
    int logprobs;                    /* -1: none; else alternatives per token */
    bool echo;
    char *echo_text;                 /* with echo: the prompt's text */
    size_t n_echo_text;
    char id[48];
    long long created;
    struct srv_choice *ch;           /* [n_choices] */
    int n_choices;
    int n_live;                      /* jobs submitted whose last event has not arrived */
    uv_poll_t *watch;                /* notices a client that hangs up while we wait */
    int watch_fd;
    /* produced output */
    char *out;                       /* SSE bytes to send */
    size_t n_out, off_out, cap_out;
    int n_prompt;
    int fail_finish, fail_err;       /* the first choice that ended without a finish_reason (0: none) */
    double t_arrive, t_first, t_last;   /* arrival, first token and latest token of any choice */
};

/* api.c */
int srv_api_parse(struct srv *s, enum srv_kind kind, const char *body, size_t n, struct srv_gen *g, json_t **root,
                  struct srv_err *err);
void srv_gen_free(struct srv_gen *g);
void srv_err_set(struct srv_err *e, int code, const char *param, const char *oai_code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error":{"message","type","param","code"}}; malloc'd. */
char *srv_err_json(const struct srv_err *e);
const char *srv_err_type(int http_status);
/* Response bodies (malloc'd, compact JSON).  The whole non-streamed answer
 * (every choice's text, logprobs and finish, usage, timings): */
char *srv_api_completion(const struct srv_req *r, const char *model);
/* One stream chunk for choice `index`: text (chat: the delta's content;
 * role: with role "assistant"), logprobs (stolen; NULL: null), finish (NULL:
 * null); with `timings`, the request's timings at the top level. */
char *srv_api_chunk(const struct srv_req *r, const char *model, int index, const char *text, size_t n_text, bool role,
                    json_t *logprobs, const char *finish, bool timings);
/* The usage chunk (choices: []), with the timings. */
char *srv_api_usage_chunk(const struct srv_req *r, const char *model);

/* api_logprobs.c: one event's tokens in OpenAI's logprobs shape for the
 * request's kind (chat: {"content": [...]}, completions: {"tokens",
 * "token_logprobs", "top_logprobs", "text_offset"}), the prompt's tokens
 * first when prompt_lp is given (echo: [0] is the first prompt token, which
 * has no logprob); c->n_chars advances.  NULL on out of
 * memory. */
json_t *srv_logprobs_json(const struct srv_req *r, struct srv_choice *c, const struct eng_logprob *prompt_lp,
                          int n_prompt, const struct eng_logprob *lp, int n_lp);
/* Append the entries of `more` (as srv_logprobs_json made it) to *acc
 * (NULL: it becomes more); takes more. */
void srv_logprobs_append(json_t **acc, json_t *more);
char *srv_api_models(const struct srv *s);

/* events.c */
int srv_engine_start(struct srv *s);   /* the engine thread (engine/decode/runner.h) with the server's callbacks */
void srv_engine_stop(struct srv *s);   /* closes its inbox, lets it finish, joins */

/* server.c: `ppd serve` (argv[0] is the subcommand); the process exit status. */
int srv_main(int argc, char **argv);

/* http.c */
int srv_http_start(struct srv *s, char *err, size_t cap);
void srv_http_on_events(struct srv *s);   /* drain the outbox (uv_async callback) */
void srv_http_run_mhd(struct srv *s);     /* MHD_run and re-arm the timer */
void srv_http_stop(struct srv *s);
void srv_http_cancel_all(struct srv *s);

/* serve_calib.c: run on the engine thread before its first step (a no-op
 * without s->calibrate); frees what it made at srv_calibration_free. */
void srv_calibrate(struct srv *s);
void srv_calibration_free(struct srv *s);

#endif
