/* train.c — the prompt-token training loop of train.h: data, cut points, the
 * teacher prefill, AdamW with a cosine schedule, held-out hit rates,
 * checkpoints.
 */
#include "engine/train/train.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/batch.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/load/gguf.h"
#include "common/qtypes.h"
#include "engine/load/tokenizer.h"
#include "engine/train/train_model.h"

void eng_train_params_default(struct eng_train_params *p) {
    memset(p, 0, sizeof *p);
    p->n_prompt = 3;
    p->topk = 10;
    p->epochs = 1;
    p->batch_seqs = 4;
    p->cuts_per_seq = 16;
    p->lr = 1e-2;
    p->beta1 = 0.9;
    p->beta2 = 0.999;
    p->adam_eps = 1e-8;
    p->decay = 0.8;
    p->val_frac = 0.05;
    p->val_max_seqs = 64;
    p->seed = 1;
    p->n_threads = 1;
}

/* ------------------------------------------------------------------ random -- */

static uint64_t tr_mix(uint64_t x) {   /* splitmix64's finaliser */
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t tr_next(uint64_t *s) {
    *s += 0x9E3779B97F4A7C15ULL;
    return tr_mix(*s);
}

/* A stream for one (purpose, epoch, item): independent of everything else, so
 * a resumed run draws exactly what an uninterrupted one would. */
static uint64_t tr_stream(uint64_t seed, uint64_t purpose, uint64_t epoch, uint64_t item) {
    return tr_mix(seed ^ tr_mix(purpose ^ tr_mix(epoch ^ tr_mix(item))));
}

static void tr_shuffle(int *a, int n, uint64_t state) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(tr_next(&state) % (uint64_t)(i + 1));
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ------------------------------------------------------------------- data -- */

struct tr_seq {
    int32_t *ids;
    int n, n_prompt;
};

struct tr_data {
    struct tr_seq *seq;
    int n, max_len, skipped;
    long tokens;
};

static void tr_data_free(struct tr_data *d) {
    for (int i = 0; i < d->n; i++) free(d->seq[i].ids);
    free(d->seq);
    memset(d, 0, sizeof *d);
}

static int tr_ids(json_t *arr, int32_t *out, int n_vocab) {
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_vocab) return -1;
        out[i] = (int32_t)json_integer_value(v);
    }
    return 0;
}

