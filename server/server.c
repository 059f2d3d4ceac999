/* server.c — the HTTP server's start and stop: load the model, start the engine thread and the
 * HTTP loop, run until SIGTERM/SIGINT, drain, exit 0.
 *
 * Shutdown: the first signal stops accepting connections (MHD quiesced),
 * makes /health and new generations answer 503, and waits for in-flight
 * requests; after --drain-timeout seconds the rest are cancelled.  Once no
 * job is left, the engine thread is joined, MHD stopped and the loop's
 * handles closed, so uv_run returns.  A second signal cancels at once.
 *
 * PPD: on when an adapter is found (--ppd FILE, else MODEL.ppd.gguf next to
 * the model) unless --no-ppd / --ppd none.  Every slot's largest tree must
 * fit in one step (engine/decode/sched.h's sizing rule), so the auto tree's budget
 * is lowered until it does (engine/ppd/ppd_setup.h); when even the smallest does not fit, a named
 * adapter or tree file is an error and the auto-detected adapter is left off
 * with a warning.
 *
 * Not here: HTTP handling (http.c), the engine thread (engine/decode/runner.c, fed by events.c), PPD set-up
 * and calibration (engine/ppd/ppd_setup.h, engine/calib/calib_setup.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/log.h"
#include "serve.h"

static void srv_try_finish(struct srv *s);

static void on_wake(uv_async_t *a) {
    struct srv *s = a->data;
    /* the calibration's result, once the engine thread has published it */
    if (s->calibrate && !s->metrics.calib_choice && !atomic_load(&s->calib_pending) && s->calib) {
        s->metrics.calib_choice = &s->calib->choice;
        s->metrics.calib_cached = s->calib->cached;
        s->metrics.calib_seconds = s->calib->seconds;
    }
    srv_http_on_events(s);
    srv_try_finish(s);
}

static void srv_close_handles(struct srv *s) {
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_term, NULL);
}

/* While draining: finished when no job is left and no request is open (or,
 * after the drain timeout, when no job is left). */
static void srv_try_finish(struct srv *s) {
    if (!s->draining || s->stopping) return;
    if (s->n_jobs > 0 || (s->n_open > 0 && !s->force_stop)) return;
    s->stopping = true;
    LOG_INFO("drained; stopping");
    srv_engine_stop(s);
    /* Events the engine posted after the last wake-up (its final stats). */
    srv_http_on_events(s);
    srv_http_stop(s);
    srv_close_handles(s);
}

static void on_drain_timeout(uv_timer_t *t) {
    struct srv *s = t->data;
    LOG_WARN("drain timeout: cancelling %d request(s) still running", s->n_jobs);
    s->force_stop = true;
    srv_http_cancel_all(s);
    srv_try_finish(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct srv *s = h->data;
    if (s->draining) {
        LOG_WARN("second signal: cancelling everything");
        on_drain_timeout(&s->drain_timer);
        return;
    }
    LOG_INFO("%s: draining %d request(s) (at most %lds)", signum == SIGINT ? "SIGINT" : "SIGTERM", s->n_jobs, s->cfg.drain_s);
    s->draining = true;
    MHD_socket ls = MHD_quiesce_daemon(s->mhd);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)s->cfg.drain_s * 1000, 0);
    srv_http_run_mhd(s);
    srv_try_finish(s);
}

/* Set s->ppd up from the configuration (see the file comment).  Returns 0
 * (s->ppd.src says whether PPD is on) or 1 after printing why not. */
static int serve_ppd_open(struct srv *s) {
    const struct srv_config *c = &s->cfg;
    if (c->no_ppd || !strcmp(c->ppd, "none")) {
        LOG_INFO("PPD: off (%s)", c->no_ppd ? "--no-ppd" : "--ppd none");
        return 0;
    }
    const bool named = strcmp(c->ppd, "auto") != 0, auto_tree = !strcmp(c->tree, "auto");
    /* every slot's tree fits one step: the rows per sequence are the step's share */
    const int per_max = (int)(c->batch / c->n_parallel);
    struct eng_ppd_setup_opts o = {.model_path = c->model, .adapter = named ? c->ppd : NULL,
                                   .tree_file = auto_tree ? NULL : c->tree, .tree_budget = (int)c->tree_budget,
                                   .max_rows = per_max > 0 ? per_max : 1, .fit_budget = auto_tree};
    char err[1024];
    int rc = eng_ppd_setup_open(&s->ppd, &o, s->eng, err, sizeof err);
    if (rc == ENG_E_RANGE && s->ppd.ad) {
        const long per = eng_ppd_seq_rows(&s->ppd.ppd);
        eng_ppd_setup_close(&s->ppd);
        if (named || !auto_tree) {
            fprintf(stderr, "ppd serve: PPD needs %ld slots x %ld rows (the largest tree) = %ld rows per step, but "
                    "--batch-size is %ld: raise it, lower --parallel%s, or use --no-ppd\n", c->n_parallel, per,
                    per * c->n_parallel, c->batch, auto_tree ? "" : ", use a smaller --tree");
            return 1;
        }
        LOG_WARN("PPD: off: %ld slots x %ld rows (the smallest tree) need --batch-size >= %ld (it is %ld)",
                 c->n_parallel, per, per * c->n_parallel, c->batch);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "ppd: %s\n", err);
        return 1;
    }
    if (s->ppd.src == ENG_PPD_OFF) {
        LOG_INFO("PPD: off (no adapter next to the model; --ppd FILE names one)");
        return 0;
    }
    const int want = c->tree_budget > 0 ? (int)c->tree_budget
                     : s->ppd.ad->tree_budget > 0 ? s->ppd.ad->tree_budget : ENG_PPD_TREE_BUDGET_DEFAULT;
    if (auto_tree && s->ppd.tree_budget != want)
        LOG_WARN("PPD: tree budget lowered to %d so that %ld slots' trees fit in --batch-size %ld",
                 s->ppd.tree_budget, c->n_parallel, c->batch);
    s->tree_budget = auto_tree ? s->ppd.tree_budget : 0;
    s->calibrate = auto_tree && c->tree_budget == 0 && !strcmp(c->calibrate, "auto");
    atomic_store(&s->calib_pending, s->calibrate);
    if (s->calibrate) LOG_INFO("PPD: calibrating at start-up (--calibrate off: the fixed tree below for every batch)");
    const struct eng_ppd *p = &s->ppd.ppd;
    char tree[320];
    if (auto_tree) snprintf(tree, sizeof tree, "auto (L=%d)", s->ppd.tree_budget);
    else snprintf(tree, sizeof tree, "%s", c->tree);
    LOG_INFO("PPD: on: adapter %s (N=%d, K=%d), tree %s of at most %d rows, %s acceptance%s",
             s->ppd.src == ENG_PPD_FILE ? s->ppd.path : "(untrained)", p->n_prompt, p->topk, tree, p->trees.max_T,
             c->ppd_accept, strcmp(c->ppd_accept, "typical") ? " (lossless)" : " for temperature > 0 (not lossless)");
    return 0;
}

