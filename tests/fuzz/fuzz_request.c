/* fuzz_request.c — libFuzzer target: the OpenAI request parser/validator
 * (srv_api_parse, the function the HTTP handler calls on every body), then
 * the scheduler request the handler builds from an accepted one
 * (eng_sched_req_init: stop strings, sampler parameters; logprobs).
 *
 * Each input is parsed as a chat body and as a completion body.  The server
 * context is the smallest one srv_api_parse reads: the default model's
 * tokenizer and chat template in an otherwise empty eng_engine (no weights, no
 * KV cache), the model's path and id, and a context length.  An accepted
 * request must hold a prompt of 1..n_ctx-1 in-vocabulary ids and at most
 * ENG_TEXTOUT_MAX_STOP stop strings of bounded length; a refused one must name
 * an error code and a message.
 *
 * Not here: HTTP framing (libmicrohttpd), the response writers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_model.h"
#include "server/serve.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_N_CTX 2048

static struct srv fuzz_srv;
static struct eng_engine fuzz_eng;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_eng.tok = fuzz_model_load(&fuzz_eng.chat, &fuzz_eng.chat_ok);
    fuzz_srv.eng = &fuzz_eng;
    fuzz_srv.cfg.model = fuzz_model_path();
    snprintf(fuzz_srv.model_id, sizeof fuzz_srv.model_id, "SmolLM2-135M-Instruct");
    fuzz_srv.n_ctx = FUZZ_N_CTX;
    return 0;
}

static void fuzz_parse(const char *body, size_t n, enum srv_kind kind) {
    struct srv_gen g;
    struct srv_err e;
    memset(&e, 0, sizeof e);
    json_t *root = NULL;
    int rc = srv_api_parse(&fuzz_srv, kind, body, n, &g, &root, &e);
    if (rc == 0) {
        if (g.n_prompt < 1 || g.n_prompt >= FUZZ_N_CTX || !g.prompt) abort();
        for (int i = 0; i < g.n_prompt; i++)
            if (g.prompt[i] < 0 || g.prompt[i] >= tok_n_vocab(fuzz_eng.tok)) abort();
        if (g.n_stop < 0 || g.n_stop > ENG_TEXTOUT_MAX_STOP || g.max_tokens < 0) abort();
        for (int i = 0; i < g.n_stop; i++)
            if (strlen(g.stop[i]) > ENG_TEXTOUT_MAX_STOP_LEN) abort();
        if (g.n_choices < 1 || g.n_choices > SRV_MAX_CHOICES) abort();
        if (g.logprobs < -1 || g.logprobs > (kind == SRV_CHAT ? ENG_LOGPROBS_MAX_TOP : SRV_MAX_COMPLETION_LOGPROBS))
            abort();
        if (g.echo != (g.echo_text != NULL) || (g.echo && kind == SRV_CHAT)) abort();
        /* What the handler does next with an accepted request. */
        int room = FUZZ_N_CTX - g.n_prompt;
        int max_tokens = g.max_tokens > 0 && g.max_tokens < room ? g.max_tokens : room;
        struct eng_sched_req *job = NULL;
        if (eng_sched_req_init(&job, fuzz_eng.tok, g.prompt, g.n_prompt, max_tokens, &g.sp, g.stop, g.n_stop))
            abort();
        if (g.logprobs >= 0 && eng_sched_req_want_logprobs(job, g.logprobs, g.echo)) abort();
        eng_sched_req_free(job);
    } else if (e.code >= 0 || !e.msg[0]) {
        abort();   /* a refusal always carries an ENG_E_* code and a message */
    } else {
        free(srv_err_json(&e));
    }
    srv_gen_free(&g);
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *body = malloc(size ? size : 1);   /* exactly size bytes, as MHD hands them over */
    if (!body) return 0;
    memcpy(body, data, size);
    fuzz_parse(body, size, SRV_CHAT);
    fuzz_parse(body, size, SRV_COMPLETION);
    free(body);
    return 0;
}