static int tr_load(const char *path, const struct eng_model *m, const struct eng_train_params *p, struct tr_data *d,
                   char *err, size_t cap) {
    memset(d, 0, sizeof *d);
    FILE *fp = fopen(path, "r");
    if (!fp) { snprintf(err, cap, "%s: cannot open the training data", path); return ENG_E_IO; }
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    int rc = 0, lineno = 0, n_cap = 0;
    char want_fp[32];
    snprintf(want_fp, sizeof want_fp, "0x%016llx", (unsigned long long)m->fingerprint);
    while ((len = getline(&line, &line_cap, fp)) > 0) {
        lineno++;
        if (line[len - 1] != '\n' && feof(fp)) {   /* a record still being written (distill running) */
            ENG_LOG(ENG_LOG_WARN, "%s:%d: incomplete last line ignored", path, lineno);
            break;
        }
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)len, 0, &je);
        if (!o || !json_is_object(o)) {
            snprintf(err, cap, "%s:%d: not a JSON object (%s)", path, lineno, o ? "wrong type" : je.text);
            json_decref(o);
            rc = ENG_E_FORMAT;
            break;
        }
        if (lineno == 1) {
            const char *fpr = json_string_value(json_object_get(o, "fingerprint"));
            if (!json_object_get(o, "ppd_distill") || !fpr) {
                snprintf(err, cap, "%s:1: not a `ppd distill` file (no header with ppd_distill and fingerprint)", path);
                rc = ENG_E_FORMAT;
            } else if (strcmp(fpr, want_fp) != 0) {
                const char *name = json_string_value(json_object_get(o, "model"));
                snprintf(err, cap, "%s: distilled from %s (fingerprint %s), not from %s (fingerprint %s)", path,
                         name ? name : "another model", fpr, m->name, want_fp);
                rc = ENG_E_INVALID;
            }
            json_decref(o);
            if (rc) break;
            continue;
        }
        json_t *pr = json_object_get(o, "prompt"), *an = json_object_get(o, "answer");
        if (!json_is_array(pr) || !json_is_array(an) || json_array_size(pr) < 1) {
            snprintf(err, cap, "%s:%d: a record needs \"prompt\" (non-empty) and \"answer\" arrays of token ids", path, lineno);
            json_decref(o);
            rc = ENG_E_FORMAT;
            break;
        }
        const int np = (int)json_array_size(pr), na = (int)json_array_size(an);
        if (na < p->n_prompt + 2 || np + na > m->hp.n_ctx_train) {   /* no cut point fits, or too long */
            d->skipped++;
            json_decref(o);
            continue;
        }
        if (d->n == n_cap) {
            n_cap = n_cap ? 2 * n_cap : 256;
            struct tr_seq *ns = realloc(d->seq, (size_t)n_cap * sizeof *ns);
            if (!ns) { json_decref(o); rc = ENG_E_NOMEM; break; }
            d->seq = ns;
        }
        struct tr_seq *s = &d->seq[d->n];
        s->ids = malloc((size_t)(np + na) * sizeof(int32_t));
        if (!s->ids) { json_decref(o); rc = ENG_E_NOMEM; break; }
        if (tr_ids(pr, s->ids, m->hp.n_vocab) || tr_ids(an, s->ids + np, m->hp.n_vocab)) {
            snprintf(err, cap, "%s:%d: token ids must be integers in [0, %d)", path, lineno, m->hp.n_vocab);
            free(s->ids);
            json_decref(o);
            rc = ENG_E_FORMAT;
            break;
        }
        s->n = np + na;
        s->n_prompt = np;
        d->n++;
        d->tokens += s->n;
        if (s->n > d->max_len) d->max_len = s->n;
        json_decref(o);
        if (p->max_seqs > 0 && d->n >= p->max_seqs) break;
    }
    free(line);
    fclose(fp);
    if (!rc && lineno == 0) { snprintf(err, cap, "%s: empty file", path); rc = ENG_E_FORMAT; }
    if (!rc && d->n < 2) {
        snprintf(err, cap, "%s: %d usable sequences (answers need at least N + 2 = %d tokens); need 2 or more", path,
                 d->n, p->n_prompt + 2);
        rc = ENG_E_INVALID;
    }
    if (rc) tr_data_free(d);
    return rc;
}

/* k distinct cut points L in [n_prompt, n - N - 1], ascending (Floyd's sampling). */
static int tr_pick_cuts(const struct tr_seq *s, int N, int k, uint64_t state, int *out) {
    const int lo = s->n_prompt, count = s->n - N - 1 - lo + 1;
    if (k > count) k = count;
    int n = 0;
    for (int j = count - k; j < count; j++) {
        int t = (int)(tr_next(&state) % (uint64_t)(j + 1)), seen = 0;
        for (int i = 0; i < n; i++) seen |= out[i] == lo + t;
        out[n++] = lo + (seen ? j : t);
    }
    for (int i = 1; i < n; i++)   /* insertion sort: k is small */
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) { int t = out[j]; out[j] = out[j - 1]; out[j - 1] = t; }
    return n;
}

/* ------------------------------------------------------------ teacher pass -- */

struct tr_ctx {
    const struct eng_train_params *p;
    struct eng_engine *e;
    struct eng_tm *tm;
    struct eng_tm_work *work;
    struct eng_batch batch;
    float *teacher;          /* [batch_seqs * cuts_per_seq * N, V] */
    struct eng_tm_cut *cuts; /* [batch_seqs * cuts_per_seq] */
    int *cut_l;              /* [cuts_per_seq] scratch */
    int *ranks;              /* [batch_seqs * cuts_per_seq * N]: the last pass's ranks of the truth */
    float wt[ENG_PPD_MAX_PROMPT];
    int chunk;
    double teacher_s, student_s;
};

/* Prefill sequence s into slot `slot` and fill cuts[0..n_cut) (at cut_l) with
 * its prefix K/V and the teacher logits of rows L..L+N-1. */
