/* chat.h — chat templates: OpenAI-style messages to one prompt string.
 *
 * A model names its prompt format with a Jinja template (GGUF key
 * tokenizer.chat_template).  We do not run Jinja: we recognise the template's
 * family from robust markers, pull out the few details that change the output
 * (the default system message a ChatML template injects, whether BOS text is
 * emitted, whether contents are trimmed), and render that family in C.  The
 * result is byte-identical to what Python jinja2 renders from the model's own
 * template (tests/golden/gen_chat.py checks every family).
 *
 * Deliberately not here: tokenization (the rendered text is tokenized later,
 * with special tokens parsed), tool calls, and any template outside the
 * families below — those are refused with a message suggesting
 * --chat-template NAME rather than rendered approximately.
 */
#ifndef PPD_CHAT_H
#define PPD_CHAT_H

#include <stdbool.h>
#include <stddef.h>

struct chat_msg {
    const char *role;     /* "system", "user" or "assistant" */
    const char *content;  /* UTF-8, never NULL */
};

enum chat_family {
    CHAT_FAMILY_CHATML = 0,   /* <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen2, ...) */
    CHAT_FAMILY_VICUNA,       /* FastChat vicuna_v1.1: "SYS USER: .. ASSISTANT: ..</s>" */
    CHAT_FAMILY_LLAMA2,       /* <s>[INST] <<SYS>>..<</SYS>> .. [/INST] .. </s> */
    CHAT_FAMILY_LLAMA3,       /* <|start_header_id|>role<|end_header_id|>\n\n..<|eot_id|> */
    CHAT_FAMILY_ZEPHYR,       /* <|role|>\n..</s>\n */
    CHAT_FAMILY_COUNT_
};

#define CHAT_TEXT_MAX  1024   /* longest default system message we keep */
#define CHAT_TOKEN_MAX 64     /* longest BOS/EOS token text */

struct chat_template {
    enum chat_family family;
    /* chatml: text injected as a system message when the first message is not
     * a system one; vicuna: the system prompt used when none is given. */
    bool has_default_system;
    char default_system[CHAT_TEXT_MAX];
    /* chatml: the injection happens inside the message loop, so an empty
     * message list gets none (SmolLM2, Qwen2); false when it is outside it. */
    bool default_system_needs_message;
    bool emits_bos;               /* the template writes bos_token text itself */
    bool trim_content;            /* llama3: message contents go through | trim */
    char bos[CHAT_TOKEN_MAX];     /* bos_token / eos_token texts; family defaults, */
    char eos[CHAT_TOKEN_MAX];     /* overwrite with the tokenizer's (chat_template_set_tokens) */
};

/* Recognise the family of a tokenizer.chat_template text and extract its
 * details.  ENG_E_INVALID for NULL/empty text, ENG_E_UNSUPPORTED (with the
 * reason in err) for a template we cannot render exactly. */
int chat_template_detect(const char *jinja_src, struct chat_template *out, char *err, size_t cap);

/* The template for --chat-template NAME: "chatml", "vicuna", "llama2",
 * "llama3", "zephyr" (chatml without a default system message).
 * ENG_E_INVALID for an unknown name. */
int chat_template_by_name(const char *name, struct chat_template *out);

/* Set the bos_token / eos_token texts (the tokenizer's).  NULL leaves one as
 * it is.  ENG_E_TOO_LONG when a text does not fit. */
int chat_template_set_tokens(struct chat_template *t, const char *bos, const char *eos);

const char *chat_family_name(enum chat_family family);

/* Render n messages; *out receives a malloc'd NUL-terminated string (free()).
 * ENG_E_INVALID (reason in err) for an unknown role, a NULL content, or an
 * order the family's template rejects (llama2 and vicuna: after an optional
 * leading system message, user and assistant must alternate starting with
 * user); ENG_E_NOMEM. */
int chat_render(const struct chat_template *t, const struct chat_msg *msgs, int n,
                bool add_generation_prompt, char **out, char *err, size_t cap);

#endif
