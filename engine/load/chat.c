/* chat.c — chat-template detection and rendering (see chat.h).
 *
 * Detection reads the Jinja source only as text: markers pick the family, and
 * the string literals inside {{ }} / {% %} tags (escapes decoded, since a GGUF
 * may hold either real newlines or "\n" escapes) give the default system
 * message.  Rendering is one plain function per family that mirrors the
 * published template statement by statement, including its quirks (llama2
 * strips the <<SYS>> block together with the first user message; vicuna writes
 * "ROLE:" without a separator for an empty message, as FastChat does).
 *
 * This file does not evaluate Jinja, does not tokenize, and does not defend
 * against content that contains special-token text such as "<|im_end|>": the
 * tokenizer decides whether such text becomes a special token.
 */
#include "engine/load/chat.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

static const char CHAT_VICUNA_SYSTEM[] =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";

static const char *const chat_family_names[CHAT_FAMILY_COUNT_] = {
    [CHAT_FAMILY_CHATML] = "chatml", [CHAT_FAMILY_VICUNA] = "vicuna",
    [CHAT_FAMILY_LLAMA2] = "llama2", [CHAT_FAMILY_LLAMA3] = "llama3",
    [CHAT_FAMILY_ZEPHYR] = "zephyr",
};

__attribute__((format(printf, 3, 4)))
static void chat_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

const char *chat_family_name(enum chat_family family)
{
    if ((int)family < 0 || family >= CHAT_FAMILY_COUNT_)
        return "unknown";
    return chat_family_names[family];
}

static int chat_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return ENG_E_TOO_LONG;
    memcpy(dst, src, n + 1);
    return 0;
}

int chat_template_set_tokens(struct chat_template *t, const char *bos, const char *eos)
{
    if ((bos && strlen(bos) >= CHAT_TOKEN_MAX) || (eos && strlen(eos) >= CHAT_TOKEN_MAX))
        return ENG_E_TOO_LONG;
    if (bos)
        chat_copy(t->bos, sizeof t->bos, bos);
    if (eos)
        chat_copy(t->eos, sizeof t->eos, eos);
    return 0;
}

/* Family defaults: what the published template of each family does. */
static void chat_template_defaults(struct chat_template *t, enum chat_family family)
{
    memset(t, 0, sizeof *t);
    t->family = family;
    switch (family) {
    case CHAT_FAMILY_CHATML:
        chat_copy(t->bos, sizeof t->bos, "<s>");
        chat_copy(t->eos, sizeof t->eos, "<|im_end|>");
        break;
    case CHAT_FAMILY_VICUNA:
        t->has_default_system = true;
        chat_copy(t->default_system, sizeof t->default_system, CHAT_VICUNA_SYSTEM);
        chat_copy(t->bos, sizeof t->bos, "<s>");
        chat_copy(t->eos, sizeof t->eos, "</s>");
        break;
    case CHAT_FAMILY_LLAMA2:
        t->emits_bos = true;
        chat_copy(t->bos, sizeof t->bos, "<s>");
        chat_copy(t->eos, sizeof t->eos, "</s>");
        break;
    case CHAT_FAMILY_LLAMA3:
        t->emits_bos = true;
        t->trim_content = true;
        chat_copy(t->bos, sizeof t->bos, "<|begin_of_text|>");
        chat_copy(t->eos, sizeof t->eos, "<|eot_id|>");
        break;
    case CHAT_FAMILY_ZEPHYR:
    default:
        chat_copy(t->bos, sizeof t->bos, "<s>");
        chat_copy(t->eos, sizeof t->eos, "</s>");
        break;
    }
}

int chat_template_by_name(const char *name, struct chat_template *out)
{
    if (!name || !out)
        return ENG_E_INVALID;
    for (int f = 0; f < CHAT_FAMILY_COUNT_; f++) {
        if (strcmp(name, chat_family_names[f]) == 0) {
            chat_template_defaults(out, (enum chat_family)f);
            return 0;
        }
    }
    return ENG_E_INVALID;
}

/* ---- scanning string literals of a Jinja source ---------------------------- */

struct chat_scan {
    const char *src;
    size_t pos;
    int in_tag;        /* inside {{ }} or {% %}: quotes start string literals */
};

/* Next string literal inside a tag: decoded into buf (NUL-terminated), its
 * source offset in *at.  Returns 1, or 0 at the end.  A literal longer than
 * cap is skipped: nothing we look for is that long. */