static int tr_teacher(struct tr_ctx *c, const struct tr_seq *s, int slot, const int *cut_l, int n_cut,
                      struct eng_tm_cut *cuts, float *teacher) {
    struct eng_engine *e = c->e;
    struct eng_kv *kv = &e->kv;
    const int N = c->p->n_prompt, V = e->model->hp.n_vocab;
    kv->len[slot] = 0;
    for (int i = 0; i < s->n; i += c->chunk) {
        const int n = s->n - i < c->chunk ? s->n - i : c->chunk;
        eng_batch_clear(&c->batch);
        int rc = eng_batch_add_causal(&c->batch, slot, kv->len[slot], s->ids + i, n, false);
        if (rc) return rc;
        for (int r = 0; r < n; r++) {   /* positions some cut needs the teacher at */
            const int pos = i + r;
            for (int k = 0; k < n_cut && !c->batch.want_logits[r]; k++)
                c->batch.want_logits[r] = pos >= cut_l[k] && pos < cut_l[k] + N;
        }
        if ((rc = eng_forward_run(&e->fwd, &c->batch, kv, NULL, 0))) return rc;
        for (int j = 0; j < e->fwd.n_logits; j++) {
            const int pos = i + e->fwd.logit_rows[j];
            for (int k = 0; k < n_cut; k++)
                if (pos >= cut_l[k] && pos < cut_l[k] + N)
                    memcpy(teacher + ((size_t)k * N + (size_t)(pos - cut_l[k])) * V, e->fwd.logits + (size_t)j * V,
                           (size_t)V * sizeof(float));
        }
        kv->len[slot] += n;
    }
    for (int k = 0; k < n_cut; k++)
        cuts[k] = (struct eng_tm_cut){.n_prefix = cut_l[k],
                                      .k = kv->k + eng_kv_offset(kv, 0, slot, 0),
                                      .v = kv->v + eng_kv_offset(kv, 0, slot, 0),
                                      .layer_stride = (size_t)kv->n_slot * kv->max_seq * kv->kv_dim,
                                      .teacher = teacher + (size_t)k * N * V};
    return 0;
}

/* Forward (and backward when grad) over the sequences idx[0..n): purpose and
 * epoch select their cut points. */
static int tr_pass(struct tr_ctx *c, const struct tr_data *d, const int *idx, int n, uint64_t purpose,
                   uint64_t epoch, const float *emb, float *grad, struct eng_tm_result *res) {
    const int N = c->p->n_prompt, V = c->e->model->hp.n_vocab;
    int n_cut = 0;
    const double t0 = eng_now_s();
    for (int b = 0; b < n; b++) {
        const struct tr_seq *s = &d->seq[idx[b]];
        int k = tr_pick_cuts(s, N, c->p->cuts_per_seq, tr_stream(c->p->seed, purpose, epoch, (uint64_t)idx[b]), c->cut_l);
        int rc = tr_teacher(c, s, b, c->cut_l, k, c->cuts + n_cut, c->teacher + (size_t)n_cut * N * V);
        if (rc) return rc;
        n_cut += k;
    }
    const double t1 = eng_now_s();
    int rc = eng_tm_run(c->tm, c->work, emb, N, c->cuts, n_cut, c->wt, grad, grad ? 1.0f / (float)(N * n_cut) : 0.0f,
                        c->p->topk, res, c->ranks);
    c->teacher_s += t1 - t0;
    c->student_s += eng_now_s() - t1;
    return rc;
}

/* Held-out loss and hit rates, in batches of batch_seqs sequences; joint (NULL
 * or [(K+1)^N]) receives the distribution of the rank tuples, index
 * sum_i r_i (K+1)^i with rank K for "not in the top K". */
static int tr_validate(struct tr_ctx *c, const struct tr_data *d, const int *val, int n_val, const float *emb,
                       double *loss, double acc[ENG_PPD_MAX_PROMPT][ENG_PPD_MAX_TOPK], float *joint) {
    const int N = c->p->n_prompt, K = c->p->topk, nj = eng_ppd_joint_size(N, K);
    long *jcount = NULL;
    if (joint && nj && !(jcount = calloc((size_t)nj, sizeof *jcount))) return ENG_E_NOMEM;
    double sum = 0;
    long n_cut = 0, hits[ENG_PPD_MAX_PROMPT][ENG_PPD_MAX_TOPK] = {{0}};
    for (int i = 0; i < n_val; i += c->p->batch_seqs) {
        const int n = n_val - i < c->p->batch_seqs ? n_val - i : c->p->batch_seqs;
        struct eng_tm_result res;
        int rc = tr_pass(c, d, val + i, n, 2, 0, emb, NULL, &res);
        if (rc) { free(jcount); return rc; }
        for (long k = 0; jcount && k < res.n_cut; k++) {
            long idx = 0, w = 1;
            for (int a = 0; a < N; a++, w *= K + 1) idx += w * c->ranks[k * N + a];
            jcount[idx]++;
        }
        sum += res.loss;
        n_cut += res.n_cut;
        for (int a = 0; a < N; a++)
            for (int k = 0; k < K; k++) hits[a][k] += res.hits[a][k];
    }
    *loss = sum / ((double)N * (double)n_cut);
    for (int a = 0; a < N; a++)
        for (int k = 0; k < K; k++) acc[a][k] = (double)hits[a][k] / (double)n_cut;
    for (int i = 0; jcount && i < nj; i++) joint[i] = (float)((double)jcount[i] / (double)n_cut);
    free(jcount);
    return 0;
}

