/* textout.c — detokenization with stop strings and hold-back (textout.h). */
#include "engine/decode/textout.h"

#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

int eng_textout_init(struct eng_textout *t, const struct tok *tok, const char *const *stop, int n_stop) {
    memset(t, 0, sizeof *t);
    t->tok = tok;
    if (n_stop < 0 || n_stop > ENG_TEXTOUT_MAX_STOP) return ENG_E_RANGE;
    for (int i = 0; i < n_stop; i++) {
        size_t n = strlen(stop[i]);
        if (n > ENG_TEXTOUT_MAX_STOP_LEN) { eng_textout_free(t); return ENG_E_RANGE; }
        if (n == 0) continue;
        if (!(t->stop[t->n_stop] = malloc(n + 1))) { eng_textout_free(t); return ENG_E_NOMEM; }
        memcpy(t->stop[t->n_stop], stop[i], n + 1);
        t->stop_len[t->n_stop++] = n;
        if (n > t->max_stop) t->max_stop = n;
    }
    tok_detok_init(&t->detok, 0);
    t->piece_cap = tok_detok_cap(tok);
    /* Worst case between takes: a held stop prefix, a step's pieces, a flush. */
    t->cap = t->max_stop + (size_t)ENG_TEXTOUT_MAX_STEP_TOKENS * t->piece_cap + TOK_DETOK_FLUSH_CAP + 1;
    if (!(t->buf = malloc(t->cap))) { eng_textout_free(t); return ENG_E_NOMEM; }
    return 0;
}

void eng_textout_free(struct eng_textout *t) {
    if (!t) return;
    for (int i = 0; i < t->n_stop; i++) free(t->stop[i]);
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static void textout_compact(struct eng_textout *t);

/* Length of the longest suffix of buf[from, n) that is a proper prefix of some
 * stop string: those bytes must be held back. */
static size_t textout_partial(const struct eng_textout *t, size_t from, size_t n) {
    size_t best = 0;
    for (int s = 0; s < t->n_stop; s++) {
        size_t k = t->stop_len[s] - 1 < n - from ? t->stop_len[s] - 1 : n - from;
        for (; k > best; k--)
            if (!memcmp(t->buf + n - k, t->stop[s], k)) { best = k; break; }
    }
    return best;
}

bool eng_textout_push(struct eng_textout *t, int32_t id) {
    if (t->stopped) return true;
    textout_compact(t);
    if (tok_is_eog(t->tok, id)) return false;
    if (t->n_buf + t->piece_cap > t->cap) return false;   /* more tokens than a step may push */
    size_t k = tok_detok_push(t->tok, &t->detok, id, t->buf + t->n_buf, t->cap - t->n_buf);
    if (k == (size_t)-1 || k == 0) return false;
    t->n_buf += k;
    if (t->n_stop == 0) { t->n_rel = t->n_buf; return false; }
    /* A complete stop string can only start in the held part: everything
     * released before was known not to begin one. */
    size_t first = (size_t)-1;
    for (int s = 0; s < t->n_stop; s++) {
        const char *hay = t->buf + t->n_rel;
        size_t hay_len = t->n_buf - t->n_rel;
        const char *p = memmem(hay, hay_len, t->stop[s], t->stop_len[s]);
        if (p && (size_t)(p - t->buf) < first) first = (size_t)(p - t->buf);
    }
    if (first != (size_t)-1) {
        t->n_rel = t->n_buf = first;
        t->stopped = true;
        return true;
    }
    t->n_rel = t->n_buf - textout_partial(t, t->n_rel, t->n_buf);
    return false;
}

void eng_textout_finish(struct eng_textout *t) {
    if (t->stopped) return;
    textout_compact(t);
    if (t->n_buf + TOK_DETOK_FLUSH_CAP <= t->cap) {
        size_t k = tok_detok_flush(&t->detok, t->buf + t->n_buf, t->cap - t->n_buf);
        if (k != (size_t)-1) t->n_buf += k;
    }
    t->n_rel = t->n_buf;
}

/* The bytes released before the last take have been consumed: move the held
 * tail to the front. */
static void textout_compact(struct eng_textout *t) {
    if (!t->taken) return;
    memmove(t->buf, t->buf + t->n_rel, t->n_buf - t->n_rel);
    t->n_buf -= t->n_rel;
    t->n_rel = 0;
    t->taken = false;
}

const char *eng_textout_take(struct eng_textout *t, size_t *len) {
    textout_compact(t);
    *len = t->n_rel;
    t->taken = true;
    return t->buf;
}
