/* ppd.c — the PPD decode step of ppd.h: batch rows, verification, emission,
 * KV compaction, next guesses; and the single-sequence loop on top of it.
 *
 * Nothing here allocates per step: the candidate array and the sampler
 * scratch are sized at eng_ppd_seq_init.
 */
#include "engine/ppd/ppd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/load/tokenizer.h"

int eng_ppd_init(struct eng_ppd *p, const struct eng_ppd_adapter *ad, const struct eng_ppd_tree_family *fam,
                 char *err, size_t cap) {
    memset(p, 0, sizeof *p);
    if (fam->n_prompt != ad->n_prompt || fam->topk != ad->topk) {
        snprintf(err, cap, "the tree family is for N=%d, K=%d but the adapter has N=%d, K=%d", fam->n_prompt,
                 fam->topk, ad->n_prompt, ad->topk);
        return ENG_E_INVALID;
    }
    int rc = eng_ppd_trees_init(&p->trees, fam, err, cap);
    if (rc) return rc;
    p->ad = ad;
    p->n_prompt = ad->n_prompt;
    p->topk = ad->topk;
    return 0;
}

void eng_ppd_free(struct eng_ppd *p) {
    if (!p) return;
    eng_ppd_trees_free(&p->trees);
    memset(p, 0, sizeof *p);
}

int eng_ppd_seq_init(struct eng_ppd_seq *s, const struct eng_ppd *ppd, int slot, const struct eng_sampler_params *sp,
                     int n_predict, const struct tok *tok, bool ignore_eog, int n_vocab) {
    memset(s, 0, sizeof *s);
    s->ppd = ppd;
    s->slot = slot;
    s->sp = *sp;
    eng_rng_seed(&s->rng, sp->seed);
    s->tok = tok;
    s->ignore_eog = ignore_eog;
    s->n_predict = n_predict;
    s->d = ppd->n_prompt;
    s->typical = (struct eng_ppd_typical){0.09f, 0.3f};
    const size_t mt = (size_t)ppd->trees.max_T + 1;
    s->cand = calloc(1 + (size_t)ppd->topk * (size_t)ppd->n_prompt, sizeof *s->cand);
    s->node_lse = calloc(mt, sizeof *s->node_lse);
    s->node_tau = calloc(mt, sizeof *s->node_tau);
    s->node_seen = calloc(mt, sizeof *s->node_seen);
    int rc = s->cand && s->node_lse && s->node_tau && s->node_seen ? eng_sampler_scratch_init(&s->scratch, n_vocab)
                                                                   : ENG_E_NOMEM;
    if (rc) eng_ppd_seq_free(s);
    return rc;
}

void eng_ppd_seq_free(struct eng_ppd_seq *s) {
    if (!s) return;
    free(s->cand);
    free(s->node_lse);
    free(s->node_tau);
    free(s->node_seen);
    eng_sampler_scratch_free(s->scratch);
    s->cand = NULL;
    s->node_lse = s->node_tau = NULL;
    s->node_seen = NULL;
    s->scratch = NULL;
}

int eng_ppd_seq_step_rows(const struct eng_ppd_seq *s) {
    return s->plain || s->plain_next ? 1 : s->ppd->trees.st[s->d].T;
}

/* Insert (x, v) into the best-first list val/ids of *n <= K entries: below the
 * entries >= x, so equal logits keep the lower id first. */
static inline void ppd_topk_push(float *val, int32_t *ids, int *n, int K, float x, int32_t v) {
    int i = *n < K ? (*n)++ : K - 1;
    while (i > 0 && val[i - 1] < x) { val[i] = val[i - 1]; ids[i] = ids[i - 1]; i--; }
    val[i] = x;
    ids[i] = v;
}

#define PPD_TOPK_BLOCK 32

