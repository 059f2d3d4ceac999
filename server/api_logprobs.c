/* api_logprobs.c — the engine's per-token logprobs (eng_logprob) in OpenAI's
 * two response shapes:
 *   chat:        {"content": [{"token", "logprob", "bytes",
 *                              "top_logprobs": [{"token", "logprob", "bytes"}]}]}
 *   completions: {"tokens": [...], "token_logprobs": [...],
 *                 "top_logprobs": [{token: logprob, ...}], "text_offset": [...]}
 * A token's string is its piece with control tokens written out (so the
 * end-of-turn token reads "<|im_end|>" though the text leaves it out) and
 * bytes that do not form UTF-8 characters (a character split across tokens)
 * as U+FFFD; "bytes" holds the piece's raw bytes.  Completions' top_logprobs
 * hold the asked-for alternatives plus the chosen token (OpenAI: "up to
 * logprobs + 1 elements"); text_offset counts characters of the token strings
 * from the start of the choice's text (the prompt's, with echo).  With echo
 * the prompt's tokens come first, the very first with a null logprob.
 *
 * Not here: computing logprobs (engine/decode/logprobs.c), where a chunk goes (http.c).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/load/tokenizer.h"
#include "serve.h"

/* The token's string (valid UTF-8) as a JSON string; its character count in *n_chars. */
static json_t *lp_token_string(const struct tok *t, int32_t id, long *n_chars) {
    char small[256];
    size_t n = tok_decode(t, &id, 1, TOK_PIECE_SPECIAL, small, sizeof small);
    char *buf = small;
    if (n > sizeof small) {
        if (!(buf = malloc(n))) return NULL;
        tok_decode(t, &id, 1, TOK_PIECE_SPECIAL, buf, n);
    }
    long chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)buf[i] & 0xC0) != 0x80;
    if (n_chars) *n_chars = chars;
    json_t *s = json_stringn(buf, n);
    if (buf != small) free(buf);
    return s;
}

/* The token's raw bytes as a JSON array of integers. */
static json_t *lp_token_bytes(const struct tok *t, int32_t id) {
    char small[256];
    size_t n = tok_piece(t, id, TOK_PIECE_SPECIAL, small, sizeof small);
    char *buf = small;
    if (n > sizeof small) {
        if (!(buf = malloc(n))) return NULL;
        tok_piece(t, id, TOK_PIECE_SPECIAL, buf, n);
    }
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)buf[i]));
    if (buf != small) free(buf);
    return a;
}

/* {"token", "logprob", "bytes"} */
static json_t *lp_chat_alt(const struct tok *t, int32_t id, float logprob) {
    json_t *o = json_object();
    json_object_set_new(o, "token", lp_token_string(t, id, NULL));
    json_object_set_new(o, "logprob", json_real(logprob));
    json_object_set_new(o, "bytes", lp_token_bytes(t, id));
    return o;
}

static void lp_chat_append(const struct tok *t, json_t *content, const struct eng_logprob *lp) {
    json_t *e = lp_chat_alt(t, lp->id, lp->logprob);
    json_t *top = json_array();
    for (int i = 0; i < lp->n_top; i++) json_array_append_new(top, lp_chat_alt(t, lp->top_id[i], lp->top_logprob[i]));
    json_object_set_new(e, "top_logprobs", top);
    json_array_append_new(content, e);
}

/* One token into the four completion lists; lp NULL: a token without a
 * distribution (the first prompt token), id given. */
static void lp_completion_append(const struct tok *t, json_t *o, struct srv_choice *c, int32_t id,
                                 const struct eng_logprob *lp) {
    long n_chars = 0;
    json_array_append_new(json_object_get(o, "tokens"), lp_token_string(t, id, &n_chars));
    json_array_append_new(json_object_get(o, "text_offset"), json_integer(c->n_chars));
    c->n_chars += n_chars;
    if (!lp) {
        json_array_append_new(json_object_get(o, "token_logprobs"), json_null());
        json_array_append_new(json_object_get(o, "top_logprobs"), json_null());
        return;
    }
    json_array_append_new(json_object_get(o, "token_logprobs"), json_real(lp->logprob));
    json_t *top = json_object();
    for (int i = 0; i < lp->n_top; i++) {
        json_t *k = lp_token_string(t, lp->top_id[i], NULL);
        if (k) json_object_set_new(top, json_string_value(k), json_real(lp->top_logprob[i]));
        json_decref(k);
    }
    json_t *k = lp_token_string(t, lp->id, NULL);
    if (k && !json_object_get(top, json_string_value(k))) json_object_set_new(top, json_string_value(k), json_real(lp->logprob));
    json_decref(k);
    json_array_append_new(json_object_get(o, "top_logprobs"), top);
}

json_t *srv_logprobs_json(const struct srv_req *r, struct srv_choice *c, const struct eng_logprob *prompt_lp,
                          int n_prompt, const struct eng_logprob *lp, int n_lp) {
    const struct tok *t = r->srv->eng->tok;
    json_t *o = json_object();
    if (!o) return NULL;
    if (r->kind == SRV_CHAT) {
        json_t *content = json_array();
        for (int i = 0; i < n_lp; i++) lp_chat_append(t, content, &lp[i]);
        json_object_set_new(o, "content", content);
        return o;
    }
    static const char *const lists[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) json_object_set_new(o, lists[i], json_array());
    for (int i = 0; prompt_lp && i < n_prompt; i++) lp_completion_append(t, o, c, prompt_lp[i].id, i ? &prompt_lp[i] : NULL);
    for (int i = 0; i < n_lp; i++) lp_completion_append(t, o, c, lp[i].id, &lp[i]);
    return o;
}

void srv_logprobs_append(json_t **acc, json_t *more) {
    if (!more) return;
    if (!*acc) {
        *acc = more;
        return;
    }
    const char *key;
    json_t *list;
    json_object_foreach(more, key, list) json_array_extend(json_object_get(*acc, key), list);
    json_decref(more);
}
