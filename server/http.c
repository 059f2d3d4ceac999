/* http.c — the loop thread's HTTP side: libmicrohttpd in external-loop mode
 * under libuv, the routes, each request's lifecycle and the SSE stream.
 *
 * Design note.  MHD runs with MHD_USE_EPOLL and no thread of its own: its
 * epoll fd sits under a uv_poll, and a uv_timer follows MHD_get_timeout, so
 * MHD_run is only called when there is something to do.  MHD callbacks never
 * block: a generation request is parsed, validated, tokenized and submitted
 * to the engine thread, then
 *   - streamed: a 200 with a content-reader response is queued at once; the
 *     reader hands out buffered SSE bytes and, when there are none, suspends
 *     the connection (returning 0); each engine event appends a chunk and
 *     resumes it;
 *   - not streamed: the connection is suspended until the last event, then
 *     resumed and answered with the whole completion.
 * A stream that has had nothing to send for --sse-keepalive seconds gets an
 * SSE comment line; a request older than --timeout is cancelled.
 * A request with n choices submits n jobs at once and answers when the last
 * has ended; in a stream each chunk names its choice, and the first choice
 * to fail (an error, or cancelled) cancels the others, whose end then brings
 * the one error event.
 * A suspended connection is invisible to MHD, so a uv_poll on its socket
 * notices a client that hangs up while it waits; that, or MHD reporting a
 * failed write, sets the jobs' cancel flags.  The srv_req is freed only when
 * both MHD is done with the connection and the engine has sent every job's
 * last event (the engine may still hold a job until then).
 *
 * Not here: JSON shapes (api.c), metrics text (metrics.c), the engine thread
 * (engine/decode/runner.c and events.c), start-up and signals (server.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "serve.h"

/* ---- small helpers ---- */

static int out_append(struct srv_req *r, const char *p, size_t n) {
    if (r->n_out + n + 1 > r->cap_out) {
        size_t nc = (r->n_out + n + 1) * 2;
        if (nc < 4096) nc = 4096;
        char *np = realloc(r->out, nc);
        if (!np) return -1;
        r->out = np;
        r->cap_out = nc;
    }
    memcpy(r->out + r->n_out, p, n);
    r->n_out += n;
    r->out[r->n_out] = 0;
    return 0;
}

/* One SSE event: "data: JSON\n\n" (takes ownership of json). */
static void sse_data(struct srv_req *r, char *json) {
    if (!json) return;
    out_append(r, "data: ", 6);
    out_append(r, json, strlen(json));
    out_append(r, "\n\n", 2);
    free(json);
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, char *body, const char *ctype) {
    if (!body) return MHD_NO;   /* out of memory building it: drop the connection */
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) { free(body); return MHD_NO; }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 429) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result respond_err(struct srv *s, struct MHD_Connection *c, const struct srv_err *e) {
    s->metrics.http_rejected++;
    int status = eng_err_http_status(e->code);
    if (status < 400 || status > 599) status = 500;
    return respond(c, (unsigned)status, srv_err_json(e), "application/json");
}

/* The methods a known path answers, for a 405's Allow header (RFC 9110 §15.5.6:
 * a known path asked with another method is not "not found"); NULL for an
 * unknown path. */
static const char *allowed_methods(const char *url) {
    static const struct { const char *path, *allow; } routes[] = {
        {"/health", "GET, HEAD"}, {"/metrics", "GET, HEAD"}, {"/v1/models", "GET, HEAD"}, {"/models", "GET, HEAD"},
        {"/v1/chat/completions", "POST"}, {"/v1/completions", "POST"},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) return routes[i].allow;
    return NULL;
}

static enum MHD_Result respond_method_not_allowed(struct srv *s, struct MHD_Connection *c, const char *method,
                                                  const char *url, const char *allow) {
    s->metrics.http_rejected++;
    struct srv_err err = {0};
    srv_err_set(&err, ENG_E_INVALID, NULL, "method_not_allowed", "%s is not allowed on %s (allowed: %s)", method, url, allow);
    char *body = srv_err_json(&err);
    if (!body) return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) { free(body); return MHD_NO; }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
    MHD_destroy_response(resp);
    return rc;
}

static void req_unlink(struct srv *s, struct srv_req *r) {
    if (r->prev) r->prev->next = r->next;
    else s->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
}