/* The K best ids of a logits row, best first; equal logits keep the lower id
 * first, NaN never enters.  Called for every guessing prompt row of every
 * step, so it is the bulk of the step's work outside the forward pass: once K
 * entries are held, a block of logits is first tested as a whole against the
 * K-th best (a fixed-length compare-or the compiler vectorises), and only a
 * block holding a larger one is walked entry by entry.  Same result as the
 * entry-by-entry walk: the test is the walk's own (x > K-th best; false for
 * NaN) against a threshold that only rises. */
static void ppd_topk(const float *logits, int n_vocab, int K, int32_t *ids) {
    float val[ENG_PPD_MAX_TOPK];
    int n = 0, v = 0;
    for (; v < n_vocab && n < K; v++)
        if (logits[v] == logits[v]) ppd_topk_push(val, ids, &n, K, logits[v], v);
    for (; v + PPD_TOPK_BLOCK <= n_vocab; v += PPD_TOPK_BLOCK) {
        const float thr = val[K - 1];
        int any = 0;
        for (int j = 0; j < PPD_TOPK_BLOCK; j++) any |= logits[v + j] > thr;
        if (!any) continue;
        for (int j = 0; j < PPD_TOPK_BLOCK; j++)
            if (logits[v + j] > val[K - 1]) ppd_topk_push(val, ids, &n, K, logits[v + j], v + j);
    }
    for (; v < n_vocab; v++)
        if (logits[v] > val[K - 1]) ppd_topk_push(val, ids, &n, K, logits[v], v);
    for (int i = n; i < K; i++) ids[i] = ids[n ? n - 1 : 0];   /* vocabulary smaller than K: repeat */
}

static const float *ppd_row_logits(const struct eng_forward *f, int batch_row) {
    int r = f->row_logit[batch_row];
    return r < 0 ? NULL : f->logits + (size_t)r * (size_t)f->m->hp.n_vocab;
}

/* Emit one token chosen from the logits of batch row `row`; true when the
 * sequence is finished. */
static bool ppd_emit(struct eng_ppd_seq *s, int32_t id, int row, int32_t *out, int *n_out) {
    s->emit_row[*n_out] = row;
    out[(*n_out)++] = id;
    s->n_emitted++;
    if (!s->ignore_eog && s->tok && tok_is_eog(s->tok, id)) {
        s->done = true;
        s->finish = ENG_FINISH_EOG;
    } else if (s->n_emitted >= s->n_predict) {
        s->done = true;
        s->finish = ENG_FINISH_LENGTH;
    }
    return s->done;
}

/* The guesses of d prompt rows (batch rows given) into cand[1 ..]. */
static int ppd_take_guesses(struct eng_ppd_seq *s, const struct eng_forward *f, const int32_t *rows, int d) {
    const int K = s->ppd->topk, n_vocab = f->m->hp.n_vocab;
    for (int t = 0; t < d; t++) {
        const float *lg = ppd_row_logits(f, rows[t]);
        if (!lg) return ENG_E_INTERNAL;
        ppd_topk(lg, n_vocab, K, s->cand + 1 + (size_t)K * t);
    }
    s->d = d;
    if (s->guess_fn) s->guess_fn(s->guess_user, s->cand, d, K, s->n_emitted);
    return 0;
}

int eng_ppd_seq_prefill_add(struct eng_ppd_seq *s, struct eng_batch *b, const struct eng_kv *kv, const int32_t *rest,
                            int n_rest) {
    if (n_rest < 1) return ENG_E_INVALID;
    const int P0 = kv->len[s->slot], P1 = P0 + n_rest - 1;   /* P1: the last prompt token's entry */
    if (P1 + 1 > kv->max_seq) return ENG_E_TOO_LONG;
    /* No room for the prompt rows: plain decoding from the start (see plain). */
    const int N = P1 + 1 + s->ppd->n_prompt > kv->max_seq ? 0 : s->ppd->n_prompt;
    s->plain = N == 0;
    const int n = n_rest + N, r0 = b->n_tok;
    if (r0 + n > b->cap) return ENG_E_RANGE;
    /* One causal run: the rest of the prompt, then prompt token i as the id
     * -1 - i.  The ids are written where the run's rows go, so the batch
     * copies them onto themselves. */
    int32_t *toks = b->token + r0;
    memcpy(toks, rest, sizeof *toks * (size_t)n_rest);
    for (int i = 0; i < N; i++) toks[n_rest + i] = -1 - i;
    int rc = eng_batch_add_causal(b, s->slot, P0, toks, n, false);
    if (rc) return rc;
    s->b_first = r0 + n_rest - 1;
    for (int i = 0; i <= N; i++) b->want_logits[s->b_first + i] = true;
    s->pending = 1;
    s->n_past = P1;
    return 0;
}