int srv_main(int argc, char **argv) {
    struct srv *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->try_finish = srv_try_finish;
    int status = 1, rc = srv_config_load(&s->cfg, argc, argv);
    if (rc) { srv_config_free(&s->cfg); free(s); return rc == 1 ? 0 : rc; }
    if (s->cfg.verbose) eng_log_set_level(ENG_LOG_DEBUG);
    srv_config_log(&s->cfg);
    if (s->cfg.n_parallel > s->cfg.batch) {
        fprintf(stderr, "ppd serve: --parallel %ld is larger than --batch-size %ld (each decoding sequence needs a row per step)\n",
                s->cfg.n_parallel, s->cfg.batch);
        srv_config_free(&s->cfg);
        free(s);
        return 2;
    }
    bool q_out = false, loop_ok = false;
    uv_loop_t loop;
    char err[512] = "";
    if (srv_queue_init(&s->outbox)) goto done;
    q_out = true;

    struct eng_engine_params ep = {.model_path = s->cfg.model, .device = eng_device_parse(s->cfg.device),
                                   .n_threads = (int)s->cfg.n_threads,
                                   .n_ctx = (int)s->cfg.n_ctx, .n_slot = (int)s->cfg.n_parallel,
                                   .max_rows = (int)s->cfg.batch, .chat_template = s->cfg.chat_template};
    if (eng_engine_open(&s->eng, &ep, err, sizeof err)) {
        fprintf(stderr, "ppd serve: %s\n", err);
        goto done;
    }
    s->n_ctx = s->eng->kv.max_seq;
    if (s->cfg.alias && *s->cfg.alias) {
        snprintf(s->model_id, sizeof s->model_id, "%s", s->cfg.alias);
    } else {
        const char *base = strrchr(s->cfg.model, '/');
        snprintf(s->model_id, sizeof s->model_id, "%s", base ? base + 1 : s->cfg.model);
    }
    if (serve_ppd_open(s)) goto done;
    srv_metrics_init(&s->metrics);
    s->metrics.device = s->eng->be.iface->name;
    if (s->ppd.src != ENG_PPD_OFF) s->metrics.ppd_n_prompt = s->ppd.ppd.n_prompt;
    s->metrics.fixed_L = s->ppd.src == ENG_PPD_OFF ? 0 : s->tree_budget > 0 ? s->tree_budget : -1;
    s->metrics.fixed_rows = s->ppd.src == ENG_PPD_OFF ? 1 : s->ppd.ppd.trees.max_T;

    if (uv_loop_init(&loop)) goto done;
    loop_ok = true;
    s->loop = &loop;
    uv_async_init(&loop, &s->wake, on_wake);
    s->wake.data = s;
    uv_timer_init(&loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_signal_init(&loop, &s->sig_int);
    uv_signal_init(&loop, &s->sig_term);
    s->sig_int.data = s->sig_term.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    if ((rc = srv_engine_start(s))) {
        fprintf(stderr, "ppd serve: cannot start the engine thread: %s\n", eng_err_msg(rc));
        srv_close_handles(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto done;
    }
    s->metrics.prefix_cache = s->runner.sched.p.prefix_cache;   /* fixed from here on */
    s->metrics.eng.pc_store_cap = s->runner.sched.stats.pc_store_cap;   /* so are these, set by the scheduler's init */
    s->metrics.eng.pc_store_block_bytes = s->runner.sched.stats.pc_store_block_bytes;
    if (srv_http_start(s, err, sizeof err)) {
        fprintf(stderr, "ppd serve: %s\n", err);
        srv_engine_stop(s);
        srv_close_handles(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto done;
    }
    LOG_INFO("model '%s': %d slots x %d tokens of context", s->model_id, (int)s->cfg.n_parallel, s->n_ctx);
    LOG_INFO("listening on http://%s:%d", s->cfg.host, s->listen_port);
    uv_run(&loop, UV_RUN_DEFAULT);
    LOG_INFO("stopped");
    status = 0;
done:
    if (loop_ok) uv_loop_close(&loop);
    srv_calibration_free(s);
    eng_ppd_setup_close(&s->ppd);
    eng_engine_close(s->eng);
    if (q_out) srv_queue_free(&s->outbox);
    srv_config_free(&s->cfg);
    free(s);
    return status;
}