static void watch_closed(uv_handle_t *h) { free(h); }

static void req_watch_stop(struct srv_req *r) {
    if (!r->watch) return;
    uv_close((uv_handle_t *)r->watch, watch_closed);
    r->watch = NULL;
}

/* The choices' memory (jobs never submitted, or whose last event came). */
static void req_choices_free(struct srv_req *r) {
    for (int i = 0; i < r->n_choices; i++) {
        struct srv_choice *c = &r->ch[i];
        eng_sched_req_free(c->job);
        free(c->spare);
        free(c->text);
        json_decref(c->logprobs);
    }
    free(r->ch);
    r->ch = NULL;
    r->n_choices = 0;
}

static void req_free(struct srv *s, struct srv_req *r) {
    req_watch_stop(r);
    req_unlink(s, r);
    s->n_open--;
    req_choices_free(r);
    free(r->echo_text);
    free(r->body);
    free(r->out);
    free(r);
}

static void req_cancel(struct srv_req *r) {
    for (int i = 0; i < r->n_choices; i++)
        if (r->ch[i].job) atomic_store(&r->ch[i].job->cancel, true);
}

static void req_resume(struct srv_req *r) {
    if (r->suspended && r->conn) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
}

/* The client hung up (EOF, or an error such as a reset, which libuv reports
 * as status UV_EBADF) while we waited. */
static void on_watch(uv_poll_t *h, int status, int events) {
    struct srv_req *r = h->data;
    char c;
    if (status < 0 || (events & UV_DISCONNECT) || recv(r->watch_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
        LOG_DEBUG("%s: client disconnected, cancelling", r->id);
        req_cancel(r);
    }
    /* Either way stop watching: data from the client (a pipelined request)
     * is MHD's business, and one cancel is enough. */
    req_watch_stop(r);
}

static void req_watch_start(struct srv *s, struct srv_req *r) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return;
    uv_poll_t *w = malloc(sizeof *w);
    if (!w) return;
    r->watch_fd = ci->connect_fd;
    if (uv_poll_init(s->loop, w, r->watch_fd)) { free(w); return; }
    w->data = r;
    r->watch = w;
    uv_poll_start(w, UV_READABLE | UV_DISCONNECT, on_watch);
}

/* ---- authentication ---- */

static bool auth_ok(struct srv *s, struct MHD_Connection *c) {
    const char *key = s->cfg.api_key;
    if (!key || !*key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    h += 7;
    /* Constant time in the key's length: no early exit on the first mismatch. */
    size_t nk = strlen(key), nh = strlen(h);
    unsigned char diff = (unsigned char)(nk != nh);
    for (size_t i = 0; i < nk; i++) diff |= (unsigned char)(key[i] ^ (i < nh ? h[i] : 0));
    return diff == 0;
}

/* ---- SSE content reader ---- */

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct srv_req *r = cls;
    if (r->off_out < r->n_out) {
        size_t n = r->n_out - r->off_out < max ? r->n_out - r->off_out : max;
        memcpy(buf, r->out + r->off_out, n);
        r->off_out += n;
        if (r->off_out == r->n_out) r->off_out = r->n_out = 0;
        return (ssize_t)n;
    }
    if (r->finished) return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing to send yet: park the connection until the next event. */
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    return 0;
}

/* Why a request the client did not abandon was cancelled. */
static void req_cancel_reason(const struct srv *s, const struct srv_req *r, struct srv_err *err) {
    if (r->timed_out)
        srv_err_set(err, ENG_E_BUSY, NULL, "timeout", "the request took longer than the server's limit of %lds (--timeout)",
                    s->cfg.timeout_s);
    else
        srv_err_set(err, ENG_E_BUSY, NULL, NULL, "the request was cancelled (the server is shutting down)");
}

/* ---- generation requests ---- */

/* The request's n jobs, one per choice, each with its own seed (seed +
 * index); nothing is submitted.  On failure, what was made is freed. */