int eng_ppd_seq_prefill_finish(struct eng_ppd_seq *s, const struct eng_forward *f, struct eng_kv *kv, int32_t *out,
                               int *n_out) {
    *n_out = 0;
    if (s->pending != 1) return ENG_E_INVALID;
    s->pending = 0;
    const int N = s->ppd->n_prompt;
    kv->len[s->slot] = s->n_past + 1;   /* the prompt rows' entries are dropped */
    const float *lg = ppd_row_logits(f, s->b_first);
    if (!lg) return ENG_E_INTERNAL;
    int32_t root = s->accept == ENG_PPD_ACCEPT_TYPICAL ? eng_sampler_argmax(lg, f->m->hp.n_vocab)
                                                       : eng_sample(&s->sp, &s->rng, lg, f->m->hp.n_vocab, s->scratch);
    if (root < 0) return root;
    s->cand[0] = root;
    if (ppd_emit(s, root, s->b_first, out, n_out) || s->plain) return 0;
    int32_t rows[ENG_PPD_MAX_PROMPT];
    for (int i = 0; i < N; i++) rows[i] = s->b_first + 1 + i;
    return ppd_take_guesses(s, f, rows, N);
}

int eng_ppd_seq_step_add(struct eng_ppd_seq *s, struct eng_batch *b, const struct eng_kv *kv) {
    if (s->done) return ENG_E_INVALID;
    const struct eng_ppd_tree *tr = &s->ppd->trees.st[s->d];
    const int P = kv->len[s->slot], T = tr->T, W = b->vis_words;
    if (P + 1 > kv->max_seq) return ENG_E_TOO_LONG;
    s->b_first = b->n_tok;
    if (s->plain || s->plain_next || P + T > kv->max_seq) {
        /* The tree no longer fits before the end of the slot: finish with plain
         * one-row steps, so PPD stops exactly where plain decoding would.  Or
         * the caller asked for one plain step (plain_next). */
        int rc = eng_batch_add_causal(b, s->slot, P, &s->cand[0], 1, true);
        if (rc) return rc;
        if (s->plain || P + T > kv->max_seq) s->plain = true;
        s->pending = 3;
        s->n_past = P;
        return 0;
    }
    if (b->n_tok + T > b->cap || T > W * 64) return ENG_E_RANGE;
    for (int t = 0; t < T; t++) {
        const int r = b->n_tok + t;
        b->token[r] = tr->src[t] >= 0 ? s->cand[tr->src[t]] : tr->src[t];   /* < 0: prompt row -1 - src */
        b->pos[r] = P + tr->pos_off[t];
        b->slot[r] = s->slot;
        b->kv_idx[r] = P + t;
        b->n_prefix[r] = P;
        b->grp_first[r] = P;
        b->grp_len[r] = T;
        uint64_t *v = b->vis + (size_t)r * W;
        memcpy(v, tr->mask + (size_t)t * tr->vis_words, sizeof *v * (size_t)tr->vis_words);
        if (W > tr->vis_words) memset(v + tr->vis_words, 0, sizeof *v * (size_t)(W - tr->vis_words));
        b->want_logits[r] = true;
    }
    b->n_tok += T;
    s->pending = 2;
    s->n_past = P;
    return 0;
}