/* -------------------------------------------------------------- checkpoint -- */

struct tr_state {
    long step;
    float *emb, *m, *v;      /* [rows, H] each: N rows, or N per layer with deep prompts */
};

static int tr_ckpt_save(const struct eng_train_params *p, const struct tr_state *st, int H, int rows, long total_steps,
                        int n_records, char *err, size_t cap) {
    struct gguf_writer *w = gguf_writer_new();
    if (!w) return ENG_E_NOMEM;
    const uint64_t step = (uint64_t)st->step, seed = p->seed, total = (uint64_t)total_steps;
    int64_t ne[2] = {H, rows};   /* N rows, or N per layer for deep prompts */
    int rc;
    if ((rc = gguf_writer_set_str(w, "general.architecture", "ppd-train-checkpoint")) ||
        (rc = gguf_writer_set_scalar(w, "train.step", GGUF_VT_UINT64, &step)) ||
        (rc = gguf_writer_set_scalar(w, "train.seed", GGUF_VT_UINT64, &seed)) ||
        (rc = gguf_writer_set_scalar(w, "train.total_steps", GGUF_VT_UINT64, &total)) ||
        (rc = gguf_writer_set_u32(w, "train.records", (uint32_t)n_records)) ||
        (rc = gguf_writer_set_u32(w, "train.batch_seqs", (uint32_t)p->batch_seqs)) ||
        (rc = gguf_writer_set_u32(w, "train.cuts_per_seq", (uint32_t)p->cuts_per_seq)) ||
        (rc = gguf_writer_set_f32(w, "train.lr", (float)p->lr)) ||
        (p->loss_ce && (rc = gguf_writer_set_u32(w, "train.loss_ce", 1))) ||   /* absent: KL, as older checkpoints */
        (rc = gguf_writer_add_tensor(w, "train.emb", KQ_F32, 2, ne, st->emb)) ||
        (rc = gguf_writer_add_tensor(w, "train.adam_m", KQ_F32, 2, ne, st->m)) ||
        (rc = gguf_writer_add_tensor(w, "train.adam_v", KQ_F32, 2, ne, st->v)))
        goto out;
    rc = gguf_writer_write(w, p->checkpoint_path, err, cap);
out:
    gguf_writer_free(w);
    return rc;
}

static int tr_ckpt_u64(const struct gguf_file *g, const char *key, uint64_t want, const char *path, char *err,
                       size_t cap) {
    const struct gguf_kv *kv = gguf_find_kv(g, key);
    uint64_t have = 0;
    if (kv && (kv->type == GGUF_VT_UINT64 || kv->type == GGUF_VT_UINT32)) have = kv->v.u;
    else { snprintf(err, cap, "%s: %s: missing", path, key); return ENG_E_FORMAT; }
    if (have != want) {
        snprintf(err, cap, "%s: %s is %llu in the checkpoint but %llu now: resume with the same settings and data",
                 path, key, (unsigned long long)have, (unsigned long long)want);
        return ENG_E_INVALID;
    }
    return 0;
}