static int req_jobs_create(struct srv *s, struct srv_req *r, const struct srv_gen *g, int max_tokens,
                           struct srv_err *err) {
    if (!(r->ch = calloc((size_t)g->n_choices, sizeof *r->ch))) {
        srv_err_set(err, ENG_E_NOMEM, NULL, NULL, "out of memory");
        return -1;
    }
    r->n_choices = g->n_choices;
    for (int i = 0; i < g->n_choices; i++) {
        struct srv_choice *c = &r->ch[i];
        c->req = r;
        c->index = i;
        struct eng_sampler_params sp = g->sp;
        sp.seed += (uint64_t)i;
        int erc = eng_sched_req_init(&c->job, s->eng->tok, g->prompt, g->n_prompt, max_tokens, &sp, g->stop, g->n_stop);
        if (!erc && g->logprobs >= 0) erc = eng_sched_req_want_logprobs(c->job, g->logprobs, g->echo);
        if (!erc && !(c->spare = malloc(sizeof *c->spare + 1))) erc = ENG_E_NOMEM;
        if (erc) {
            req_choices_free(r);   /* never submitted: no event will come for them */
            srv_err_set(err, erc, NULL, NULL, "%s", eng_err_msg(erc));
            return -1;
        }
        c->job->ignore_eog = g->ignore_eos;
        c->job->use_ppd = g->use_ppd;
        c->job->user = c;
    }
    return 0;
}

static enum MHD_Result handle_generate(struct srv *s, struct srv_req *r, enum srv_kind kind) {
    struct srv_err err = {0};
    if (s->draining) {
        srv_err_set(&err, ENG_E_BUSY, NULL, NULL, "the server is shutting down");
        return respond_err(s, r->conn, &err);
    }
    if (r->body_too_large) {
        srv_err_set(&err, ENG_E_TOO_LARGE, NULL, "request_too_large", "the request body exceeds %ld bytes", s->cfg.max_body);
        return respond_err(s, r->conn, &err);
    }
    struct srv_gen g;
    json_t *root = NULL;
    int rc = srv_api_parse(s, kind, r->body ? r->body : "", r->n_body, &g, &root, &err);
    const long room_jobs = s->cfg.n_parallel + s->cfg.max_queue;
    if (rc == 0 && g.n_choices > room_jobs) {
        srv_err_set(&err, ENG_E_RANGE, "n", "invalid_value",
                    "n = %d is more than this server can hold at once (--parallel + --max-queue = %ld)", g.n_choices,
                    room_jobs);
        rc = -1;
    }
    if (rc == 0 && s->n_jobs + g.n_choices > room_jobs) {
        srv_err_set(&err, ENG_E_FULL, NULL, "queue_full", "too many requests are waiting (%d); retry later", s->n_jobs);
        rc = -1;
    }
    if (rc == 0) {
        int room = s->n_ctx - g.n_prompt;
        int max_tokens = g.max_tokens > 0 ? g.max_tokens : s->cfg.n_predict > 0 ? (int)s->cfg.n_predict : room;
        if (max_tokens > room) max_tokens = room;
        rc = req_jobs_create(s, r, &g, max_tokens, &err);
    }
    if (rc == 0) {
        r->kind = kind;
        r->stream = g.stream;
        r->include_usage = g.stream && g.include_usage;
        r->n_prompt = g.n_prompt;
        r->logprobs = g.logprobs;
        r->echo = g.echo;
        r->echo_text = g.echo_text;
        r->n_echo_text = g.n_echo_text;
        g.echo_text = NULL;
    }
    srv_gen_free(&g);
    json_decref(root);
    if (rc) return respond_err(s, r->conn, &err);

    snprintf(r->id, sizeof r->id, "%s-%llx%08llx", kind == SRV_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)time(NULL), ++s->next_id);
    r->created = (long long)time(NULL);
    struct eng_sched_req *jobs[SRV_MAX_CHOICES];
    for (int i = 0; i < r->n_choices; i++) jobs[i] = r->ch[i].job;
    r->n_live = r->n_choices;
    s->n_jobs += r->n_choices;
    eng_runner_submit(&s->runner, jobs, r->n_choices);
    LOG_DEBUG("%s: %d prompt tokens, max_tokens %d, n %d%s", r->id, r->n_prompt, r->ch[0].job->max_tokens,
              r->n_choices, r->stream ? ", streamed" : "");
    req_watch_start(s, r);
    if (!r->stream) {
        r->suspended = true;
        MHD_suspend_connection(r->conn);
        return MHD_YES;
    }
    if (kind == SRV_CHAT)
        for (int i = 0; i < r->n_choices; i++)
            sse_data(r, srv_api_chunk(r, s->model_id, i, "", 0, true, NULL, NULL, false));
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_reader, r, NULL);
    if (!resp) { req_cancel(r); return MHD_NO; }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    enum MHD_Result q = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    return q;
}

