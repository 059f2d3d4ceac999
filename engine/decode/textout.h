/* textout.h — a sequence's generated tokens turned into the text a client may
 * see: incremental detokenization plus stop strings, with hold-back.
 *
 * Text is released only when it can no longer change: bytes of an unfinished
 * UTF-8 character stay in the detokenizer, and a tail that could be the start
 * of a stop string stays here until the next token decides it.  When a stop
 * string completes, the text before it is released and the rest (the stop
 * string and anything after it) is dropped, as OpenAI does.
 * End-of-generation and control tokens produce no text (as `ppd generate`).
 *
 * Design note: one buffer holds [released, not yet taken | held back].  It is
 * sized at init for the worst case of one step (ENG_TEXTOUT_MAX_STEP_TOKENS
 * tokens, the longest stop string), so pushing never allocates.
 *
 * Not here: token counting, finish reasons (the scheduler decides those), and
 * any JSON or SSE framing (the server).
 */
#ifndef PPD_TEXTOUT_H
#define PPD_TEXTOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/load/tokenizer.h"

#define ENG_TEXTOUT_MAX_STOP 4             /* OpenAI allows up to 4 stop sequences */
#define ENG_TEXTOUT_MAX_STOP_LEN 256       /* bytes per stop string */
#define ENG_TEXTOUT_MAX_STEP_TOKENS 64     /* tokens pushed between two takes (a PPD step) */

struct eng_textout {
    const struct tok *tok;
    struct tok_detok detok;
    char *stop[ENG_TEXTOUT_MAX_STOP];
    size_t stop_len[ENG_TEXTOUT_MAX_STOP];
    int n_stop;
    size_t max_stop;         /* longest stop string */
    char *buf;               /* [cap] released bytes, then held bytes */
    size_t n_rel;            /* released, not yet taken */
    size_t n_buf;            /* released + held */
    size_t cap;
    size_t piece_cap;        /* tok_detok_cap */
    bool stopped;            /* a stop string completed: later pushes are ignored */
    bool taken;              /* buf[0, n_rel) was handed out: drop it before the next write */
};

/* Copies the stop strings.  ENG_E_RANGE for more than ENG_TEXTOUT_MAX_STOP or
 * one longer than ENG_TEXTOUT_MAX_STOP_LEN; empty strings are ignored. */
int eng_textout_init(struct eng_textout *t, const struct tok *tok, const char *const *stop, int n_stop);
void eng_textout_free(struct eng_textout *t);   /* accepts NULL */

/* Add one generated token.  Returns true when a stop string has now completed
 * (the text before it is released; nothing more will be). */
bool eng_textout_push(struct eng_textout *t, int32_t id);

/* End of generation for another reason: release everything held (an
 * unfinished character becomes U+FFFD). */
void eng_textout_finish(struct eng_textout *t);

/* The released text since the last take: *len bytes at the returned pointer,
 * valid until the next push/finish/take. */
const char *eng_textout_take(struct eng_textout *t, size_t *len);

#endif
