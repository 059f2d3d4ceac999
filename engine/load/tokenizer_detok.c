/* tokenizer_detok.c — token ids back to text that is always valid UTF-8, whole
 * or streamed one token at a time.
 *
 * A token's piece can end in the middle of a character (byte-level BPE splits
 * multi-byte characters, SentencePiece emits <0xNN> byte tokens), so the
 * streaming decoder holds back a trailing, still-possible sequence (at most 3
 * bytes) until the next token decides it.  Bytes that can no longer become a
 * character are replaced by U+FFFD, one per maximal ill-formed subpart (the
 * Unicode recommendation, what Python's decode(errors="replace") does).  Every
 * decision depends only on bytes already seen, so streaming a sequence gives
 * exactly the bytes tok_decode gives for it.
 *
 * It does not apply llama.cpp's clean_up_tokenization_spaces (removing the
 * space before "." or "'s"): the default model does not ask for it, and a
 * streamed text could not be cleaned without holding back every space.
 */
#include "engine/load/tokenizer.h"
#include "engine/load/tokenizer_utf8.h"
#include "engine/load/tokenizer_vocab.h"

#include <stdlib.h>
#include <string.h>

/* The bytes to sanitize are the held ones followed by the new piece. */
struct detok_in {
    const unsigned char *a, *b;
    size_t na, nb;
};

static unsigned detok_at(const struct detok_in *in, size_t i) {
    return i < in->na ? in->a[i] : in->b[i - in->na];
}

static size_t detok_fffd(char *out) {
    memcpy(out, "\xef\xbf\xbd", 3);
    return 3;
}

/* Write the well-formed characters of in to out (invalid parts as U+FFFD).
 * Unless final, a trailing sequence that may still complete is copied to
 * hold (*n_hold bytes) instead.  out needs 3 bytes per input byte. */
static size_t detok_run(const struct detok_in *in, bool final, char *out, unsigned char *hold, uint8_t *n_hold) {
    size_t n = in->na + in->nb, o = 0, i = 0;
    *n_hold = 0;
    while (i < n) {
        unsigned c = detok_at(in, i);
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
            continue;
        }
        /* Unicode Table 3-7: length and the allowed range of the second byte */
        size_t len = 0;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c == 0xe0) len = 3, lo = 0xa0;
        else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) len = 3;
        else if (c == 0xed) len = 3, hi = 0x9f;
        else if (c == 0xf0) len = 4, lo = 0x90;
        else if (c >= 0xf1 && c <= 0xf3) len = 4;
        else if (c == 0xf4) len = 4, hi = 0x8f;
        if (len == 0) {
            o += detok_fffd(out + o);
            i++;
            continue;
        }
        size_t k = 1;
        for (; k < len; k++) {
            if (i + k >= n) break;
            unsigned b = detok_at(in, i + k);
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) break;
        }
        if (k == len) {
            for (size_t j = 0; j < len; j++) out[o++] = (char)detok_at(in, i + j);
            i += len;
        } else if (i + k >= n && !final) {   /* may still complete: hold it */
            for (size_t j = i; j < n; j++) hold[(*n_hold)++] = (unsigned char)detok_at(in, j);
            i = n;
        } else {
            o += detok_fffd(out + o);
            i += k;
        }
    }
    return o;
}

void tok_detok_init(struct tok_detok *d, unsigned flags) {
    memset(d, 0, sizeof *d);
    d->flags = (uint8_t)flags;
}

size_t tok_detok_cap(const struct tok *t) {
    return 3 * (tok_piece_max(t) + 3);
}

size_t tok_detok_push(const struct tok *t, struct tok_detok *d, int32_t id, char *out, size_t cap) {
    size_t len = tok_piece(t, id, d->flags, NULL, 0);
    const unsigned char *p = len ? (const unsigned char *)t->piece + t->piece_off[id] : NULL;
    if (!d->started) {
        d->started = true;
        if ((d->flags & TOK_DECODE_STRIP_SPACE) && t->add_space_prefix && len && p[0] == ' ') p++, len--;
    }
    if (3 * (d->n_pend + len) > cap) return SIZE_MAX;
    unsigned char held[4];
    memcpy(held, d->pend, d->n_pend);
    struct detok_in in = {held, p, d->n_pend, len};
    return detok_run(&in, false, out, d->pend, &d->n_pend);
}

size_t tok_detok_flush(struct tok_detok *d, char *out, size_t cap) {
    if (cap < TOK_DETOK_FLUSH_CAP) return SIZE_MAX;
    unsigned char held[4];
    memcpy(held, d->pend, d->n_pend);
    struct detok_in in = {held, NULL, d->n_pend, 0};
    uint8_t n_hold;
    size_t n = detok_run(&in, true, out, d->pend, &n_hold);
    d->n_pend = 0;
    return n;
}

size_t tok_decode(const struct tok *t, const int32_t *ids, size_t n, unsigned flags, char *out, size_t cap) {
    struct tok_detok d;
    size_t tmp_cap = tok_detok_cap(t), total = 0;
    char small[256];
    char *tmp = tmp_cap <= sizeof small ? small : malloc(tmp_cap);
    if (!tmp) return 0;
    tok_detok_init(&d, flags);
    for (size_t i = 0; i <= n; i++) {
        size_t k = i < n ? tok_detok_push(t, &d, ids[i], tmp, tmp_cap) : tok_detok_flush(&d, tmp, tmp_cap);
        if (total < cap) memcpy(out + total, tmp, k < cap - total ? k : cap - total);
        total += k;
    }
    if (tmp != small) free(tmp);
    return total;
}