static int chat_scan_literal(struct chat_scan *s, char *buf, size_t cap, size_t *at)
{
    const char *p = s->src;
    for (;;) {
        char c = p[s->pos];
        if (c == '\0')
            return 0;
        if (!s->in_tag) {
            if (c == '{' && (p[s->pos + 1] == '{' || p[s->pos + 1] == '%')) {
                s->in_tag = 1;
                s->pos += 2;
            } else if (c == '{' && p[s->pos + 1] == '#') {
                const char *end = strstr(p + s->pos + 2, "#}");
                s->pos = end ? (size_t)(end - p) + 2 : strlen(p);
            } else {
                s->pos++;
            }
            continue;
        }
        if ((c == '}' || c == '%') && p[s->pos + 1] == '}') {
            s->in_tag = 0;
            s->pos += 2;
            continue;
        }
        if (c != '\'' && c != '"') {
            s->pos++;
            continue;
        }
        /* a literal: decode Python-style escapes up to the closing quote */
        char q = c;
        size_t n = 0, i = s->pos + 1;
        int fits = 1;
        *at = s->pos;
        while (p[i] && p[i] != q) {
            char d = p[i++];
            if (d == '\\' && p[i]) {
                char e = p[i++];
                switch (e) {
                case 'n': d = '\n'; break;
                case 't': d = '\t'; break;
                case 'r': d = '\r'; break;
                case '\\': case '\'': case '"': d = e; break;
                default:
                    if (n + 1 < cap) buf[n++] = '\\'; else fits = 0;
                    d = e;
                    break;
                }
            }
            if (n + 1 < cap) buf[n++] = d; else fits = 0;
        }
        s->pos = p[i] ? i + 1 : i;
        if (!fits)
            continue;
        buf[n] = '\0';
        return 1;
    }
}

/* Is the literal at offset `at` the argument of raise_exception(...)? */
static int chat_is_exception_arg(const char *src, size_t at)
{
    static const char fn[] = "raise_exception(";
    size_t k = at;
    while (k > 0 && (src[k - 1] == ' ' || src[k - 1] == '\t' || src[k - 1] == '\n'))
        k--;
    return k >= sizeof fn - 1 && memcmp(src + k - (sizeof fn - 1), fn, sizeof fn - 1) == 0;
}

/* ChatML: a literal "<|im_start|>system\n" X "<|im_end|>" with a non-empty X is
 * the injected default; "'<|im_start|>system\n' + messages[0]['content']" is not. */
static int chat_detect_chatml(const char *src, struct chat_template *t, char *err, size_t cap)
{
    static const char head[] = "<|im_start|>system\n";
    char *buf = malloc(CHAT_TEXT_MAX * 4);
    if (!buf)
        return ENG_E_NOMEM;
    struct chat_scan s = { src, 0, 0 };
    size_t at = 0;
    int rc = 0;
    while (chat_scan_literal(&s, buf, CHAT_TEXT_MAX * 4, &at)) {
        char *h = strstr(buf, head);
        if (!h)
            continue;
        char *text = h + sizeof head - 1;
        char *end = strstr(text, "<|im_end|>");
        if (!end || end == text)
            continue;
        if ((size_t)(end - text) >= sizeof t->default_system) {
            chat_err(err, cap, "chatml template: default system message longer than %d bytes",
                     CHAT_TEXT_MAX - 1);
            rc = ENG_E_TOO_LONG;
            goto out;
        }
        memcpy(t->default_system, text, (size_t)(end - text));
        t->default_system[end - text] = '\0';
        t->has_default_system = true;
        /* Injected inside "for message in messages" (SmolLM2, Qwen2) or before it. */
        const char *loop = strstr(src, "for message in messages");
        t->default_system_needs_message = loop && (size_t)(loop - src) < at;
        break;
    }
out:
    free(buf);
    return rc;
}

/* Vicuna: the default system prompt is the first long literal that is neither
 * a role prefix nor an error message. */
