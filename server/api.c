/* api.c — the OpenAI request and response shapes: parse and validate a
 * /v1/chat/completions or /v1/completions body into a srv_gen (prompt already
 * tokenized), build the response objects and chunks, and the one formatter
 * that turns an ENG_E_* code into the OpenAI error object.
 *
 * Accepted fields are those of docs/serving.md ("Requests"), with two extensions:
 * ignore_eos (llama.cpp's) and "ppd": false, which decodes the request
 * plainly (PPD is lossless, so this changes speed, never the text); unknown
 * fields are ignored, a known field of the wrong type or out of range is a
 * 400 naming it.  n (1..SRV_MAX_CHOICES), logprobs (chat: logprobs +
 * top_logprobs 0..20; completions: logprobs 0..5) and completions' echo are
 * OpenAI's.  Deliberately refused (400): echo on chat, prompt lists of more
 * than one prompt.  Every response carries a llama.cpp-style "timings" object
 * (plus PPD's figures) at its top level: the non-streamed answer and the last
 * chunk before [DONE].  Not here: HTTP, SSE framing, threads, the logprobs
 * objects (api_logprobs.c).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"
#include "engine/load/chat.h"
#include "engine/err.h"
#include "engine/decode/logprobs.h"
#include "engine/load/tokenizer.h"
#include "serve.h"

void srv_err_set(struct srv_err *e, int code, const char *param, const char *oai_code, const char *fmt, ...) {
    e->code = code;
    e->param = param;
    e->oai_code = oai_code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

const char *srv_err_type(int http) {
    switch (http) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "unavailable_error";
    default: return "server_error";
    }
}

char *srv_err_json(const struct srv_err *e) {
    json_t *inner = json_object();
    json_object_set_new(inner, "message", json_string(e->msg[0] ? e->msg : eng_err_msg(e->code)));
    json_object_set_new(inner, "type", json_string(srv_err_type(eng_err_http_status(e->code))));
    json_object_set_new(inner, "param", e->param ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->oai_code ? json_string(e->oai_code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", inner);
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return txt;
}

/* ---- typed field readers: absent and null mean "not given" ---- */

static json_t *api_field(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return v && !json_is_null(v) ? v : NULL;
}

static int api_bool(json_t *root, const char *key, bool *out, struct srv_err *err) {
    json_t *v = api_field(root, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) {
        srv_err_set(err, ENG_E_INVALID, key, "invalid_type", "'%s' must be a boolean", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int api_number(json_t *root, const char *key, double lo, double hi, float *out, struct srv_err *err) {
    json_t *v = api_field(root, key);
    if (!v) return 0;
    if (!json_is_number(v)) {
        srv_err_set(err, ENG_E_INVALID, key, "invalid_type", "'%s' must be a number", key);
        return -1;
    }
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi) {
        srv_err_set(err, ENG_E_RANGE, key, "invalid_value", "'%s' must be in [%g, %g], got %g", key, lo, hi, d);
        return -1;
    }
    *out = (float)d;
    return 0;
}

/* An integer-valued JSON number: 0 with *out set; -1 when v is not one; 1 when it
 * is integral but beyond 64 bits.  Integral reals count (JSON Schema's integer: 5.0
 * is 5), and a body with an integer beyond 64 bits is read with every number as a
 * double (srv_api_parse), where they are all reals. */
static int api_integral(json_t *v, long long *out) {
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_real(v)) return -1;
    double d = json_real_value(v);
    if (!isfinite(d) || d != floor(d)) return -1;
    if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) return 1;
    *out = (long long)d;
    return 0;
}