static int tr_ckpt_load(const struct eng_train_params *p, struct tr_state *st, int H, int rows, long total_steps,
                        int n_records, char *err, size_t cap) {
    struct gguf_file *g = NULL;
    int rc = gguf_open(&g, p->checkpoint_path, err, cap);
    if (rc) return rc;
    const char *path = p->checkpoint_path;
    if ((rc = tr_ckpt_u64(g, "train.seed", p->seed, path, err, cap)) ||
        (rc = tr_ckpt_u64(g, "train.total_steps", (uint64_t)total_steps, path, err, cap)) ||
        (rc = tr_ckpt_u64(g, "train.records", (uint64_t)n_records, path, err, cap)) ||
        (rc = tr_ckpt_u64(g, "train.batch_seqs", (uint64_t)p->batch_seqs, path, err, cap)) ||
        (rc = tr_ckpt_u64(g, "train.cuts_per_seq", (uint64_t)p->cuts_per_seq, path, err, cap)))
        goto out;
    const struct gguf_kv *lk = gguf_find_kv(g, "train.loss_ce");
    if ((lk && lk->type == GGUF_VT_UINT32 && lk->v.u) != (p->loss_ce != 0)) {
        snprintf(err, cap, "%s: train.loss_ce: the checkpoint was trained with the %s loss, not %s: resume with the same "
                 "settings and data", path, p->loss_ce ? "KL" : "CE", p->loss_ce ? "CE" : "KL");
        rc = ENG_E_INVALID;
        goto out;
    }
    const struct gguf_kv *sk = gguf_find_kv(g, "train.step");
    if (!sk || sk->type != GGUF_VT_UINT64 || sk->v.u > (uint64_t)total_steps) {
        snprintf(err, cap, "%s: train.step: missing or past the end", path);
        rc = ENG_E_FORMAT;
        goto out;
    }
    st->step = (long)sk->v.u;
    const char *names[3] = {"train.emb", "train.adam_m", "train.adam_v"};
    float *dst[3] = {st->emb, st->m, st->v};
    for (int i = 0; i < 3; i++) {
        const struct gguf_tensor *t = gguf_find_tensor(g, names[i]);
        if (!t || t->type != KQ_F32 || t->ne[0] != H || t->ne[1] != rows || t->n_dims != 2) {
            snprintf(err, cap, "%s: tensor %s: missing or not F32 [%d, %d]%s", path, names[i], rows, H,
                     rows != p->n_prompt ? " (deep prompts: resume with --deep)" : "");
            rc = ENG_E_FORMAT;
            goto out;
        }
        memcpy(dst[i], t->data, (size_t)H * rows * sizeof(float));
    }
out:
    gguf_close(g);
    return rc;
}

/* ------------------------------------------------------------------ driver -- */

static void tr_progress(const struct eng_train_params *p, long step, long total, double loss, double lr, double t0,
                        long done0) {
    if (!p->progress) return;
    const double el = eng_now_s() - t0;
    const double rate = (double)(step - done0) / (el > 1e-9 ? el : 1e-9);
    const double eta = rate > 0 ? (double)(total - step) / rate : 0;
    fprintf(stderr, "\rppd train: step %ld/%ld  loss %.4f  lr %.2e  %.2f steps/s  ETA %dm%02ds   ", step, total,
            loss, lr, rate, (int)(eta / 60), (int)eta % 60);
    fflush(stderr);
}

#define MEASURED_TAG "; hit rates measured on "

