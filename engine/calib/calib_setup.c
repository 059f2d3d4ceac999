/* calib_setup.c — fingerprint, cache, load-or-measure and the trees chosen
 * per batch size (see calib_setup.h).  Nothing here prints; the choice for
 * the scheduler is logged through log.h.
 */
#include "engine/calib/calib_setup.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/err.h"
#include "engine/log.h"
#include "engine/load/sha256.h"
#include "engine/decode/generate.h"
#include "kernels/cpu/cpu_isa.h"

static void hex(const uint8_t *d, int n, char *out) {
    for (int i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

/* SHA-256 of a whole file, or of its first and last `edge` bytes when edge > 0. */
static int file_digest(const char *path, long edge, char out[2 * ENG_SHA256_BYTES + 1]) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    struct eng_sha256 h;
    eng_sha256_init(&h);
    static char buf[1 << 16];
    size_t n;
    if (edge > 0) {
        n = fread(buf, 1, (size_t)edge < sizeof buf ? (size_t)edge : sizeof buf, fp);
        eng_sha256_update(&h, buf, n);
        if (!fseek(fp, -edge, SEEK_END)) {
            n = fread(buf, 1, (size_t)edge < sizeof buf ? (size_t)edge : sizeof buf, fp);
            eng_sha256_update(&h, buf, n);
        }
    } else {
        while ((n = fread(buf, 1, sizeof buf, fp)) > 0) eng_sha256_update(&h, buf, n);
    }
    fclose(fp);
    uint8_t d[ENG_SHA256_BYTES];
    eng_sha256_final(&h, d);
    hex(d, ENG_SHA256_BYTES, out);
    return 0;
}

static void cpu_model(char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (!fp) return;
    char line[512];
    while (fgets(line, sizeof line, fp)) {
        if (!strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v += v[1] == ' ' ? 2 : 1;
                v[strcspn(v, "\n")] = 0;
                snprintf(out, cap, "%s", v);
            }
            break;
        }
    }
    fclose(fp);
}

static void calib_fingerprint(const struct eng_engine *e, const struct eng_calib_setup_opts *o, int prefix,
                              char out[2 * ENG_SHA256_BYTES + 1]) {
    char cpu[256], model[2 * ENG_SHA256_BYTES + 1] = "?", adapter[2 * ENG_SHA256_BYTES + 1] = "untrained",
         build[2 * ENG_SHA256_BYTES + 1] = "?", desc[2048];
    cpu_model(cpu, sizeof cpu);
    struct stat st = {0};
    stat(o->model_path, &st);
    file_digest(o->model_path, 1 << 16, model);
    if (o->adapter_path) file_digest(o->adapter_path, 0, adapter);
    file_digest("/proc/self/exe", 0, build);
    /* The device itself where it is not the CPU (the GPU's name): a cache
     * directory shared by machines with the same CPU and different GPUs must
     * not hand one GPU's latency table to another. */
    const char *device = e->be.iface->device_name ? e->be.iface->device_name(e->be.ctx) : "";
    snprintf(desc, sizeof desc,
             "ppd-calib-v1|%s|%s|isa=%s|device=%s|threads=%d|model=%s:%lld:%lld:%s|adapter=%s|build=%s|slots=%d|rows=%d|prefix=%d"
             "|stop=%d",
             e->be.iface->name, cpu, kq_isa_name(kq_isa()), device, o->n_threads, o->model_path, (long long)st.st_size, (long long)st.st_mtime,
             model, adapter, build, o->n_slot, e->fwd.max_rows, prefix, o->ad ? o->stop_budget_max : 0);
    uint8_t d[ENG_SHA256_BYTES];
    struct eng_sha256 h;
    eng_sha256_init(&h);
    eng_sha256_update(&h, desc, strlen(desc));
    eng_sha256_final(&h, d);
    hex(d, ENG_SHA256_BYTES, out);
}

/* mkdir -p */
static int make_dirs(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
}