static int api_int(json_t *root, const char *key, long long lo, long long hi, long long *out, bool *given,
                   struct srv_err *err) {
    json_t *v = api_field(root, key);
    if (!v) return 0;
    long long l = 0;
    int kind = api_integral(v, &l);
    if (kind < 0) {
        srv_err_set(err, ENG_E_INVALID, key, "invalid_type", "'%s' must be an integer", key);
        return -1;
    }
    if (kind > 0) {
        srv_err_set(err, ENG_E_RANGE, key, "invalid_value", "'%s' must be in [%lld, %lld], got %g", key, lo, hi,
                    json_real_value(v));
        return -1;
    }
    if (l < lo || l > hi) {
        srv_err_set(err, ENG_E_RANGE, key, "invalid_value", "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, l);
        return -1;
    }
    *out = l;
    if (given) *given = true;
    return 0;
}

/* Text of a message's content: a string, or an array of {"type":"text","text":...}
 * parts (concatenated into *owned), or null (empty). */
static const char *api_content(json_t *c, char **owned, struct srv_err *err) {
    if (!c || json_is_null(c)) return "";
    if (json_is_string(c)) return json_string_value(c);
    if (!json_is_array(c)) {
        srv_err_set(err, ENG_E_INVALID, "messages", "invalid_type", "message content must be a string or an array of text parts");
        return NULL;
    }
    size_t total = 1, i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) || strcmp(json_string_value(type), "text") ||
            !json_is_string(text)) {
            srv_err_set(err, ENG_E_UNSUPPORTED, "messages", "invalid_value",
                        "only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
            return NULL;
        }
        total += json_string_length(text);
    }
    char *buf = malloc(total);
    if (!buf) { srv_err_set(err, ENG_E_NOMEM, NULL, NULL, "out of memory"); return NULL; }
    size_t n = 0;
    json_array_foreach(c, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(buf + n, json_string_value(text), json_string_length(text));
        n += json_string_length(text);
    }
    buf[n] = 0;
    *owned = buf;
    return buf;
}

static int api_chat_prompt(struct srv *s, json_t *root, struct srv_gen *g, struct srv_err *err) {
    json_t *msgs = api_field(root, "messages");
    if (!msgs) { srv_err_set(err, ENG_E_INVALID, "messages", "missing_required_parameter", "'messages' is required"); return -1; }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        srv_err_set(err, ENG_E_INVALID, "messages", "invalid_type", "'messages' must be a non-empty array");
        return -1;
    }
    size_t n = json_array_size(msgs);
    struct chat_msg *cm = calloc(n, sizeof *cm);
    char **owned = calloc(n, sizeof *owned);
    int rc = -1;
    if (!cm || !owned) { srv_err_set(err, ENG_E_NOMEM, NULL, NULL, "out of memory"); goto out; }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role)) {
            srv_err_set(err, ENG_E_INVALID, "messages", "invalid_type", "messages[%zu] must be an object with a string 'role'", i);
            goto out;
        }
        const char *r = json_string_value(role);
        if (!strcmp(r, "developer")) r = "system";   /* OpenAI's newer name for the system role */
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            srv_err_set(err, ENG_E_INVALID, "messages", "invalid_value",
                        "messages[%zu].role '%s' is not supported (system, developer, user, assistant)", i, r);
            goto out;
        }
        cm[i].role = r;
        if (!(cm[i].content = api_content(json_object_get(m, "content"), &owned[i], err))) goto out;
    }
    char cerr[256] = "";
    int erc = eng_engine_chat_tokens(s->eng, cm, (int)n, &g->prompt, &g->n_prompt, cerr, sizeof cerr);
    if (erc) { srv_err_set(err, erc, "messages", NULL, "%s", cerr[0] ? cerr : eng_err_msg(erc)); goto out; }
    rc = 0;
out:
    if (owned) for (size_t i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(cm);
    return rc;
}

/* With echo: the prompt's text, as given (text) or decoded from its ids. */
static int api_echo_text(struct srv *s, struct srv_gen *g, const char *text, struct srv_err *err) {
    if (!g->echo) return 0;
    size_t n = text ? strlen(text) : tok_decode(s->eng->tok, g->prompt, (size_t)g->n_prompt, TOK_PIECE_SPECIAL, NULL, 0);
    if (!(g->echo_text = malloc(n + 1))) {
        srv_err_set(err, ENG_E_NOMEM, NULL, NULL, "out of memory");
        return -1;
    }
    if (text) memcpy(g->echo_text, text, n);
    else tok_decode(s->eng->tok, g->prompt, (size_t)g->n_prompt, TOK_PIECE_SPECIAL, g->echo_text, n);
    g->echo_text[n] = 0;
    g->n_echo_text = n;
    return 0;
}