int eng_train_run(const struct eng_train_params *p, struct eng_train_report *rep, char *err, size_t cap) {
    err[0] = 0;
    memset(rep, 0, sizeof *rep);
    if (p->n_prompt < 1 || p->n_prompt > ENG_PPD_MAX_PROMPT || p->topk < 1 || p->topk > ENG_PPD_MAX_TOPK ||
        p->batch_seqs < 1 || p->cuts_per_seq < 1 || p->epochs < 1 || !(p->lr > 0) || p->val_frac < 0 ||
        p->val_frac > 1 || (p->val_frac == 1 && !p->eval_only)) {
        snprintf(err, cap, "bad training settings (N %d, K %d, batch %d, cuts %d, epochs %d, lr %g, val %g)",
                 p->n_prompt, p->topk, p->batch_seqs, p->cuts_per_seq, p->epochs, p->lr, p->val_frac);
        return ENG_E_INVALID;
    }
    if (p->eval_only && (!p->init_path || !(p->val_frac > 0))) {
        snprintf(err, cap, "measuring only needs an adapter to measure (--init) and a held-out share (--val)");
        return ENG_E_INVALID;
    }
    const double t_start = eng_now_s();
    struct tr_ctx c = {.p = p};
    struct tr_data d = {0};
    struct eng_ppd_adapter *init = NULL, out_ad = {0};
    struct tr_state st = {0};
    float *grad = NULL;
    int *order = NULL;
    int rc;
    /* the model first (for the fingerprint), with a context sized to the data afterwards */
    struct eng_backend be0 = {0};
    struct eng_model *m0 = NULL;
    if ((rc = eng_backend_cpu_init(&be0, 1)) || (rc = eng_model_load(&m0, p->model_path, &be0, err, cap))) {
        eng_backend_free(&be0);
        return rc;
    }
    rc = tr_load(p->data_path, m0, p, &d, err, cap);
    eng_model_free(m0);
    eng_backend_free(&be0);
    if (rc) return rc;

    c.chunk = 128;
    struct eng_engine_params ep = {.model_path = p->model_path, .n_threads = p->n_threads,
                                   .n_ctx = d.max_len, .n_slot = p->batch_seqs, .max_rows = c.chunk};
    if ((rc = eng_engine_open(&c.e, &ep, err, cap))) goto done;
    const struct eng_hparams *hp = &c.e->model->hp;
    const int N = p->n_prompt, H = hp->n_embd, V = hp->n_vocab, K = p->topk;
    if ((rc = eng_tm_from_model(&c.tm, c.e->model, p->n_threads, err, cap))) goto done;
    rc = ENG_E_NOMEM;
    const int max_cuts = p->batch_seqs * p->cuts_per_seq;
    if ((rc = eng_tm_work_init(&c.work, c.tm, N, max_cuts, d.max_len)) ||
        (rc = eng_batch_init(&c.batch, c.chunk, c.chunk)))
        goto done;
    eng_tm_work_set_loss(c.work, p->loss_ce ? ENG_TM_LOSS_CE : ENG_TM_LOSS_KL);
    rc = ENG_E_NOMEM;
    c.teacher = malloc((size_t)max_cuts * N * V * sizeof(float));
    c.cuts = calloc((size_t)max_cuts, sizeof *c.cuts);
    c.cut_l = malloc((size_t)p->cuts_per_seq * sizeof(int));
    c.ranks = malloc((size_t)max_cuts * N * sizeof(int));
    order = malloc((size_t)d.n * sizeof(int));
    if (!c.teacher || !c.cuts || !c.cut_l || !c.ranks || !order) goto done;
    for (int i = 0; i < N; i++) c.wt[i] = (float)pow(p->decay, i);

    /* split: a seeded shuffle; the held-out part first */
    for (int i = 0; i < d.n; i++) order[i] = i;
    tr_shuffle(order, d.n, tr_stream(p->seed, 1, 0, 0));
    int n_val = (int)ceil(p->val_frac * d.n);
    if (p->val_max_seqs > 0 && n_val > p->val_max_seqs) n_val = p->val_max_seqs;
    if (p->val_frac > 0 && n_val < 1) n_val = 1;
    if (n_val >= d.n && !p->eval_only) n_val = d.n - 1;   /* training keeps one sequence at least */
    if (n_val > d.n) n_val = d.n;
    const int *val = order, n_train = d.n - n_val;
    const int *train = order + n_val;
    const long steps_per_epoch = (n_train + p->batch_seqs - 1) / p->batch_seqs;
    long total = steps_per_epoch * p->epochs;
    if (p->max_steps > 0 && p->max_steps < total) total = p->max_steps;
    rep->n_train = n_train;
    rep->n_val = n_val;
    for (int i = 0; i < d.n; i++) rep->tokens += d.seq[i].n;

    /* the starting point */
    if (p->init_path) {
        if ((rc = eng_ppd_adapter_load(&init, p->init_path, c.e->model, err, cap))) goto done;
        if (init->n_prompt != N) {
            snprintf(err, cap, "%s: has %d prompt tokens, training asks for %d", p->init_path, init->n_prompt, N);
            rc = ENG_E_INVALID;
            goto done;
        }
    } else if ((rc = eng_ppd_adapter_init_text(&init, c.e->model, c.e->tok, N, K, ENG_PPD_INIT_TEXT, err, cap))) {
        goto done;
    }
    /* deep prompts: a vector per layer, [n_layer][N][H] with the embeddings as
     * layer 0; asked for, or continued from an adapter that has them */
    const int deep = p->deep || init->deep, rows = deep ? N * hp->n_layer : N;
    const size_t PN = (size_t)rows * H;   /* trained numbers */
    if (init->deep && init->n_deep != hp->n_layer - 1) {
        snprintf(err, cap, "%s: deep prompts for %d layers, the model has %d", p->init_path, init->n_deep + 1,
                 hp->n_layer);
        rc = ENG_E_INVALID;
        goto done;
    }
    eng_tm_work_set_deep(c.work, deep);
    rc = ENG_E_NOMEM;
    grad = malloc(PN * sizeof(float));
    st.emb = calloc(PN, sizeof(float));   /* new deep vectors start at zero: the shallow model */
    st.m = calloc(PN, sizeof(float));
    st.v = calloc(PN, sizeof(float));
    if (!grad || !st.emb || !st.m || !st.v) goto done;
    rc = 0;
    memcpy(st.emb, init->emb, (size_t)N * H * sizeof(float));
    if (init->deep) memcpy(st.emb + (size_t)N * H, init->deep, (size_t)N * H * init->n_deep * sizeof(float));
    if (p->resume && p->checkpoint_path && access(p->checkpoint_path, F_OK) == 0) {
        if ((rc = tr_ckpt_load(p, &st, H, rows, total, d.n, err, cap))) goto done;
        ENG_LOG(ENG_LOG_INFO, "ppd train: resuming at step %ld of %ld", st.step, total);
    }

    double acc[ENG_PPD_MAX_PROMPT][ENG_PPD_MAX_TOPK];
    if (n_val > 0 && st.step == 0 && !p->eval_only) {
        if ((rc = tr_validate(&c, &d, val, n_val, st.emb, &rep->val_loss_init, acc, NULL))) goto done;
        for (int i = 0; i < N; i++) rep->acc_init[i] = acc[i][0];
        if (!p->progress)
            fprintf(stderr, "ppd train: step 0: held-out loss %.4f, top-1 %.3f/%.3f/%.3f\n", rep->val_loss_init,
                    acc[0][0], N > 1 ? acc[1][0] : 0, N > 2 ? acc[2][0] : 0);
    }
    const double t0 = eng_now_s();
    const long step0 = st.step;
    double loss_sum = 0;
    long loss_n = 0;
    const long stop = p->eval_only ? st.step : p->stop_after > 0 && p->stop_after < total ? p->stop_after : total;
    while (st.step < stop) {
        const long e = st.step / steps_per_epoch, within = st.step % steps_per_epoch;
        int *perm = malloc((size_t)n_train * sizeof(int));
        if (!perm) { rc = ENG_E_NOMEM; goto done; }
        memcpy(perm, train, (size_t)n_train * sizeof(int));   /* this epoch's order */
        tr_shuffle(perm, n_train, tr_stream(p->seed, 3, (uint64_t)e, 0));
        const int b0 = (int)(within * p->batch_seqs);
        const int nb = n_train - b0 < p->batch_seqs ? n_train - b0 : p->batch_seqs;
        memset(grad, 0, PN * sizeof(float));
        struct eng_tm_result res;
        rc = tr_pass(&c, &d, perm + b0, nb, 4, (uint64_t)e, st.emb, grad, &res);
        free(perm);
        if (rc) goto done;
        const double step_loss = res.loss / ((double)N * (double)res.n_cut);
        loss_sum += step_loss;
        loss_n++;
        rep->cuts += res.n_cut;
        /* AdamW with a cosine schedule (no warm-up, as the reference) */
        const long t = st.step + 1;
        const double lr = p->lr * 0.5 * (1.0 + cos(M_PI * (double)st.step / (double)total));
        const double bc1 = 1.0 - pow(p->beta1, (double)t), bc2 = 1.0 - pow(p->beta2, (double)t);
        for (size_t j = 0; j < PN; j++) {
            const double g = grad[j];
            st.m[j] = (float)(p->beta1 * st.m[j] + (1.0 - p->beta1) * g);
            st.v[j] = (float)(p->beta2 * st.v[j] + (1.0 - p->beta2) * g * g);
            const double upd = (st.m[j] / bc1) / (sqrt(st.v[j] / bc2) + p->adam_eps) + p->weight_decay * st.emb[j];
            st.emb[j] = (float)(st.emb[j] - lr * upd);
        }
        st.step++;
        tr_progress(p, st.step, total, loss_sum / (double)loss_n, lr, t0, step0);
        const int last = st.step == stop;
        if (p->eval_every > 0 && st.step % p->eval_every == 0 && !last && n_val > 0) {
            double vl;
            if ((rc = tr_validate(&c, &d, val, n_val, st.emb, &vl, acc, NULL))) goto done;
            fprintf(stderr, "%sppd train: step %ld: train loss %.4f, held-out loss %.4f, top-1 %.3f/%.3f/%.3f\n",
                    p->progress ? "\n" : "", st.step, loss_sum / (double)loss_n, vl, acc[0][0], N > 1 ? acc[1][0] : 0,
                    N > 2 ? acc[2][0] : 0);
            rep->train_loss = loss_sum / (double)loss_n;
            loss_sum = 0;
            loss_n = 0;
        }
        if (p->checkpoint_path && ((p->save_every > 0 && st.step % p->save_every == 0) || last))
            if ((rc = tr_ckpt_save(p, &st, H, rows, total, d.n, err, cap))) goto done;
    }
    if (p->progress) fprintf(stderr, "\n");
    if (loss_n) rep->train_loss = loss_sum / (double)loss_n;
    rep->steps = st.step;

    /* the adapter, with the held-out hit rates for the tree builder */
    float *acc_f = NULL, *joint_f = NULL;
    const int nj = eng_ppd_joint_size(N, K);
    if (n_val > 0) {
        if (nj && !(joint_f = malloc((size_t)nj * sizeof(float)))) { rc = ENG_E_NOMEM; goto done; }
        if ((rc = tr_validate(&c, &d, val, n_val, st.emb, &rep->val_loss, rep->acc, joint_f))) { free(joint_f); goto done; }
        if (!(acc_f = malloc((size_t)N * K * sizeof(float)))) { free(joint_f); rc = ENG_E_NOMEM; goto done; }
        for (int i = 0; i < N; i++)
            for (int k = 0; k < K; k++) acc_f[i * K + k] = (float)rep->acc[i][k];
    }
    out_ad.n_prompt = N;
    out_ad.topk = K;
    out_ad.n_embd = H;
    out_ad.emb = st.emb;
    out_ad.deep = deep ? st.emb + (size_t)N * H : NULL;
    out_ad.n_deep = deep ? hp->n_layer - 1 : 0;
    out_ad.accuracy = acc_f;
    out_ad.joint = joint_f;
    snprintf(out_ad.base_name, sizeof out_ad.base_name, "%s", c.e->model->name);
    out_ad.base_fingerprint = c.e->model->fingerprint;
    snprintf(out_ad.init_text, sizeof out_ad.init_text, "%s", init->init_text);
    const char *slash = strrchr(p->data_path, '/');
    snprintf(out_ad.provenance, sizeof out_ad.provenance,
             "ppd train: %s (%d sequences, %d held out), %ld steps x %d seqs x %d cuts, AdamW lr %g cosine, seed %llu%s%s",
             slash ? slash + 1 : p->data_path, n_train, n_val, rep->steps, p->batch_seqs, p->cuts_per_seq, p->lr,
             (unsigned long long)p->seed, p->loss_ce ? ", CE loss" : "", deep ? ", deep prompts" : "");
    if (p->eval_only) {   /* the embeddings are the init adapter's: keep what it says about them */
        char base[sizeof out_ad.provenance];
        snprintf(base, sizeof base, "%s", init->provenance);
        char *prev = strstr(base, MEASURED_TAG);   /* measured again: the newest measurement replaces it */
        if (prev) *prev = 0;
        char full[2 * sizeof out_ad.provenance + 64];
        snprintf(full, sizeof full, "%s" MEASURED_TAG "%s (%d sequences x %d cuts)", base,
                 slash ? slash + 1 : p->data_path, n_val, p->cuts_per_seq);
        size_t n = strlen(full);   /* a long provenance is cut, not refused */
        if (n >= sizeof out_ad.provenance) n = sizeof out_ad.provenance - 1;
        memcpy(out_ad.provenance, full, n);
        out_ad.provenance[n] = 0;
        out_ad.tree_budget = init->tree_budget;
        out_ad.tuned_speedup = init->tuned_speedup;
    }
    rc = eng_ppd_adapter_save(&out_ad, p->out_path, err, cap);
    free(acc_f);
    free(joint_f);
    rep->seconds = eng_now_s() - t_start;
    rep->teacher_s = c.teacher_s;
    rep->student_s = c.student_s;
done:
    if (rc && !err[0]) snprintf(err, cap, "training failed: %s", eng_err_msg(rc));
    eng_ppd_adapter_free(init);
    free(grad);
    free(order);
    free(st.emb), free(st.m), free(st.v);
    free(c.teacher), free(c.cuts), free(c.cut_l), free(c.ranks);
    eng_batch_free(&c.batch);
    eng_tm_work_free(c.work);
    eng_tm_free(c.tm);
    eng_engine_close(c.e);
    tr_data_free(&d);
    return rc;
}
