/* sampler.h — next-token choice from a logits row: greedy, or a seeded draw
 * from the temperature / top-k / top-p / min-p distribution.
 *
 * The contract PPD relies on: the distribution is a pure function of
 * (params, logits) — candidates are kept in ascending token id and the draw
 * walks that order — and eng_sample() consumes exactly one uniform from the
 * RNG per sampled token (none when greedy).  So the same seed gives the same
 * tokens whether they are drawn one per forward pass or several per PPD step,
 * as long as the draws are made in emission order from the same logits.
 *
 * Order of the filters (llama.cpp's default chain): penalties (by the caller,
 * eng_sampler_penalize on a copy of the logits), then top-k, top-p, min-p on
 * the raw logits, then temperature on the survivors.
 *
 * Not here: repetition penalty in llama.cpp's multiplicative form, typical-p,
 * mirostat, grammars, logit bias; and per-call allocation (the scratch is
 * allocated once per n_vocab).
 */
#ifndef PPD_SAMPLER_H
#define PPD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct eng_sampler_params {
    float temperature;        /* <= 0: greedy argmax (ties: lowest id), no RNG draw */
    float top_p;              /* nucleus mass in (0, 1]; >= 1 disables; <= 0 keeps one token */
    float min_p;              /* keep p >= min_p * p_max; <= 0 disables */
    int top_k;                /* keep the k most likely; <= 0 disables; 1 = argmax */
    uint64_t seed;
    float presence_penalty;   /* OpenAI: logit -= presence * (count > 0) + frequency * count */
    float frequency_penalty;
};

/* OpenAI's defaults: temperature 1, top_p 1, everything else off, seed 0. */
void eng_sampler_params_default(struct eng_sampler_params *p);

/* ENG_E_RANGE with the offending field in err: temperature < 0 or not finite,
 * top_p outside [0, 1], min_p outside [0, 1], top_k < 0, penalties outside
 * [-2, 2] (OpenAI's ranges). */
int eng_sampler_params_check(const struct eng_sampler_params *p, char *err, size_t cap);

/* xoshiro256** seeded through splitmix64: small, fast, and the same stream on
 * every platform. */
struct eng_rng {
    uint64_t s[4];
};

void eng_rng_seed(struct eng_rng *rng, uint64_t seed);
uint64_t eng_rng_next(struct eng_rng *rng);
/* Uniform double in [0, 1) with 53 random bits. */
double eng_rng_uniform(struct eng_rng *rng);

/* One (logit, id) pair; the sort and heap work area. */
struct eng_sampler_cand {
    float logit;
    int32_t id;
};

#define ENG_SAMPLER_N_BUCKET 1024

/* Work memory for one n_vocab, allocated once.  After eng_sampler_dist,
 * cand_id[0..n_cand) (ascending) and cand_p[0..n_cand) (summing to 1) are
 * the distribution. */
struct eng_sampler_scratch {
    int n_vocab;
    int n_cand;
    int32_t *cand_id;                 /* [n_vocab] */
    double *cand_p;                   /* [n_vocab] */
    struct eng_sampler_cand *work;    /* [n_vocab] */
    struct eng_sampler_cand *work2;   /* [n_vocab] */
    double bucket_w[ENG_SAMPLER_N_BUCKET];   /* top-p: mass per logit-distance bucket */
    uint32_t *count;                  /* [n_vocab] penalty counts, all zero between calls */
};

int eng_sampler_scratch_init(struct eng_sampler_scratch **out, int n_vocab);
void eng_sampler_scratch_free(struct eng_sampler_scratch *s);

/* Apply presence/frequency penalties in place to `logits` (the caller's copy)
 * for the tokens in history[0..n_hist).  ENG_E_RANGE for an id out of range
 * (logits then untouched). */
int eng_sampler_penalize(const struct eng_sampler_params *p, float *logits, int n_vocab,
                         const int32_t *history, int n_hist, struct eng_sampler_scratch *s);

/* Greedy choice: the largest logit, lowest id among equals; NaN is never
 * chosen.  ENG_E_INVALID when no logit is larger than -inf. */
int32_t eng_sampler_argmax(const float *logits, int n_vocab);

/* The final distribution over the kept candidates into s->cand_id / cand_p.
 * Greedy parameters give one candidate with probability 1.  Returns n_cand
 * (>= 1), or ENG_E_INVALID (no finite logit, a NaN or +inf logit, n_vocab
 * larger than the scratch). */
int eng_sampler_dist(const struct eng_sampler_params *p, const float *logits, int n_vocab,
                     struct eng_sampler_scratch *s);

/* Inverse CDF over the last eng_sampler_dist result: the first candidate (in
 * ascending id) whose cumulative probability exceeds u, u in [0, 1). */
int32_t eng_sampler_draw(const struct eng_sampler_scratch *s, double u);

/* Probability of `id` in the last eng_sampler_dist result (0 if not kept). */
double eng_sampler_prob(const struct eng_sampler_scratch *s, int32_t id);

/* The next token: argmax when temperature <= 0 (no draw), otherwise
 * eng_sampler_dist + eng_sampler_draw with exactly one eng_rng_uniform.
 * Returns the token id, or a negative ENG_E_* code. */
int32_t eng_sample(const struct eng_sampler_params *p, struct eng_rng *rng, const float *logits,
                   int n_vocab, struct eng_sampler_scratch *s);

#endif