static int api_completion_prompt(struct srv *s, json_t *root, struct srv_gen *g, struct srv_err *err) {
    json_t *p = api_field(root, "prompt");
    if (!p) { srv_err_set(err, ENG_E_INVALID, "prompt", "missing_required_parameter", "'prompt' is required"); return -1; }
    long long first_id;
    if (json_is_array(p) && json_array_size(p) >= 1 && api_integral(json_array_get(p, 0), &first_id) >= 0) {
        /* A prompt given as token ids. */
        size_t n = json_array_size(p), i;
        json_t *v;
        if (!(g->prompt = malloc(sizeof *g->prompt * n))) { srv_err_set(err, ENG_E_NOMEM, NULL, NULL, "out of memory"); return -1; }
        json_array_foreach(p, i, v) {
            long long id = -1;
            if (api_integral(v, &id) != 0 || id < 0 || id >= tok_n_vocab(s->eng->tok)) {
                srv_err_set(err, ENG_E_RANGE, "prompt", "invalid_value", "prompt[%zu] is not a token id", i);
                return -1;
            }
            g->prompt[i] = (int32_t)id;
        }
        g->n_prompt = (int)n;
        return api_echo_text(s, g, NULL, err);
    }
    if (json_is_array(p)) {
        if (json_array_size(p) != 1 || !json_is_string(json_array_get(p, 0))) {
            srv_err_set(err, ENG_E_UNSUPPORTED, "prompt", "invalid_value",
                        "'prompt' must be a string, an array of one string, or an array of token ids");
            return -1;
        }
        p = json_array_get(p, 0);
    }
    if (!json_is_string(p)) {
        srv_err_set(err, ENG_E_INVALID, "prompt", "invalid_type", "'prompt' must be a string");
        return -1;
    }
    int rc = eng_engine_text_tokens(s->eng, json_string_value(p), &g->prompt, &g->n_prompt);
    if (rc) { srv_err_set(err, rc, "prompt", NULL, "cannot tokenize the prompt: %s", eng_err_msg(rc)); return -1; }
    return api_echo_text(s, g, json_string_value(p), err);
}

static int api_stop(json_t *root, struct srv_gen *g, struct srv_err *err) {
    json_t *st = api_field(root, "stop");
    if (!st) return 0;
    if (json_is_string(st)) {
        g->stop[g->n_stop++] = json_string_value(st);
    } else if (json_is_array(st)) {
        size_t i;
        json_t *v;
        if (json_array_size(st) > ENG_TEXTOUT_MAX_STOP) {
            srv_err_set(err, ENG_E_RANGE, "stop", "invalid_value", "'stop' holds at most %d strings", ENG_TEXTOUT_MAX_STOP);
            return -1;
        }
        json_array_foreach(st, i, v) {
            if (!json_is_string(v)) {
                srv_err_set(err, ENG_E_INVALID, "stop", "invalid_type", "'stop' must be a string or an array of strings");
                return -1;
            }
            g->stop[g->n_stop++] = json_string_value(v);
        }
    } else {
        srv_err_set(err, ENG_E_INVALID, "stop", "invalid_type", "'stop' must be a string or an array of strings");
        return -1;
    }
    for (int i = 0; i < g->n_stop; i++)
        if (strlen(g->stop[i]) > ENG_TEXTOUT_MAX_STOP_LEN) {
            srv_err_set(err, ENG_E_RANGE, "stop", "invalid_value", "each stop string is at most %d bytes",
                        ENG_TEXTOUT_MAX_STOP_LEN);
            return -1;
        }
    return 0;
}

static bool api_model_known(const struct srv *s, const char *m) {
    const char *base = strrchr(s->cfg.model, '/');
    base = base ? base + 1 : s->cfg.model;
    return !strcmp(m, s->model_id) || !strcmp(m, s->cfg.model) || !strcmp(m, base);
}

