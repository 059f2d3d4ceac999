/* fuzz_textout.c — libFuzzer target: streamed text with stop strings and
 * hold-back (engine/decode/textout.c), the text SSE chunks carry.
 *
 * Input layout: byte 0 low 3 bits: number of stop strings (0..4, larger is 0);
 * each stop string is 4 bytes (a token id, an offset and a length: a slice of
 * that token's piece, so stops match generated text often); then 3 bytes per
 * generated token: a little-endian id (mod the vocabulary size, end-of-turn
 * tokens included) and a byte whose low bit says "take the released text
 * after this token" (the streaming cadence; a take is forced every
 * ENG_TEXTOUT_MAX_STEP_TOKENS tokens, the most one step may push).
 *
 * Checked: every piece released is valid UTF-8 (when the stop strings are,
 * as JSON-decoded ones always are), and the concatenation of the pieces equals
 * a one-shot reference: the detokenizer's whole output, cut at the first stop
 * string at the first token where one appears (the earliest-starting of those
 * found then), or flushed at the end when none does.
 *
 * Not here: the JSON/SSE framing (server/api.c, server/http.c).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/decode/textout.h"
#include "fuzz_model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
/* Take what the stream releases now: valid UTF-8 when the stops are, appended
 * to got (n_got bytes so far); the new length. */
static size_t fuzz_take(struct eng_textout *t, bool stops_utf8, char *got, size_t n_got, size_t out_cap) {
    size_t k;
    const char *txt = eng_textout_take(t, &k);
    if (stops_utf8 && !fuzz_utf8_valid((const uint8_t *)txt, k)) abort();
    if (n_got + k > out_cap) abort();
    memcpy(got + n_got, txt, k);
    return n_got + k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tok *fuzz_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_tok = fuzz_model_load(NULL, NULL);
    return 0;
}

/* The one-shot reference into out (room for every token's piece and a flush). */
static size_t fuzz_reference(const int32_t *ids, int n, char *const *stop, int n_stop, char *out) {
    struct tok_detok d;
    tok_detok_init(&d, 0);
    size_t len = 0, cap = tok_detok_cap(fuzz_tok);
    for (int i = 0; i < n; i++) {
        if (tok_is_eog(fuzz_tok, ids[i])) continue;   /* end-of-turn tokens give no text */
        size_t k = tok_detok_push(fuzz_tok, &d, ids[i], out + len, cap);
        if (k == (size_t)-1) abort();
        len += k;
        if (k == 0) continue;
        size_t first = (size_t)-1;
        for (int s = 0; s < n_stop; s++) {
            if (!stop[s][0]) continue;
            const char *p = memmem(out, len, stop[s], strlen(stop[s]));
            if (p && (size_t)(p - out) < first) first = (size_t)(p - out);
        }
        if (first != (size_t)-1) return first;
    }
    return len + tok_detok_flush(&d, out + len, TOK_DETOK_FLUSH_CAP);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t at = 1;
    int n_vocab = tok_n_vocab(fuzz_tok);
    int n_stop = data[0] & 7;
    if (n_stop > ENG_TEXTOUT_MAX_STOP) n_stop = 0;
    char stop_buf[ENG_TEXTOUT_MAX_STOP][ENG_TEXTOUT_MAX_STOP_LEN + 1];
    char *stop[ENG_TEXTOUT_MAX_STOP];
    bool stops_utf8 = true;
    for (int s = 0; s < n_stop; s++) {
        stop[s] = stop_buf[s];
        stop_buf[s][0] = 0;
        if (size - at < 4) { n_stop = s; break; }
        int32_t id = (int32_t)((data[at] | data[at + 1] << 8) % n_vocab);
        char piece[ENG_TEXTOUT_MAX_STOP_LEN];
        size_t n = tok_piece(fuzz_tok, id, 0, piece, sizeof piece);
        if (n > sizeof piece) n = sizeof piece;
        size_t off = n ? data[at + 2] % n : 0, len = n ? 1 + data[at + 3] % (n - off) : 0;
        memcpy(stop_buf[s], piece + off, len);
        stop_buf[s][len] = 0;
        len = strlen(stop_buf[s]);   /* a NUL inside the piece ends the C string */
        stops_utf8 = stops_utf8 && fuzz_utf8_valid((const uint8_t *)stop_buf[s], len);
        at += 4;
    }
    int n_ids = (int)((size - at) / 3);
    int32_t *ids = malloc(sizeof *ids * (size_t)(n_ids ? n_ids : 1));
    size_t out_cap = (size_t)n_ids * tok_detok_cap(fuzz_tok) + TOK_DETOK_FLUSH_CAP + 1;
    char *got = malloc(out_cap), *want = malloc(out_cap);
    if (!ids || !got || !want) abort();
    struct eng_textout t;
    if (eng_textout_init(&t, fuzz_tok, (const char *const *)stop, n_stop)) abort();
    size_t n_got = 0;
    int since_take = 0;
    bool stopped = false;
    for (int i = 0; i < n_ids; i++) {
        const uint8_t *p = data + at + 3 * (size_t)i;
        ids[i] = (int32_t)((p[0] | p[1] << 8) % n_vocab);
        if (!stopped) stopped = eng_textout_push(&t, ids[i]);
        else if (!eng_textout_push(&t, ids[i])) abort();   /* a stopped stream stays stopped */
        if ((p[2] & 1) || ++since_take == ENG_TEXTOUT_MAX_STEP_TOKENS || i == n_ids - 1) {
            n_got = fuzz_take(&t, stops_utf8, got, n_got, out_cap);
            since_take = 0;
        }
    }
    eng_textout_finish(&t);
    n_got = fuzz_take(&t, stops_utf8, got, n_got, out_cap);
    size_t n_want = fuzz_reference(ids, n_ids, stop, n_stop, want);
    if (n_got != n_want || memcmp(got, want, n_got)) {
        fprintf(stderr, "streamed text (%zu bytes) differs from the one-shot reference (%zu bytes)\n", n_got, n_want);
        abort();
    }
    eng_textout_free(&t);
    free(ids);
    free(got);
    free(want);
    return 0;
}