/* Move the accepted rows' K/V (tree positions pos[0..n)) to P, P+1, ...: in
 * ascending order, which is safe in place because pos[c] >= c and increases. */
static void ppd_kv_compact(struct eng_kv *kv, int slot, int P, const int32_t *pos, int n) {
    const struct eng_backend *be = kv->be;
    const size_t bytes = sizeof(float) * (size_t)kv->kv_dim;
    for (int c = 0; c < n; c++) {
        if (pos[c] == c) continue;
        for (int l = 0; l < kv->n_layer; l++) {
            size_t dst = eng_kv_offset(kv, l, slot, P + c), src = eng_kv_offset(kv, l, slot, P + pos[c]);
            be->iface->buf_copy(be->ctx, kv->k + dst, kv->k + src, bytes);
            be->iface->buf_copy(be->ctx, kv->v + dst, kv->v + src, bytes);
        }
    }
}

/* Probability of token id at node k under softmax(logits / temperature), and
 * whether it passes the typical-acceptance threshold of k. */
static bool ppd_typical_ok(struct eng_ppd_seq *s, const struct eng_forward *f, const struct eng_ppd_tree *tr, int k,
                           int32_t id, double *logp) {
    const int n_vocab = f->m->hp.n_vocab;
    const float *lg = ppd_row_logits(f, s->b_first + tr->normal_pos[k]);
    const double inv_t = 1.0 / (s->sp.temperature > 0 ? s->sp.temperature : 1.0f);
    if (s->node_seen[k] != s->steps + 1) {
        double mx = -INFINITY, z = 0, ez = 0;
        for (int v = 0; v < n_vocab; v++) if (lg[v] * inv_t > mx) mx = lg[v] * inv_t;
        for (int v = 0; v < n_vocab; v++) {
            double e = exp(lg[v] * inv_t - mx);
            z += e;
            ez += e * (lg[v] * inv_t - mx);
        }
        double lse = mx + log(z);
        /* entropy -sum p log p with p = e / z: log z - ez / z (the reference adds
         * 1e-5 inside the log; the difference is far below the thresholds' scale) */
        double H = log(z) - ez / z;
        double tau = s->typical.alpha * exp(-H);
        s->node_lse[k] = lse;
        s->node_tau[k] = tau < s->typical.eps ? tau : s->typical.eps;
        s->node_seen[k] = s->steps + 1;
    }
    *logp = lg[id] * inv_t - s->node_lse[k];
    return exp(*logp) > s->node_tau[k];
}

/* Typical acceptance over the retrieve rows: the accepted node ids into nodes[0..A]. */
static int ppd_typical_select(struct eng_ppd_seq *s, const struct eng_forward *f, const struct eng_ppd_tree *tr,
                              int32_t *nodes) {
    int best_A = 0, best_r = 0;
    double best_score = -INFINITY;
    for (int r = 0; r < tr->R; r++) {
        const int32_t *row = tr->rows + (size_t)r * (tr->D + 1);
        int A = 0;
        double score = 0, lp;
        for (int c = 0; c < tr->D && row[c + 1] != ENG_PPD_PAD; c++) {
            if (!ppd_typical_ok(s, f, tr, row[c], s->cand[tr->node_cand[row[c + 1]]], &lp)) break;
            A++;
            score += lp;
        }
        if (A > best_A || (A == best_A && A > 0 && score > best_score)) {
            best_A = A;
            best_r = r;
            best_score = score;
        }
    }
    for (int c = 0; c <= best_A; c++) nodes[c] = tr->rows[(size_t)best_r * (tr->D + 1) + c];
    return best_A;
}