static void cache_dir(const struct eng_calib_setup_opts *o, char *out, size_t cap) {
    const char *env = getenv("PPD_CALIB_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (o->cache_dir) snprintf(out, cap, "%s", o->cache_dir);
    else if (env && *env) snprintf(out, cap, "%s", env);
    else if (xdg && *xdg) snprintf(out, cap, "%s/ppd", xdg);
    else if (home && *home) snprintf(out, cap, "%s/.cache/ppd", home);
    else out[0] = 0;
}

int eng_calib_setup_table(struct eng_calib_table *t, struct eng_engine *e, const struct eng_calib_setup_opts *o,
                          bool *cached, char *path_out, size_t cap) {
    *cached = false;
    path_out[0] = 0;
    const int prefix = o->prefix > 0 ? o->prefix : ENG_CALIB_PREFIX_DEFAULT;
    char fp[2 * ENG_SHA256_BYTES + 1], dir[3072], err[1024];
    calib_fingerprint(e, o, prefix, fp);
    cache_dir(o, dir, sizeof dir);
    if (dir[0]) snprintf(path_out, cap, "%s/calib-%.16s.json", dir, fp);
    if (path_out[0] && !o->force) {
        int rc = eng_calib_table_load(t, fp, path_out, err, sizeof err);
        if (!rc) {
            *cached = true;
            return 0;
        }
        if (rc != ENG_E_NOT_FOUND) LOG_WARN("calibration: %s; measuring again", err);
    }
    double stop_ratio = 0;
    if (o->ad && o->stop_budget_max > 0) {
        double most, *acc = eng_ppd_accuracy(o->ad);
        int rc = acc ? eng_calib_max_tokens_per_step(acc, eng_ppd_accuracy_joint(o->ad, acc), o->ad->n_prompt, o->ad->topk,
                                                     o->stop_budget_max, &most)
                     : ENG_E_NOMEM;
        free(acc);
        if (rc) return rc;
        stop_ratio = ENG_CALIB_STOP_MARGIN * most;
    }
    int rc = eng_calib_measure(t, &e->fwd, &e->kv, o->n_slot, prefix, stop_ratio, o->progress, o->progress_user);
    if (rc) return rc;
    if (path_out[0]) {
        if (make_dirs(dir)) {
            LOG_WARN("calibration: cannot create %s (%s); the table is not cached", dir, strerror(errno));
            path_out[0] = 0;
        } else if (eng_calib_table_save(t, fp, path_out, err, sizeof err)) {
            LOG_WARN("calibration: %s; the table is not cached", err);
            path_out[0] = 0;
        }
    }
    return 0;
}

int eng_calib_trees_init(struct eng_calib_trees *ct, const struct eng_calib_choice *c, const struct eng_ppd_adapter *ad,
                         char *err, size_t err_cap) {
    memset(ct, 0, sizeof *ct);
    double *acc = eng_ppd_accuracy(ad);
    if (!acc) return eng_err_set(err, err_cap, ENG_E_NOMEM, "out of memory");
    int rc = 0;
    for (int b = 1; b <= c->n_slot && !rc; b++) {
        const int L = c->by_batch[b].L;
        if (L == 0) continue;
        int k = 0;
        while (k < ct->n && ct->tree_budget[k] != L) k++;
        if (k == ct->n) {
            if (ct->n == ENG_CALIB_TREES_MAX) { rc = eng_err_set(err, err_cap, ENG_E_RANGE, "too many distinct trees"); break; }
            struct eng_ppd_tree_family *fam = NULL;
            rc = eng_ppd_tree_build_joint(&fam, acc, eng_ppd_accuracy_joint(ad, acc), ad->n_prompt, ad->topk, L, NULL);
            if (rc) { eng_err_set(err, err_cap, rc, "cannot build the tree of budget %d: %s", L, eng_err_msg(rc)); break; }
            rc = eng_ppd_init(&ct->ppd[k], ad, fam, err, err_cap);
            eng_ppd_tree_family_free(fam);
            if (rc) break;
            ct->tree_budget[k] = L;
            ct->n++;
            if (!ct->widest || ct->ppd[k].trees.max_T > ct->widest->trees.max_T) ct->widest = &ct->ppd[k];
        }
        ct->by_batch[b] = &ct->ppd[k];
    }
    free(acc);
    if (rc) eng_calib_trees_free(ct);
    return rc;
}

void eng_calib_trees_free(struct eng_calib_trees *ct) {
    if (!ct) return;
    for (int k = 0; k < ct->n; k++) eng_ppd_free(&ct->ppd[k]);
    memset(ct, 0, sizeof *ct);
}

int eng_calib_setup_budget_one(struct eng_engine *e, const struct eng_ppd_setup *s, const char *model_path,
                               int n_threads, int *tree_budget, double *gain, bool *cached, char *path, size_t cap) {
    struct eng_calib_setup_opts so = {.model_path = model_path, .adapter_path = s->src == ENG_PPD_FILE ? s->path : NULL,
                                      .n_threads = n_threads, .n_slot = 1, .ad = s->ad,
                                      .stop_budget_max = ENG_CALIB_BUDGET_MAX_DEFAULT};
    struct eng_calib_table t;
    struct eng_calib_choice *choice = calloc(1, sizeof *choice);
    double *acc = eng_ppd_accuracy(s->ad);
    int rc = choice && acc ? 0 : ENG_E_NOMEM;
    if (!rc && !(rc = eng_calib_setup_table(&t, e, &so, cached, path, cap)))
        rc = eng_calib_choose(choice, &t, acc, eng_ppd_accuracy_joint(s->ad, acc), s->ad->n_prompt, s->ad->topk, 1,
                              ENG_CALIB_BUDGET_MAX_DEFAULT);
    if (!rc) {
        *tree_budget = choice->by_batch[1].L;
        *gain = choice->plain_tokens_per_s[1] <= 0 ? 0
                : choice->by_batch[1].tokens_per_s / choice->plain_tokens_per_s[1];
    }
    free(choice);
    free(acc);
    return rc;
}

static void calib_log_choice(const struct eng_calib_choice *c, bool cached, double seconds, const char *path,
                             bool any_tree) {
    LOG_INFO("calibration: %s in %.1f s (%s)", cached ? "cached table loaded" : "measured", seconds,
             path[0] ? path : "not cached");
    LOG_INFO("calibration: sequences | L (0: plain) | rows per step | predicted tokens/step | predicted tokens/s | plain tokens/s");
    for (int b = 1; b <= c->n_slot; b++) {
        const struct eng_calib_pick *p = &c->by_batch[b];
        LOG_INFO("calibration: %9d | %13d | %13d | %21.3f | %18.1f | %14.1f", b, p->L, b * p->max_T,
                 p->tokens_per_step, p->tokens_per_s, c->plain_tokens_per_s[b]);
    }
    if (!any_tree) LOG_INFO("calibration: plain decoding predicted fastest at every batch size: PPD stays off");
}

int eng_calib_setup_sched(struct eng_calib_result **out, struct eng_engine *e, struct eng_sched *sched,
                          const struct eng_ppd_setup *s, const struct eng_calib_setup_opts *o, char *err,
                          size_t err_cap) {
    *out = NULL;
    const double t0 = eng_now_s();
    struct eng_calib_table *t = calloc(1, sizeof *t);
    struct eng_calib_result *r = calloc(1, sizeof *r);
    double *acc = eng_ppd_accuracy(s->ad);
    char path[4096] = "";
    int rc = ENG_E_NOMEM;
    if (!t || !r || !acc) goto fail;
    if ((rc = eng_calib_setup_table(t, e, o, &r->cached, path, sizeof path))) goto fail;
    if ((rc = eng_calib_choose(&r->choice, t, acc, eng_ppd_accuracy_joint(s->ad, acc), s->ad->n_prompt, s->ad->topk,
                               o->n_slot, ENG_CALIB_BUDGET_MAX_DEFAULT)))
        goto fail;
    if ((rc = eng_calib_trees_init(&r->trees, &r->choice, s->ad, err, err_cap))) goto fail;
    if ((rc = eng_sched_set_ppd(sched, r->trees.widest, r->trees.by_batch))) goto fail;
    r->seconds = r->cached ? 0 : t->seconds;
    calib_log_choice(&r->choice, r->cached, eng_now_s() - t0, path, r->trees.widest != NULL);
    free(t);
    free(acc);
    *out = r;
    return 0;
fail:
    eng_calib_result_free(r);
    free(t);
    free(acc);
    return rc;
}

void eng_calib_result_free(struct eng_calib_result *r) {
    if (!r) return;
    eng_calib_trees_free(&r->trees);
    free(r);
}