static int chat_detect_vicuna(const char *src, struct chat_template *t)
{
    char *buf = malloc(CHAT_TEXT_MAX);
    if (!buf)
        return ENG_E_NOMEM;
    struct chat_scan s = { src, 0, 0 };
    size_t at = 0;
    t->has_default_system = false;
    t->default_system[0] = '\0';
    while (chat_scan_literal(&s, buf, CHAT_TEXT_MAX, &at)) {
        if (strlen(buf) < 16 || strstr(buf, "USER:") || strstr(buf, "ASSISTANT:") ||
            strchr(buf, '<') || chat_is_exception_arg(src, at))
            continue;
        chat_copy(t->default_system, sizeof t->default_system, buf);
        t->has_default_system = true;
        break;
    }
    free(buf);
    return 0;
}

int chat_template_detect(const char *src, struct chat_template *out, char *err, size_t cap)
{
    if (!src || !out || !*src) {
        chat_err(err, cap, "no chat template text");
        return ENG_E_INVALID;
    }
    bool uses_bos = strstr(src, "bos_token") != NULL;
    if (strstr(src, "<|im_start|>")) {
        chat_template_defaults(out, CHAT_FAMILY_CHATML);
        return chat_detect_chatml(src, out, err, cap);
    }
    if (strstr(src, "<|start_header_id|>")) {
        if (strstr(src, "Cutting Knowledge Date")) {
            chat_err(err, cap, "llama 3.1-style template (injects a dated system message) is not "
                     "supported; use --chat-template llama3");
            return ENG_E_UNSUPPORTED;
        }
        chat_template_defaults(out, CHAT_FAMILY_LLAMA3);
        out->emits_bos = uses_bos;
        out->trim_content = strstr(src, "trim") != NULL || strstr(src, ".strip()") != NULL;
        return 0;
    }
    if (strstr(src, "[INST]")) {
        if (!strstr(src, "<<SYS>>")) {
            chat_err(err, cap, "[INST] template without <<SYS>> (Mistral style) is not supported; "
                     "use --chat-template llama2 if the model follows Llama-2-chat");
            return ENG_E_UNSUPPORTED;
        }
        chat_template_defaults(out, CHAT_FAMILY_LLAMA2);
        out->emits_bos = uses_bos;
        return 0;
    }
    if (strstr(src, "<|user|>")) {
        if (!strstr(src, "eos_token")) {
            chat_err(err, cap, "<|user|> template that does not end turns with eos_token "
                     "(e.g. Phi-3 <|end|>) is not supported");
            return ENG_E_UNSUPPORTED;
        }
        chat_template_defaults(out, CHAT_FAMILY_ZEPHYR);
        return 0;
    }
    if (strstr(src, "USER:") && strstr(src, "ASSISTANT:")) {
        chat_template_defaults(out, CHAT_FAMILY_VICUNA);
        return chat_detect_vicuna(src, out);
    }
    chat_err(err, cap, "unrecognised chat template; use --chat-template NAME "
             "(chatml, vicuna, llama2, llama3, zephyr)");
    return ENG_E_UNSUPPORTED;
}

/* ---- rendering -------------------------------------------------------------- */

struct chat_buf {
    char *data;
    size_t len, cap;
};