/* The error a request whose choice failed answers with. */
static void req_fail_err(const struct srv *s, const struct srv_req *r, struct srv_err *err) {
    if (r->fail_finish == ENG_SCHED_FINISH_CANCELLED)
        req_cancel_reason(s, r, err);
    else
        srv_err_set(err, r->fail_err ? r->fail_err : ENG_E_INTERNAL, NULL, NULL, "generation failed: %s",
                    eng_err_msg(r->fail_err));
}

/* A non-streamed request whose jobs have all ended: answer it. */
static enum MHD_Result respond_final(struct srv *s, struct srv_req *r) {
    if (r->fail_finish) {
        struct srv_err err = {0};
        req_fail_err(s, r, &err);
        return respond_err(s, r->conn, &err);
    }
    return respond(r->conn, 200, srv_api_completion(r, s->model_id), "application/json");
}

/* ---- the MHD callbacks ---- */

/* Content-Length above max_body (or not a number libmicrohttpd would accept:
 * it refuses those itself before we are called). */
static bool declared_body_too_large(struct MHD_Connection *c, long max_body) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return false;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(cl, &end, 10);
    return end != cl && (errno == ERANGE || n > (unsigned long long)max_body);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    struct srv *s = cls;
    struct srv_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->srv = s;
        r->conn = conn;
        r->t_arrive = eng_now_s();
        r->next = s->reqs;
        if (s->reqs) s->reqs->prev = r;
        s->reqs = r;
        s->n_open++;
        *con_cls = r;
        /* A body declared larger than the limit is refused before a byte of it
         * is read: libmicrohttpd sends the 413 and closes the connection. */
        if (declared_body_too_large(conn, s->cfg.max_body)) {
            r->dispatched = true;
            struct srv_err err = {0};
            srv_err_set(&err, ENG_E_TOO_LARGE, NULL, "request_too_large", "the request body exceeds %ld bytes",
                        s->cfg.max_body);
            return respond_err(s, conn, &err);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->body_too_large || r->n_body + n > (size_t)s->cfg.max_body) {
            /* A chunked body (no length declared) that outgrows the limit is
             * read on and dropped, to answer 413 at its end; one that goes on
             * past as much again is cut off, so no client streams forever. */
            r->body_too_large = true;
            r->n_dropped += n;
            return r->n_dropped > (size_t)s->cfg.max_body ? MHD_NO : MHD_YES;
        }
        if (r->n_body + n + 1 > r->cap_body) {
            size_t nc = (r->n_body + n + 1) * 2;
            char *nb = realloc(r->body, nc);
            if (!nb) return MHD_NO;
            r->body = nb;
            r->cap_body = nc;
        }
        memcpy(r->body + r->n_body, upload, n);
        r->n_body += n;
        r->body[r->n_body] = 0;
        return MHD_YES;
    }
    if (r->dispatched) return r->finished && !r->stream ? respond_final(s, r) : MHD_YES;
    r->dispatched = true;

    /* HEAD is GET without the body (libmicrohttpd drops it). */
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    struct srv_err err = {0};
    if (get && !strcmp(url, "/health")) {
        if (atomic_load(&s->calib_pending)) {
            srv_err_set(&err, ENG_E_BUSY, NULL, "calibrating",
                        "calibrating: measuring this device's step latency to choose the PPD tree (--calibrate off skips it)");
            return respond(conn, 503, srv_err_json(&err), "application/json");
        }
        if (s->draining) {
            srv_err_set(&err, ENG_E_BUSY, NULL, NULL, "the server is shutting down");
            return respond(conn, 503, srv_err_json(&err), "application/json");
        }
        return respond(conn, 200, strdup("{\"status\":\"ok\"}"), "application/json");
    }
    if (get && !strcmp(url, "/metrics"))
        return respond(conn, 200, srv_metrics_render(&s->metrics, &s->cfg), "text/plain; version=0.0.4; charset=utf-8");
    bool api = !strncmp(url, "/v1/", 4) || !strcmp(url, "/models");
    if (api && !auth_ok(s, conn)) {
        srv_err_set(&err, ENG_E_UNAUTHORIZED, NULL, "invalid_api_key", "missing or incorrect API key (Authorization: Bearer KEY)");
        return respond_err(s, conn, &err);
    }
    if (get && (!strcmp(url, "/v1/models") || !strcmp(url, "/models")))
        return respond(conn, 200, srv_api_models(s), "application/json");
    if (post && !strcmp(url, "/v1/chat/completions")) return handle_generate(s, r, SRV_CHAT);
    if (post && !strcmp(url, "/v1/completions")) return handle_generate(s, r, SRV_COMPLETION);
    const char *allow = allowed_methods(url);
    if (allow) return respond_method_not_allowed(s, conn, method, url, allow);
    srv_err_set(&err, ENG_E_NOT_FOUND, NULL, "unknown_url", "Unknown request URL: %s %s", method, url);
    return respond_err(s, conn, &err);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)conn;
    struct srv *s = cls;
    struct srv_req *r = *con_cls;
    *con_cls = NULL;
    if (!r) return;
    r->conn_gone = true;
    r->conn = NULL;
    r->suspended = false;
    req_watch_stop(r);
    if (r->n_live > 0) {
        /* The engine still holds jobs: cancel, free at their last events. */
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) LOG_DEBUG("%s: connection ended early, cancelling", r->id);
        req_cancel(r);
        return;
    }
    req_free(s, r);
}

