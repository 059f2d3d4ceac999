/* sampler.c — greedy choice, the sampling distribution and the seeded draw
 * (see sampler.h for the contract PPD relies on).
 *
 * Cost per token, n = n_vocab: one pass over the logits to collect
 * candidates (a size-k heap when top-k is on), one exp per candidate in
 * double, and sorting only where an order is needed: top-p buckets the
 * candidates by logit and sorts only the bucket where the mass crosses top_p,
 * and a top-k set (heap order) is put back in ascending id.  Without top-k
 * nothing else is sorted: the cuts keep the ascending-id order of the scan.
 *
 * Not here: the logits themselves (forward pass), penalties' token history
 * bookkeeping (the caller keeps it), and any allocation after
 * eng_sampler_scratch_init.
 */
#include "engine/decode/sampler.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/err.h"

void eng_sampler_params_default(struct eng_sampler_params *p)
{
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->top_k = 0;
    p->seed = 0;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
}

__attribute__((format(printf, 3, 4)))
static int sampler_err(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return ENG_E_RANGE;
}

int eng_sampler_params_check(const struct eng_sampler_params *p, char *err, size_t cap)
{
    /* Written as negated ranges so that NaN fails every check. */
    if (!(p->temperature >= 0.0f && p->temperature <= 1e6f))
        return sampler_err(err, cap, "temperature %g out of range [0, 1e6]", (double)p->temperature);
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return sampler_err(err, cap, "top_p %g out of range [0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return sampler_err(err, cap, "min_p %g out of range [0, 1]", (double)p->min_p);
    if (p->top_k < 0)
        return sampler_err(err, cap, "top_k %d out of range [0, n_vocab]", p->top_k);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return sampler_err(err, cap, "presence_penalty %g out of range [-2, 2]",
                           (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return sampler_err(err, cap, "frequency_penalty %g out of range [-2, 2]",
                           (double)p->frequency_penalty);
    return 0;
}

/* ---- RNG ------------------------------------------------------------------ */

static uint64_t rng_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void eng_rng_seed(struct eng_rng *rng, uint64_t seed)
{
    /* splitmix64 never yields four zero words, the one state xoshiro cannot leave. */
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = rng_splitmix64(&x);
}

uint64_t eng_rng_next(struct eng_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rng_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rng_rotl(s[3], 45);
    return result;
}

double eng_rng_uniform(struct eng_rng *rng)
{
    return (double)(eng_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* ---- scratch ---------------------------------------------------------------- */

int eng_sampler_scratch_init(struct eng_sampler_scratch **out, int n_vocab)
{
    *out = NULL;
    if (n_vocab < 1)
        return ENG_E_INVALID;
    struct eng_sampler_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return ENG_E_NOMEM;
    s->n_vocab = n_vocab;
    s->cand_id = malloc((size_t)n_vocab * sizeof *s->cand_id);
    s->cand_p = malloc((size_t)n_vocab * sizeof *s->cand_p);
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->work2 = malloc((size_t)n_vocab * sizeof *s->work2);
    s->count = calloc((size_t)n_vocab, sizeof *s->count);
    if (!s->cand_id || !s->cand_p || !s->work || !s->work2 || !s->count)
        goto err;
    *out = s;
    return 0;
err:
    eng_sampler_scratch_free(s);
    return ENG_E_NOMEM;
}

void eng_sampler_scratch_free(struct eng_sampler_scratch *s)
{
    if (!s)
        return;
    free(s->cand_id);
    free(s->cand_p);
    free(s->work);
    free(s->work2);
    free(s->count);
    free(s);
}

/* ---- penalties ---------------------------------------------------------------- */

int eng_sampler_penalize(const struct eng_sampler_params *p, float *logits, int n_vocab,
                         const int32_t *history, int n_hist, struct eng_sampler_scratch *s)
{
    if (p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return 0;
    if (n_vocab > s->n_vocab)
        return ENG_E_INVALID;
    for (int i = 0; i < n_hist; i++)
        if (history[i] < 0 || history[i] >= n_vocab)
            return ENG_E_RANGE;
    for (int i = 0; i < n_hist; i++)
        s->count[history[i]]++;
    /* Each distinct token is penalized once, at its first occurrence in the
     * history, and its count is reset there so the array is zero again. */
    for (int i = 0; i < n_hist; i++) {
        int32_t t = history[i];
        uint32_t c = s->count[t];
        if (c == 0)
            continue;
        logits[t] -= (float)c * p->frequency_penalty + p->presence_penalty;
        s->count[t] = 0;
    }
    return 0;
}

/* ---- distribution ------------------------------------------------------------- */

int32_t eng_sampler_argmax(const float *logits, int n_vocab)
{
    float best = -INFINITY;
    int32_t id = -1;
    for (int i = 0; i < n_vocab; i++) {
        if (logits[i] > best) {
            best = logits[i];
            id = i;
        }
    }
    return id >= 0 ? id : ENG_E_INVALID;
}

/* a ranks before b: larger logit, then lower id. */
static inline int cand_before(struct eng_sampler_cand a, struct eng_sampler_cand b)
{
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static int cand_cmp_rank(const void *pa, const void *pb)
{
    const struct eng_sampler_cand *a = pa, *b = pb;
    return cand_before(*a, *b) ? -1 : cand_before(*b, *a) ? 1 : 0;
}

static int cand_cmp_id(const void *pa, const void *pb)
{
    const struct eng_sampler_cand *a = pa, *b = pb;
    return (a->id > b->id) - (a->id < b->id);
}

/* Min-heap by rank (the root is the candidate that ranks last). */
static void heap_sift_down(struct eng_sampler_cand *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_before(h[w], h[l]))
            w = l;
        if (r < n && cand_before(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        struct eng_sampler_cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Candidates with a logit above -inf into work[]: the k best (heap, unsorted)
 * when 0 < k < n_vocab, else all in ascending id.  Returns the count, or
 * ENG_E_INVALID for a NaN or +inf logit or no candidate. */
static int collect(const float *logits, int n_vocab, int k, struct eng_sampler_cand *w)
{
    int n = 0;
    if (k <= 0 || k >= n_vocab) {
        for (int i = 0; i < n_vocab; i++) {
            float l = logits[i];
            if (!(l < INFINITY))
                return ENG_E_INVALID;
            if (l > -INFINITY)
                w[n++] = (struct eng_sampler_cand){ l, i };
        }
        return n > 0 ? n : ENG_E_INVALID;
    }
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (!(l < INFINITY))
            return ENG_E_INVALID;
        if (!(l > -INFINITY))
            continue;
        struct eng_sampler_cand c = { l, i };
        if (n < k) {
            /* sift up */
            int j = n++;
            w[j] = c;
            while (j > 0 && cand_before(w[(j - 1) / 2], w[j])) {
                struct eng_sampler_cand t = w[j];
                w[j] = w[(j - 1) / 2];
                w[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (cand_before(c, w[0])) {
            w[0] = c;
            heap_sift_down(w, n, 0);
        }
    }
    return n > 0 ? n : ENG_E_INVALID;
}

/* Nucleus: the smallest set of best-ranked candidates whose softmax mass
 * reaches top_p, compacted to the front of w[] in its original order.
 * Instead of sorting every candidate, weights are summed into buckets of
 * logit distance from the max; walking the buckets from the top finds the
 * one bucket where the mass crosses top_p, and only that bucket is sorted. */
static int top_p_cut(struct eng_sampler_scratch *s, int n, float lmax, double top_p)
{
    struct eng_sampler_cand *w = s->work, *edge = s->work2;
    int32_t *bucket = s->cand_id;   /* free until the final distribution is written */
    const double scale = ENG_SAMPLER_N_BUCKET / 64.0;   /* beyond 64 nats: the last bucket */
    double total = 0.0;
    for (int i = 0; i < ENG_SAMPLER_N_BUCKET; i++)
        s->bucket_w[i] = 0.0;
    for (int i = 0; i < n; i++) {
        double d = (double)lmax - (double)w[i].logit;
        double wt = exp(-d);
        double bd = d * scale;
        int bi = bd < ENG_SAMPLER_N_BUCKET - 1 ? (int)bd : ENG_SAMPLER_N_BUCKET - 1;
        bucket[i] = bi;
        s->bucket_w[bi] += wt;
        total += wt;
    }
    double need = top_p * total, cum = 0.0;
    int cross = -1;
    for (int bi = 0; bi < ENG_SAMPLER_N_BUCKET; bi++) {
        if (s->bucket_w[bi] > 0.0 && cum + s->bucket_w[bi] >= need) {
            cross = bi;
            break;
        }
        cum += s->bucket_w[bi];
    }
    if (cross < 0)
        return n;   /* rounding left the total just under need: keep everything */

    /* Within the crossing bucket, add candidates in rank order until the mass is reached. */
    int m = 0;
    for (int i = 0; i < n; i++)
        if (bucket[i] == cross)
            edge[m++] = w[i];
    qsort(edge, (size_t)m, sizeof *edge, cand_cmp_rank);
    struct eng_sampler_cand last = edge[m - 1];
    for (int i = 0; i < m; i++) {
        cum += exp((double)edge[i].logit - (double)lmax);
        if (cum >= need) {
            last = edge[i];
            break;
        }
    }
    int k = 0;
    for (int i = 0; i < n; i++)
        if (bucket[i] < cross || (bucket[i] == cross && !cand_before(last, w[i])))
            w[k++] = w[i];
    return k;
}

/* Index of the best-ranked candidate in w[0..n). */
static int best_index(const struct eng_sampler_cand *w, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (cand_before(w[i], w[b]))
            b = i;
    return b;
}

int eng_sampler_dist(const struct eng_sampler_params *p, const float *logits, int n_vocab,
                     struct eng_sampler_scratch *s)
{
    s->n_cand = 0;
    if (n_vocab < 1 || n_vocab > s->n_vocab)
        return ENG_E_INVALID;
    int greedy = !(p->temperature > 0.0f);
    int k = greedy ? 1 : p->top_k;
    struct eng_sampler_cand *w = s->work;
    int n = collect(logits, n_vocab, k, w);
    if (n < 0)
        return n;
    int by_id = !(k > 0 && k < n_vocab);   /* collect()'s order; the cuts below keep it */
    int b = best_index(w, n);
    float lmax = w[b].logit;

    if (n > 1 && p->top_p < 1.0f) {
        if (p->top_p > 0.0f) {
            n = top_p_cut(s, n, lmax, (double)p->top_p);
        } else {
            w[0] = w[b];
            n = 1;
        }
    }
    if (n > 1 && p->min_p > 0.0f) {
        /* p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p); the max always stays. */
        double cut = (double)lmax + log((double)p->min_p);
        int m = 0;
        for (int i = 0; i < n; i++)
            if ((double)w[i].logit >= cut)
                w[m++] = w[i];
        n = m;
    }
    if (!by_id && n > 1)
        qsort(w, (size_t)n, sizeof *w, cand_cmp_id);

    /* Temperature last, on the survivors; softmax in double with the max subtracted. */
    double inv_t = greedy ? 1.0 : 1.0 / (double)p->temperature;
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        double e = exp(((double)w[i].logit - (double)lmax) * inv_t);
        s->cand_p[i] = e;
        s->cand_id[i] = w[i].id;
        total += e;
    }
    for (int i = 0; i < n; i++)
        s->cand_p[i] /= total;
    s->n_cand = n;
    return n;
}

int32_t eng_sampler_draw(const struct eng_sampler_scratch *s, double u)
{
    double cum = 0.0;
    int last = -1;
    for (int i = 0; i < s->n_cand; i++) {
        if (!(s->cand_p[i] > 0.0))
            continue;
        cum += s->cand_p[i];
        last = i;
        if (u < cum)
            return s->cand_id[i];
    }
    /* u beyond a total that rounding left just under 1 */
    return last >= 0 ? s->cand_id[last] : ENG_E_INVALID;
}

double eng_sampler_prob(const struct eng_sampler_scratch *s, int32_t id)
{
    int lo = 0, hi = s->n_cand;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->cand_id[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n_cand && s->cand_id[lo] == id ? s->cand_p[lo] : 0.0;
}

int32_t eng_sample(const struct eng_sampler_params *p, struct eng_rng *rng, const float *logits,
                   int n_vocab, struct eng_sampler_scratch *s)
{
    if (!(p->temperature > 0.0f))
        return eng_sampler_argmax(logits, n_vocab);
    int n = eng_sampler_dist(p, logits, n_vocab, s);
    if (n < 0)
        return n;
    return eng_sampler_draw(s, eng_rng_uniform(rng));
}