int srv_api_parse(struct srv *s, enum srv_kind kind, const char *body, size_t n, struct srv_gen *g, json_t **rootp,
                  struct srv_err *err) {
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->use_ppd = true;
    eng_sampler_params_default(&g->sp);
    json_error_t je;
    json_t *root = json_loadb(body, n, JSON_REJECT_DUPLICATES, &je);
    /* jansson refuses integers beyond 64 bits; JSON has no such limit (an unknown
     * field may carry one), so such a body is read again with numbers as doubles. */
    if (!root && json_error_code(&je) == json_error_numeric_overflow)
        root = json_loadb(body, n, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
    *rootp = root;
    if (!root) {
        srv_err_set(err, ENG_E_INVALID, NULL, "invalid_json", "the body is not valid JSON: %s (line %d, column %d)", je.text,
                    je.line, je.column);
        return -1;
    }
    if (!json_is_object(root)) {
        srv_err_set(err, ENG_E_INVALID, NULL, "invalid_json", "the body must be a JSON object");
        return -1;
    }
    json_t *model = api_field(root, "model");
    if (model && !json_is_string(model)) {
        srv_err_set(err, ENG_E_INVALID, "model", "invalid_type", "'model' must be a string");
        return -1;
    }
    if (model && !api_model_known(s, json_string_value(model))) {
        srv_err_set(err, ENG_E_NOT_FOUND, "model", "model_not_found", "The model `%s` does not exist.", json_string_value(model));
        return -1;
    }
    long long max_tokens = 0, mct = 0, top_k = 0, seed = 0, n_choices = 1, top_logprobs = 0, n_logprobs = 0;
    bool have_mct = false, logprobs = false, echo = false, have_top = false, have_logprobs = false;
    const bool chat = kind == SRV_CHAT;
    json_t *so = api_field(root, "stream_options");
    if (api_bool(root, "stream", &g->stream, err) ||
        api_int(root, "max_tokens", 1, 1 << 30, &max_tokens, NULL, err) ||
        api_int(root, "max_completion_tokens", 1, 1 << 30, &mct, &have_mct, err) ||
        api_number(root, "temperature", 0, 2, &g->sp.temperature, err) ||
        api_number(root, "top_p", 0, 1, &g->sp.top_p, err) ||
        api_number(root, "min_p", 0, 1, &g->sp.min_p, err) ||
        api_int(root, "top_k", 0, 1 << 30, &top_k, NULL, err) ||
        api_int(root, "seed", INT64_MIN, INT64_MAX, &seed, NULL, err) ||
        api_number(root, "presence_penalty", -2, 2, &g->sp.presence_penalty, err) ||
        api_number(root, "frequency_penalty", -2, 2, &g->sp.frequency_penalty, err) ||
        api_int(root, "n", 1, SRV_MAX_CHOICES, &n_choices, NULL, err) ||
        (chat ? api_bool(root, "logprobs", &logprobs, err) ||
                    api_int(root, "top_logprobs", 0, ENG_LOGPROBS_MAX_TOP, &top_logprobs, &have_top, err)
              : api_int(root, "logprobs", 0, SRV_MAX_COMPLETION_LOGPROBS, &n_logprobs, &have_logprobs, err)) ||
        api_bool(root, "echo", &echo, err) || api_bool(root, "ignore_eos", &g->ignore_eos, err) ||
        api_bool(root, "ppd", &g->use_ppd, err) ||
        api_stop(root, g, err))
        return -1;
    if (so && !json_is_object(so)) {
        srv_err_set(err, ENG_E_INVALID, "stream_options", "invalid_type", "'stream_options' must be an object");
        return -1;
    }
    if (so && api_bool(so, "include_usage", &g->include_usage, err)) { err->param = "stream_options"; return -1; }
    json_t *user = api_field(root, "user");
    if (user && !json_is_string(user)) {
        srv_err_set(err, ENG_E_INVALID, "user", "invalid_type", "'user' must be a string");
        return -1;
    }
    if (have_top && !logprobs) {
        srv_err_set(err, ENG_E_INVALID, "top_logprobs", "invalid_value", "'top_logprobs' needs 'logprobs': true");
        return -1;
    }
    if (chat && echo) {
        srv_err_set(err, ENG_E_UNSUPPORTED, "echo", "invalid_value", "echo is a /v1/completions field");
        return -1;
    }
    g->n_choices = (int)n_choices;
    g->logprobs = chat ? (logprobs ? (int)top_logprobs : -1) : (have_logprobs ? (int)n_logprobs : -1);
    g->echo = echo;
    g->max_tokens = (int)(have_mct ? mct : max_tokens);
    g->sp.top_k = (int)top_k;
    g->sp.seed = (uint64_t)seed;
    if (chat ? api_chat_prompt(s, root, g, err) : api_completion_prompt(s, root, g, err)) return -1;
    if (g->n_prompt < 1) {
        srv_err_set(err, ENG_E_INVALID, kind == SRV_CHAT ? "messages" : "prompt", NULL, "the prompt is empty");
        return -1;
    }
    if (g->n_prompt >= s->n_ctx) {
        srv_err_set(err, ENG_E_TOO_LONG, kind == SRV_CHAT ? "messages" : "prompt", "context_length_exceeded",
                    "This model's maximum context length is %d tokens. However, your prompt has %d tokens.", s->n_ctx,
                    g->n_prompt);
        return -1;
    }
    return 0;
}

void srv_gen_free(struct srv_gen *g) {
    free(g->prompt);
    free(g->echo_text);
    g->prompt = NULL;
    g->echo_text = NULL;
}

/* ---- responses ---- */

/* OpenAI's usage.  prompt_tokens counts the prompt once, so cached_tokens
 * is what no choice had to compute: the fewest any choice took from the
 * prefix cache (with n > 1 the first choice prefills, the others reuse it). */
static json_t *api_usage(const struct srv_req *r) {
    long long n_gen = 0;
    int cached = r->n_choices > 0 ? r->ch[0].n_cached : 0;
    for (int i = 0; i < r->n_choices; i++) {
        n_gen += r->ch[i].n_gen;
        if (r->ch[i].n_cached < cached) cached = r->ch[i].n_cached;
    }
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(r->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(n_gen));
    json_object_set_new(u, "total_tokens", json_integer(r->n_prompt + n_gen));
    json_t *details = json_object();
    json_object_set_new(details, "cached_tokens", json_integer(cached));
    json_object_set_new(u, "prompt_tokens_details", details);
    return u;
}

/* n / seconds and milliseconds per item, 0 where there is nothing to divide. */
static void api_rate(json_t *o, const char *per_token, const char *per_second, long long n, double ms) {
    json_object_set_new(o, per_token, json_real(n > 0 ? ms / (double)n : 0.0));
    json_object_set_new(o, per_second, json_real(ms > 0 ? (double)n * 1e3 / ms : 0.0));
}

/* llama.cpp's timings, over all choices: the prompt phase runs from the
 * first admission to the last choice's first token, the predicted phase from
 * there to the last choice's end; prompt_n counts every choice's prefill (each
 * choice prefills the prompt).  Then PPD's figures, summed over the choices. */
static json_t *api_timings(const struct srv_req *r) {
    double t_admit = 0, t_first = 0, t_end = 0;
    long long n_gen = 0, n_prompt = 0, steps = 0, drafted = 0, accepted = 0, cached = 0;
    for (int i = 0; i < r->n_choices; i++) {
        const struct srv_choice *c = &r->ch[i];
        if (c->t_admit > 0 && (t_admit == 0 || c->t_admit < t_admit)) t_admit = c->t_admit;
        if (c->t_first > t_first) t_first = c->t_first;
        if (c->t_end > t_end) t_end = c->t_end;
        if (c->t_admit > 0) n_prompt += r->n_prompt;
        n_gen += c->n_gen;
        steps += c->ppd_steps;
        drafted += c->ppd_drafted;
        accepted += c->ppd_accepted;
        cached += c->n_cached;
    }
    const double prompt_ms = t_first > t_admit && t_admit > 0 ? (t_first - t_admit) * 1e3 : 0;
    const double predicted_ms = t_end > t_first && t_first > 0 ? (t_end - t_first) * 1e3 : 0;
    json_t *o = json_object();
    json_object_set_new(o, "prompt_n", json_integer(n_prompt));
    json_object_set_new(o, "prompt_ms", json_real(prompt_ms));
    api_rate(o, "prompt_per_token_ms", "prompt_per_second", n_prompt, prompt_ms);
    json_object_set_new(o, "predicted_n", json_integer(n_gen));
    json_object_set_new(o, "predicted_ms", json_real(predicted_ms));
    api_rate(o, "predicted_per_token_ms", "predicted_per_second", n_gen, predicted_ms);
    json_object_set_new(o, "cached_prompt_tokens", json_integer(cached));
    json_object_set_new(o, "ppd_steps", json_integer(steps));
    json_object_set_new(o, "ppd_drafted", json_integer(drafted));
    json_object_set_new(o, "ppd_accepted", json_integer(accepted));
    json_object_set_new(o, "ppd_mean_accepted_per_step", json_real(steps > 0 ? (double)accepted / (double)steps : 0.0));
    return o;
}

static json_t *api_head(const struct srv_req *r, const char *model, const char *object) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(model));
    json_object_set_new(o, "system_fingerprint", json_string("ppd-" PPD_VERSION));
    return o;
}