/* ---- engine events ---- */

/* Not streamed: the choice's text so far grows by n bytes. */
static void choice_text_append(struct srv_choice *c, const char *p, size_t n) {
    if (c->n_text + n + 1 > c->cap_text) {
        size_t nc = (c->n_text + n + 1) * 2;
        if (nc < 256) nc = 256;
        char *np = realloc(c->text, nc);
        if (!np) return;
        c->text = np;
        c->cap_text = nc;
    }
    memcpy(c->text + c->n_text, p, n);
    c->n_text += n;
    c->text[c->n_text] = 0;
}

/* The event's text and logprobs as the client sees them: with echo, the
 * prompt (and its logprobs) come first, once per choice. */
static void choice_on_output(struct srv *s, struct srv_req *r, struct srv_choice *c, const struct srv_event *ev) {
    const bool echo = r->echo && !c->echoed;
    c->echoed = true;
    json_t *lp = NULL;
    if (r->logprobs >= 0 && (ev->n_lp > 0 || (echo && ev->lp_prompt)))
        lp = srv_logprobs_json(r, c, echo ? ev->lp_prompt : NULL, ev->n_prompt, ev->lp, ev->n_lp);
    if (r->stream) {
        if (!ev->n_text && !lp && !(echo && r->n_echo_text)) return;
        if (echo) {
            char *t = malloc(r->n_echo_text + ev->n_text + 1);
            if (!t) { json_decref(lp); return; }
            memcpy(t, r->echo_text, r->n_echo_text);
            memcpy(t + r->n_echo_text, ev->text, ev->n_text);
            sse_data(r, srv_api_chunk(r, s->model_id, c->index, t, r->n_echo_text + ev->n_text, false, lp, NULL, false));
            free(t);
        } else {
            sse_data(r, srv_api_chunk(r, s->model_id, c->index, ev->text, ev->n_text, false, lp, NULL, false));
        }
        return;
    }
    if (echo) choice_text_append(c, r->echo_text, r->n_echo_text);
    choice_text_append(c, ev->text, ev->n_text);
    srv_logprobs_append(&c->logprobs, lp);
}

/* A stream's end once every choice has ended: the usage chunk (with the
 * timings) and [DONE], or the first failure's error event. */
static void req_stream_end(struct srv *s, struct srv_req *r) {
    if (r->fail_finish) {
        struct srv_err err = {0};
        req_fail_err(s, r, &err);
        sse_data(r, srv_err_json(&err));
    } else {
        if (r->include_usage) sse_data(r, srv_api_usage_chunk(r, s->model_id));
        out_append(r, "data: [DONE]\n\n", 14);
    }
}