static int chat_put(struct chat_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return ENG_E_NOMEM;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int chat_puts(struct chat_buf *b, const char *s)
{
    return chat_put(b, s, strlen(s));
}

/* Python's str.isspace() code points (what Jinja's | trim and .strip() remove). */
static int chat_is_py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decode the UTF-8 character at s[0..n); its length in *len, or 0 if invalid
 * (an invalid byte is never whitespace, so stripping stops there). */
static uint32_t chat_utf8_at(const unsigned char *s, size_t n, size_t *len)
{
    unsigned char c = s[0];
    size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (k == 0 || k > n) {
        *len = 0;
        return 0;
    }
    uint32_t cp = k == 1 ? c : (uint32_t)(c & (0x7f >> k));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *len = 0;
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    *len = k;
    return cp;
}

/* Append s[0..n) with Python-whitespace removed from both ends. */
static int chat_put_stripped(struct chat_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t lo = 0, hi = n, k;
    while (lo < hi && chat_is_py_space(chat_utf8_at(u + lo, hi - lo, &k)) && k)
        lo += k;
    while (hi > lo) {
        size_t start = hi - 1;
        while (start > lo && hi - start < 4 && (u[start] & 0xc0) == 0x80)
            start--;
        uint32_t cp = chat_utf8_at(u + start, hi - start, &k);
        if (!k || start + k != hi || !chat_is_py_space(cp))
            break;
        hi = start;
    }
    return chat_put(b, s + lo, hi - lo);
}

static int chat_role_known(const char *role)
{
    return role && (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant"));
}

/* Llama-2 and Vicuna templates raise unless, after an optional leading system
 * message, roles go user, assistant, user, ...  A system message elsewhere is
 * dropped or mislabelled by those templates; we refuse it instead. */
static int chat_check_alternation(const struct chat_template *t, const struct chat_msg *msgs,
                                  int n, char *err, size_t cap)
{
    int first = n > 0 && !strcmp(msgs[0].role, "system") ? 1 : 0;
    for (int i = first; i < n; i++) {
        const char *want = (i - first) % 2 == 0 ? "user" : "assistant";
        if (strcmp(msgs[i].role, want) != 0) {
            chat_err(err, cap, "%s template: message %d has role \"%s\" where \"%s\" is required "
                     "(an optional system message first, then user and assistant alternating, "
                     "starting with user)", chat_family_name(t->family), i, msgs[i].role, want);
            return ENG_E_INVALID;
        }
    }
    return 0;
}

static int chat_render_chatml(const struct chat_template *t, const struct chat_msg *m, int n,
                              bool agp, struct chat_buf *b)
{
    int rc = 0;
    bool inject = t->has_default_system && (n > 0 ? strcmp(m[0].role, "system") != 0
                                                  : !t->default_system_needs_message);
    if (inject) {
        if ((rc = chat_puts(b, "<|im_start|>system\n")) || (rc = chat_puts(b, t->default_system)) ||
            (rc = chat_puts(b, "<|im_end|>\n")))
            return rc;
    }
    for (int i = 0; i < n; i++) {
        if ((rc = chat_puts(b, "<|im_start|>")) || (rc = chat_puts(b, m[i].role)) ||
            (rc = chat_puts(b, "\n")) || (rc = chat_puts(b, m[i].content)) ||
            (rc = chat_puts(b, "<|im_end|>\n")))
            return rc;
    }
    if (agp)
        rc = chat_puts(b, "<|im_start|>assistant\n");
    return rc;
}

/* FastChat vicuna_v1.1: system + " ", then "ROLE: text" + (" " after a user
 * turn, eos after an assistant turn), or a bare "ROLE:" for an empty text. */
static int chat_render_vicuna(const struct chat_template *t, const struct chat_msg *m, int n,
                              bool agp, struct chat_buf *b)
{
    int rc = 0, first = n > 0 && !strcmp(m[0].role, "system") ? 1 : 0;
    const char *sys = first ? m[0].content : t->has_default_system ? t->default_system : "";
    if ((rc = chat_puts(b, sys)) || (rc = chat_puts(b, " ")))
        return rc;
    for (int i = first; i < n; i++) {
        bool user = !strcmp(m[i].role, "user");
        const char *prefix = user ? "USER:" : "ASSISTANT:";
        if ((rc = chat_puts(b, prefix)))
            return rc;
        if (m[i].content[0]) {
            if ((rc = chat_puts(b, " ")) || (rc = chat_puts(b, m[i].content)) ||
                (rc = chat_puts(b, user ? " " : t->eos)))
                return rc;
        }
    }
    if (agp)
        rc = chat_puts(b, "ASSISTANT:");
    return rc;
}

/* Llama-2-chat: the system text is folded into the first user turn and the
 * whole "<<SYS>>...<</SYS>>\n\n" + content string is stripped; the template
 * ignores add_generation_prompt ("[INST] ... [/INST]" already asks for it). */
static int chat_render_llama2(const struct chat_template *t, const struct chat_msg *m, int n,
                              struct chat_buf *b)
{
    int rc = 0, first = !strcmp(m[0].role, "system") ? 1 : 0;
    struct chat_buf tmp = { 0 };
    for (int i = first; i < n; i++) {
        const char *content = m[i].content;
        tmp.len = 0;
        if (i == first && first) {
            if ((rc = chat_puts(&tmp, "<<SYS>>\n")) || (rc = chat_puts(&tmp, m[0].content)) ||
                (rc = chat_puts(&tmp, "\n<</SYS>>\n\n")) || (rc = chat_puts(&tmp, content)))
                goto out;
            content = tmp.data;
        }
        if (!strcmp(m[i].role, "user")) {
            if ((t->emits_bos && (rc = chat_puts(b, t->bos))) || (rc = chat_puts(b, "[INST] ")) ||
                (rc = chat_put_stripped(b, content, strlen(content))) || (rc = chat_puts(b, " [/INST]")))
                goto out;
        } else {
            if ((rc = chat_puts(b, " ")) || (rc = chat_put_stripped(b, content, strlen(content))) ||
                (rc = chat_puts(b, " ")) || (rc = chat_puts(b, t->eos)))
                goto out;
        }
    }
out:
    free(tmp.data);
    return rc;
}

static int chat_render_llama3(const struct chat_template *t, const struct chat_msg *m, int n,
                              bool agp, struct chat_buf *b)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 && t->emits_bos && (rc = chat_puts(b, t->bos)))
            return rc;
        if ((rc = chat_puts(b, "<|start_header_id|>")) || (rc = chat_puts(b, m[i].role)) ||
            (rc = chat_puts(b, "<|end_header_id|>\n\n")))
            return rc;
        rc = t->trim_content ? chat_put_stripped(b, m[i].content, strlen(m[i].content))
                             : chat_puts(b, m[i].content);
        if (rc || (rc = chat_puts(b, "<|eot_id|>")))
            return rc;
    }
    if (agp)
        rc = chat_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return rc;
}