int eng_ppd_seq_step_finish(struct eng_ppd_seq *s, const struct eng_forward *f, struct eng_kv *kv, int32_t *out,
                            int *n_out) {
    *n_out = 0;
    if (s->pending == 3) {   /* a plain one-row step: its row is the root */
        s->pending = 0;
        const float *lg = ppd_row_logits(f, s->b_first);
        if (!lg) return ENG_E_INTERNAL;
        int32_t id = s->accept == ENG_PPD_ACCEPT_TYPICAL ? eng_sampler_argmax(lg, f->m->hp.n_vocab)
                                                         : eng_sample(&s->sp, &s->rng, lg, f->m->hp.n_vocab, s->scratch);
        if (id < 0) return id;
        s->steps++;
        s->hist[1]++;
        s->last_acc = 1;
        kv->len[s->slot] = s->n_past + 1;
        s->cand[0] = id;
        ppd_emit(s, id, s->b_first, out, n_out);
        return 0;
    }
    if (s->pending != 2) return ENG_E_INVALID;
    s->pending = 0;
    const struct eng_ppd_tree *tr = &s->ppd->trees.st[s->d];
    const int n_vocab = f->m->hp.n_vocab, P = s->n_past, N = s->ppd->n_prompt;
    int32_t acc_pos[ENG_PPD_MAX_PROMPT + 1];
    int node = 0, A = 0;
    acc_pos[0] = 0;
    int32_t next = -1;
    if (s->accept == ENG_PPD_ACCEPT_TYPICAL) {
        int32_t nodes[ENG_PPD_MAX_PROMPT + 1];
        int nA = ppd_typical_select(s, f, tr, nodes);
        for (int c = 1; c <= nA && !s->done; c++) {
            const int parent_row = s->b_first + tr->normal_pos[node];
            node = nodes[c];
            acc_pos[++A] = tr->normal_pos[node];
            ppd_emit(s, s->cand[tr->node_cand[node]], parent_row, out, n_out);
        }
        if (!s->done) {
            const float *lg = ppd_row_logits(f, s->b_first + tr->normal_pos[node]);
            next = eng_sampler_argmax(lg, n_vocab);
            if (next < 0) return next;
            ppd_emit(s, next, s->b_first + tr->normal_pos[node], out, n_out);
        }
    }
    for (; s->accept != ENG_PPD_ACCEPT_TYPICAL;) {
        const int row = s->b_first + tr->normal_pos[node];
        const float *lg = ppd_row_logits(f, row);
        if (!lg) return ENG_E_INTERNAL;
        int32_t id = eng_sample(&s->sp, &s->rng, lg, n_vocab, s->scratch);
        if (id < 0) return id;
        int child = -1;
        for (int c = tr->child_first[node]; c < tr->child_first[node + 1]; c++)
            if (s->cand[tr->node_cand[tr->child_ids[c]]] == id) { child = tr->child_ids[c]; break; }
        if (child >= 0) {
            node = child;
            acc_pos[++A] = tr->normal_pos[node];
        } else {
            next = id;
        }
        if (ppd_emit(s, id, row, out, n_out) || child < 0) break;
    }
    s->steps++;
    s->hist[A + 1]++;
    s->last_acc = A + 1;
    if (s->done) return 0;
    /* commit the root and the accepted nodes */
    ppd_kv_compact(kv, s->slot, P, acc_pos, A + 1);
    kv->len[s->slot] = P + A + 1;
    s->cand[0] = next;
    int32_t rows[ENG_PPD_MAX_PROMPT];
    const int d = tr->n_special[node];
    for (int j = 0; j < d; j++) rows[j] = s->b_first + tr->special[(size_t)node * N + j];
    return ppd_take_guesses(s, f, rows, d);
}