static void req_on_event(struct srv *s, struct srv_choice *c, const struct srv_event *ev) {
    struct srv_req *r = c->req;
    double now = eng_now_s();
    struct srv_metrics *m = &s->metrics;
    if (ev->n_ids > 0) {
        if (r->t_first == 0) {
            r->t_first = now;
            srv_hist_observe(&m->ttft, now - r->t_arrive);
        }
        if (c->t_last == 0) {
            srv_hist_observe(&m->queue, ev->queue_s);
        } else {
            double dt = (now - c->t_last) / ev->n_ids;
            for (int i = 0; i < ev->n_ids; i++) srv_hist_observe(&m->itl, dt);
        }
        c->t_last = r->t_last = now;
    }
    c->n_gen = ev->n_gen;
    c->t_admit = ev->t_admit;
    c->t_first = ev->t_first;
    c->t_end = ev->t_emit;
    c->ppd_steps = ev->ppd_steps;
    c->ppd_drafted = ev->ppd_drafted;
    c->ppd_accepted = ev->ppd_accepted;
    c->n_cached = ev->n_cached;
    const bool last = ev->finish != ENG_SCHED_RUNNING;
    const char *reason = eng_sched_finish_reason((enum eng_sched_finish)ev->finish);
    if (last) {
        c->done = true;
        c->finish = ev->finish;
        c->err = ev->err;
        r->n_live--;
        if (!reason && !r->fail_finish) {
            /* The first choice to fail decides the answer; the others stop. */
            r->fail_finish = ev->finish;
            r->fail_err = ev->err;
            req_cancel(r);
        }
    }
    if (!r->conn_gone) {
        choice_on_output(s, r, c, ev);
        if (last && r->stream && reason && !r->fail_finish)
            sse_data(r, srv_api_chunk(r, s->model_id, c->index, "", 0, false, NULL, reason,
                                      r->n_live == 0 && !r->include_usage));
        if (last && r->n_live == 0) {
            if (r->stream) req_stream_end(s, r);
            r->finished = true;
        }
        if (r->stream || r->finished) req_resume(r);
    }
    if (!last) return;
    eng_sched_req_free(c->job);
    c->job = NULL;
    s->n_jobs--;
    if (c->index == 0) m->prompt_tokens += (unsigned long long)ev->n_prompt;   /* once per request */
    m->gen_tokens += (unsigned long long)ev->n_gen;
    switch (ev->finish) {
    case ENG_SCHED_FINISH_EOG:
    case ENG_SCHED_FINISH_STOP: m->success_stop++; break;
    case ENG_SCHED_FINISH_LENGTH:
    case ENG_SCHED_FINISH_CONTEXT: m->success_length++; break;
    case ENG_SCHED_FINISH_CANCELLED: m->cancelled++; break;
    default: m->failed++; break;
    }
    LOG_DEBUG("%s: choice %d done (%s), %d + %d tokens", r->id, c->index, reason ? reason : "cancelled/error",
              ev->n_prompt, ev->n_gen);
    if (r->n_live > 0) return;
    req_watch_stop(r);
    if (r->fail_finish != ENG_SCHED_FINISH_CANCELLED) srv_hist_observe(&m->e2e, now - r->t_arrive);
    if (r->conn_gone) req_free(s, r);
}

void srv_http_on_events(struct srv *s) {
    struct srv_qnode *n = srv_queue_take(&s->outbox);
    while (n) {
        struct srv_event *ev = (struct srv_event *)n;
        n = n->next;
        if (ev->kind == SRV_EV_STATS) {
            s->metrics.n_running = ev->n_running;
            s->metrics.n_waiting = ev->n_waiting;
            s->metrics.kv_used = ev->kv_used;
            s->metrics.kv_total = ev->kv_total;
            s->metrics.eng = ev->stats;
            if (ev->n_rows > 0) {
                s->metrics.steps++;
                srv_hist_observe(&s->metrics.step, ev->step_s);
                if (ev->step_s > s->metrics.step_max_s) s->metrics.step_max_s = ev->step_s;
            }
        } else {
            if (ev == ev->choice->spare) ev->choice->spare = NULL;   /* freed below, not with the request */
            req_on_event(s, ev->choice, ev);
            free(ev->lp);
            free(ev->lp_prompt);
        }
        free(ev);
    }
    srv_http_run_mhd(s);
}

