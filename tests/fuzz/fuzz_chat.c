/* fuzz_chat.c — libFuzzer target: the chat-template renderer (chat_render)
 * over messages carved from the input, and the template recogniser
 * (chat_template_detect) over arbitrary template text.
 *
 * Input layout: byte 0 picks the template (low 3 bits: one of the five named
 * families, or 5..7: detect a template whose source is the first NUL-separated
 * field), bit 3 add_generation_prompt, bit 4 set BOS/EOS texts from the next
 * two fields.  Every further NUL-separated field is one message: its first byte
 * picks the role (system, user, assistant, or an unknown one the renderer must
 * refuse), the rest is the content.  A rendering must succeed or fail with a
 * message; a successful one is a NUL-terminated string that contains every
 * message's content when the family does not strip contents (llama2 always
 * does, llama3 when its template trims).
 *
 * Not here: tokenizing the rendered text (fuzz_request.c does, through the server).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/load/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_MSGS 64

static const char *const fuzz_names[] = { "chatml", "vicuna", "llama2", "llama3", "zephyr" };
static const char *const fuzz_roles[] = { "system", "user", "assistant", "tool" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned mode = data[0];
    /* NUL-terminated copy, so fields are C strings in place. */
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    char *p = text, *end = text + size - 1;
    char *field[2 + 1 + FUZZ_MAX_MSGS];
    int n_field = 0;
    while (n_field < (int)(sizeof field / sizeof field[0])) {
        field[n_field++] = p;
        char *z = memchr(p, 0, (size_t)(end - p));
        if (!z) break;
        p = z + 1;
    }
    int f = 0;
    struct chat_template t;
    char err[512];
    if ((mode & 7) < 5) {
        if (chat_template_by_name(fuzz_names[mode & 7], &t)) abort();
    } else {
        err[0] = 0;
        int rc = chat_template_detect(field[f++], &t, err, sizeof err);
        if (rc) goto out;
        if (f >= n_field) goto out;
    }
    if (mode & 16) {
        const char *bos = f < n_field ? field[f++] : NULL;
        const char *eos = f < n_field ? field[f++] : NULL;
        (void)chat_template_set_tokens(&t, bos, eos);   /* too long: keeps the family's */
    }
    struct chat_msg msgs[FUZZ_MAX_MSGS];
    int n = 0;
    for (; f < n_field && n < FUZZ_MAX_MSGS; f++) {
        msgs[n].role = fuzz_roles[(unsigned char)field[f][0] & 3];
        msgs[n].content = field[f][0] ? field[f] + 1 : field[f];
        n++;
    }
    char *out = NULL;
    err[0] = 0;
    if (chat_render(&t, msgs, n, (mode & 8) != 0, &out, err, sizeof err) == 0) {
        if (!out) abort();
        if (!t.trim_content && t.family != CHAT_FAMILY_LLAMA2)   /* llama2 strips every content */
            for (int i = 0; i < n; i++)
                if (!strstr(out, msgs[i].content)) abort();
        free(out);
    } else if (!err[0] || out) {
        abort();
    }
out:
    free(text);
    return 0;
}