static char *api_dump(json_t *o) {
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return txt;
}

static const char *api_finish(const struct srv_choice *c) {
    const char *f = eng_sched_finish_reason((enum eng_sched_finish)c->finish);
    return f ? f : "stop";
}

char *srv_api_completion(const struct srv_req *r, const char *model) {
    bool chat = r->kind == SRV_CHAT;
    json_t *o = api_head(r, model, chat ? "chat.completion" : "text_completion");
    json_t *choices = json_array();
    for (int i = 0; i < r->n_choices; i++) {
        const struct srv_choice *c = &r->ch[i];
        const char *text = c->text ? c->text : "";
        json_t *choice = json_object();
        json_object_set_new(choice, "index", json_integer(i));
        if (chat) {
            json_t *msg = json_object();
            json_object_set_new(msg, "role", json_string("assistant"));
            json_object_set_new(msg, "content", json_stringn(text, c->n_text));
            json_object_set_new(choice, "message", msg);
        } else {
            json_object_set_new(choice, "text", json_stringn(text, c->n_text));
        }
        json_object_set(choice, "logprobs", c->logprobs ? c->logprobs : json_null());
        json_object_set_new(choice, "finish_reason", json_string(api_finish(c)));
        json_array_append_new(choices, choice);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", api_usage(r));
    json_object_set_new(o, "timings", api_timings(r));
    return api_dump(o);
}

char *srv_api_chunk(const struct srv_req *r, const char *model, int index, const char *text, size_t n_text, bool role,
                    json_t *logprobs, const char *finish, bool timings) {
    bool chat = r->kind == SRV_CHAT;
    json_t *o = api_head(r, model, chat ? "chat.completion.chunk" : "text_completion");
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(index));
    if (chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (role || n_text || logprobs) json_object_set_new(delta, "content", json_stringn(text, n_text));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", json_stringn(text, n_text));
    }
    json_object_set_new(choice, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
    if (r->include_usage) json_object_set_new(o, "usage", json_null());
    if (timings) json_object_set_new(o, "timings", api_timings(r));
    return api_dump(o);
}

char *srv_api_usage_chunk(const struct srv_req *r, const char *model) {
    bool chat = r->kind == SRV_CHAT;
    json_t *o = api_head(r, model, chat ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", api_usage(r));
    json_object_set_new(o, "timings", api_timings(r));
    return api_dump(o);
}

/* What /v1/models says about PPD: enabled or not, and with what. */
static json_t *api_ppd_info(const struct srv *s) {
    json_t *p = json_object();
    const struct eng_ppd_setup *c = &s->ppd;
    json_object_set_new(p, "enabled", json_boolean(c->src != ENG_PPD_OFF));
    if (c->src == ENG_PPD_OFF) return p;
    json_object_set_new(p, "adapter", c->src == ENG_PPD_FILE ? json_string(c->path) : json_null());
    json_object_set_new(p, "n_prompt", json_integer(c->ppd.n_prompt));
    json_object_set_new(p, "topk", json_integer(c->ppd.topk));
    json_object_set_new(p, "tree", json_string(s->tree_budget > 0 ? "auto" : s->cfg.tree));
    if (s->tree_budget > 0) json_object_set_new(p, "tree_size", json_integer(s->tree_budget));
    json_object_set_new(p, "tree_rows", json_integer(c->ppd.trees.max_T));
    json_object_set_new(p, "accept", json_string(s->cfg.ppd_accept));
    return p;
}

char *srv_api_models(const struct srv *s) {
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(0));
    json_object_set_new(m, "owned_by", json_string("ppd"));
    json_t *meta = json_object();
    json_object_set_new(meta, "n_ctx", json_integer(s->n_ctx));
    json_object_set_new(meta, "n_vocab", json_integer(s->eng->model->hp.n_vocab));
    json_object_set_new(meta, "n_embd", json_integer(s->eng->model->hp.n_embd));
    json_object_set_new(meta, "n_parallel", json_integer(s->cfg.n_parallel));
    json_object_set_new(meta, "ppd", api_ppd_info(s));
    json_object_set_new(m, "meta", meta);
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return api_dump(o);
}