int eng_ppd_generate(struct eng_forward *f, struct eng_kv *kv, int slot, const struct tok *t,
                     const struct eng_ppd *ppd, const int32_t *prompt, int n_prompt, const struct eng_gen_params *p,
                     eng_gen_token_fn on_tokens, void *user, int32_t *out_ids, int *acc_len,
                     struct eng_ppd_gen_stats *st, const struct eng_ppd_gen_opts *opts) {
    memset(st, 0, sizeof *st);
    st->gen.n_prompt = n_prompt;
    if (n_prompt < 1 || p->n_predict < 1) return ENG_E_INVALID;
    const int N = ppd->n_prompt;
    if (n_prompt > kv->max_seq) return ENG_E_TOO_LONG;
    int chunk = p->prefill_chunk > 0 && p->prefill_chunk <= f->max_rows ? p->prefill_chunk : f->max_rows;
    int rows = chunk > ppd->trees.max_T ? chunk : ppd->trees.max_T;
    if (rows < N + 1) rows = N + 1;
    if (ppd->trees.max_T > f->max_rows || N + 1 > f->max_rows) return ENG_E_RANGE;
    struct eng_batch b;
    int rc = eng_batch_init(&b, rows, rows);
    if (rc) return rc;
    struct eng_ppd_seq s;
    if ((rc = eng_ppd_seq_init(&s, ppd, slot, &p->sp, p->n_predict, t, p->ignore_eog, f->m->hp.n_vocab))) {
        eng_batch_free(&b);
        return rc;
    }
    if (opts) {
        s.guess_fn = opts->guess_fn;
        s.guess_user = opts->guess_user;
        s.accept = opts->accept;
        if (opts->typical.eps > 0) s.typical = opts->typical;
    }
    const float *extra = ppd->ad->emb;
    int32_t emitted[ENG_PPD_MAX_PROMPT + 2];
    int n_em = 0;

    double t0 = eng_now_s();
    kv->len[slot] = 0;
    for (int i = 0; i < n_prompt - 1; i += chunk) {
        int n = n_prompt - 1 - i < chunk ? n_prompt - 1 - i : chunk;
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, slot, kv->len[slot], prompt + i, n, false);
        if ((rc = eng_forward_run(f, &b, kv, NULL, 0))) goto out;
        kv->len[slot] += n;
    }
    eng_batch_clear(&b);
    if ((rc = eng_ppd_seq_prefill_add(&s, &b, kv, prompt + n_prompt - 1, 1))) goto out;
    if ((rc = eng_forward_run_deep(f, &b, kv, extra, N, ppd->ad->deep, ppd->ad->n_deep))) goto out;
    if ((rc = eng_ppd_seq_prefill_finish(&s, f, kv, emitted, &n_em))) goto out;
    st->gen.prefill_s = eng_now_s() - t0;

    t0 = eng_now_s();
    for (;;) {
        memcpy(out_ids + st->gen.n_gen, emitted, sizeof *emitted * (size_t)n_em);
        st->gen.n_gen += n_em;
        int stop = on_tokens && n_em ? on_tokens(user, emitted, n_em) : 0;
        if (s.done) { st->gen.finish = s.finish; break; }
        if (stop) { st->gen.finish = ENG_FINISH_STOPPED; break; }
        double tb = eng_now_s();
        eng_batch_clear(&b);
        rc = eng_ppd_seq_step_add(&s, &b, kv);
        if (rc == ENG_E_TOO_LONG) { rc = 0; st->gen.finish = ENG_FINISH_CONTEXT; break; }
        if (rc) goto out;
        double tf = eng_now_s();
        if ((rc = eng_forward_run_deep(f, &b, kv, extra, N, ppd->ad->deep, ppd->ad->n_deep))) goto out;
        double tv = eng_now_s();
        rc = eng_ppd_seq_step_finish(&s, f, kv, emitted, &n_em);
        double te = eng_now_s();
        st->build_s += tf - tb;
        st->forward_s += tv - tf;
        st->verify_s += te - tv;
        if (rc) goto out;
        if (acc_len) acc_len[s.steps - 1] = s.last_acc;
    }
    st->gen.decode_s = eng_now_s() - t0;
    st->gen.steps = s.steps;
    memcpy(st->hist, s.hist, sizeof st->hist);
out:
    eng_ppd_seq_free(&s);
    eng_batch_free(&b);
    return rc;
}