/* ---- the periodic tick: keep-alive comments and deadlines ---- */

/* A stream with nothing to say for a while (waiting for a slot, or a long
 * prefill) gets an SSE comment line: proxies do not time it out, and a
 * client that has gone away is noticed by the failed write.  A request older
 * than --timeout is cancelled (its answer says why). */
static void on_tick(uv_timer_t *t) {
    struct srv *s = t->data;
    double now = eng_now_s();
    bool any = false;
    for (struct srv_req *r = s->reqs; r; r = r->next) {
        if (r->finished || r->conn_gone || r->n_live == 0) continue;
        if (s->cfg.timeout_s > 0 && !r->timed_out && now - r->t_arrive > (double)s->cfg.timeout_s) {
            LOG_INFO("%s: deadline of %lds passed, cancelling", r->id, s->cfg.timeout_s);
            r->timed_out = true;
            req_cancel(r);
        }
        double last = r->t_last > 0 ? r->t_last : r->t_arrive;
        if (!r->stream || now - last < (double)s->cfg.keepalive_s) continue;
        out_append(r, ": keep-alive\n\n", 14);
        req_resume(r);
        any = true;
    }
    if (any) srv_http_run_mhd(s);
}

/* ---- MHD under libuv ---- */

static void on_mhd_timer(uv_timer_t *t) { srv_http_run_mhd(t->data); }

static void on_mhd_poll(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    srv_http_run_mhd(h->data);
}

void srv_http_run_mhd(struct srv *s) {
    if (!s->mhd) return;
    MHD_run(s->mhd);
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(s->mhd, &to) == MHD_YES) uv_timer_start(&s->mhd_timer, on_mhd_timer, to, 0);
    else uv_timer_stop(&s->mhd_timer);
    /* While draining, the last request may end here (its response sent), not
     * on an engine event: look whether the drain is over. */
    if (s->draining && s->try_finish) s->try_finish(s);
}

int srv_http_start(struct srv *s, char *err, size_t cap) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%ld", s->cfg.port);
    int g = getaddrinfo(s->cfg.host, port, &hints, &ai);
    if (g || !ai) {
        snprintf(err, cap, "--host %s: %s", s->cfg.host, gai_strerror(g));
        return ENG_E_INVALID;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
                              MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)120,
                              MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
                              MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->mhd) {
        snprintf(err, cap, "cannot listen on %s:%ld (in use, or not an address of this machine?)", s->cfg.host, s->cfg.port);
        return ENG_E_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->listen_port = pi ? pi->port : (int)s->cfg.port;
    if (!di || uv_poll_init(s->loop, &s->mhd_poll, di->epoll_fd) || uv_timer_init(s->loop, &s->mhd_timer)) {
        snprintf(err, cap, "cannot watch the HTTP daemon's epoll fd");
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
        return ENG_E_IO;
    }
    s->mhd_poll.data = s;
    s->mhd_timer.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_timer_init(s->loop, &s->keepalive_timer);
    s->keepalive_timer.data = s;
    /* Twice per keep-alive period, and often enough for short deadlines. */
    uint64_t tick_ms = (uint64_t)s->cfg.keepalive_s * 500;
    if (s->cfg.timeout_s > 0 && tick_ms > (uint64_t)s->cfg.timeout_s * 250) tick_ms = (uint64_t)s->cfg.timeout_s * 250;
    uv_timer_start(&s->keepalive_timer, on_tick, tick_ms, tick_ms);
    srv_http_run_mhd(s);
    return 0;
}

void srv_http_cancel_all(struct srv *s) {
    for (struct srv_req *r = s->reqs; r; r = r->next) req_cancel(r);
}

void srv_http_stop(struct srv *s) {
    if (!s->mhd) return;
    /* MHD must not be stopped with suspended connections. */
    for (struct srv_req *r = s->reqs; r; r = r->next) {
        r->finished = true;
        req_resume(r);
    }
    uv_poll_stop(&s->mhd_poll);
    uv_timer_stop(&s->mhd_timer);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    uv_close((uv_handle_t *)&s->mhd_poll, NULL);
    uv_close((uv_handle_t *)&s->mhd_timer, NULL);
    uv_close((uv_handle_t *)&s->keepalive_timer, NULL);
}