/* Zephyr: the generation prompt sits inside the loop (loop.last), so an empty
 * message list renders nothing at all. */
static int chat_render_zephyr(const struct chat_template *t, const struct chat_msg *m, int n,
                              bool agp, struct chat_buf *b)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if ((rc = chat_puts(b, "<|")) || (rc = chat_puts(b, m[i].role)) ||
            (rc = chat_puts(b, "|>\n")) || (rc = chat_puts(b, m[i].content)) ||
            (rc = chat_puts(b, t->eos)) || (rc = chat_puts(b, "\n")))
            return rc;
        if (i == n - 1 && agp && (rc = chat_puts(b, "<|assistant|>\n")))
            return rc;
    }
    return rc;
}

int chat_render(const struct chat_template *t, const struct chat_msg *msgs, int n,
                bool add_generation_prompt, char **out, char *err, size_t cap)
{
    struct chat_buf b = { 0 };
    int rc;
    if (!t || !out || n < 0 || (n > 0 && !msgs)) {
        chat_err(err, cap, "chat_render: invalid arguments");
        return ENG_E_INVALID;
    }
    *out = NULL;
    for (int i = 0; i < n; i++) {
        if (!chat_role_known(msgs[i].role)) {
            chat_err(err, cap, "message %d: unknown role \"%s\" (expected system, user or assistant)",
                     i, msgs[i].role ? msgs[i].role : "(null)");
            return ENG_E_INVALID;
        }
        if (!msgs[i].content) {
            chat_err(err, cap, "message %d (%s): content is missing", i, msgs[i].role);
            return ENG_E_INVALID;
        }
    }
    if (t->family == CHAT_FAMILY_LLAMA2 || t->family == CHAT_FAMILY_VICUNA) {
        if (t->family == CHAT_FAMILY_LLAMA2 && n == 0) {
            chat_err(err, cap, "llama2 template: at least one message is required");
            return ENG_E_INVALID;
        }
        if ((rc = chat_check_alternation(t, msgs, n, err, cap)))
            return rc;
    }
    /* An empty rendering (e.g. llama2 with only a system message) is still a string. */
    if ((rc = chat_put(&b, "", 0)))
        goto err;
    switch (t->family) {
    case CHAT_FAMILY_CHATML: rc = chat_render_chatml(t, msgs, n, add_generation_prompt, &b); break;
    case CHAT_FAMILY_VICUNA: rc = chat_render_vicuna(t, msgs, n, add_generation_prompt, &b); break;
    case CHAT_FAMILY_LLAMA2: rc = chat_render_llama2(t, msgs, n, &b); break;
    case CHAT_FAMILY_LLAMA3: rc = chat_render_llama3(t, msgs, n, add_generation_prompt, &b); break;
    case CHAT_FAMILY_ZEPHYR: rc = chat_render_zephyr(t, msgs, n, add_generation_prompt, &b); break;
    default:
        chat_err(err, cap, "chat_render: unknown template family %d", (int)t->family);
        rc = ENG_E_INVALID;
        break;
    }
    if (rc)
        goto err;
    *out = b.data;
    return 0;
err:
    if (rc == ENG_E_NOMEM)
        chat_err(err, cap, "chat_render: out of memory");
    free(b.data);
    return rc;
}
