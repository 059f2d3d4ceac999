/* engine.c — opening and closing the pieces of engine.h in the right order. */
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/load/gguf.h"
#include "engine/log.h"
#include "engine/load/tokenizer.h"

int eng_device_parse(const char *s) {
    if (!strcmp(s, "auto")) return ENG_DEVICE_AUTO;
    if (!strcmp(s, "cpu")) return ENG_DEVICE_CPU;
    if (!strcmp(s, "cuda")) return ENG_DEVICE_CUDA;
    return -1;
}

/* The backend p->device asks for.  Only CUDA and auto make a CUDA call, so a
 * CUDA-enabled build runs on a machine without a GPU or driver. */
static int engine_backend_open(struct eng_backend *be, const struct eng_engine_params *p, char *err, size_t cap) {
    int dev = p->device;
    if (dev == ENG_DEVICE_AUTO) {
        char cerr[256] = "";
        if (eng_backend_cuda_count() > 0) {
            if (eng_backend_cuda_init(be, 0, cerr, sizeof cerr) == 0) return 0;
            LOG_WARN("--device auto: %s; running on the CPU", cerr);
        } else {
            eng_backend_cuda_init(be, 0, cerr, sizeof cerr);   /* says why: no GPU, or no CUDA in this build */
            LOG_INFO("--device auto: %s; running on the CPU", cerr);
        }
        dev = ENG_DEVICE_CPU;
    }
    if (dev == ENG_DEVICE_CUDA) {
        char cerr[256] = "";
        int rc = eng_backend_cuda_init(be, 0, cerr, sizeof cerr);
        if (rc) snprintf(err, cap, "--device cuda: %s", cerr[0] ? cerr : eng_err_msg(rc));
        return rc;
    }
    if (dev != ENG_DEVICE_CPU) {
        snprintf(err, cap, "unknown device %d", p->device);
        return ENG_E_INVALID;
    }
    int rc = eng_backend_cpu_init(be, p->n_threads > 0 ? p->n_threads : 1);
    if (rc) snprintf(err, cap, "cannot start %d CPU threads", p->n_threads);
    return rc;
}

int eng_engine_open(struct eng_engine **out, const struct eng_engine_params *p, char *err, size_t cap) {
    *out = NULL;
    err[0] = 0;
    struct eng_engine *e = calloc(1, sizeof *e);
    if (!e) return ENG_E_NOMEM;
    int rc = engine_backend_open(&e->be, p, err, cap);
    if (rc) goto err;
    if ((rc = eng_model_load(&e->model, p->model_path, &e->be, err, cap))) goto err;
    if ((rc = tok_load(&e->tok, e->model->gguf, err, cap))) goto err;
    if (tok_n_vocab(e->tok) > e->model->hp.n_vocab) {
        snprintf(err, cap, "%s: the tokenizer has %d tokens but token_embd.weight only %d rows", p->model_path,
                 tok_n_vocab(e->tok), e->model->hp.n_vocab);
        rc = ENG_E_FORMAT;
        goto err;
    }
    if (p->chat_template) {
        if (chat_template_by_name(p->chat_template, &e->chat)) {
            snprintf(err, cap, "unknown chat template '%s' (chatml, vicuna, llama2, llama3, zephyr)", p->chat_template);
            rc = ENG_E_INVALID;
            goto err;
        }
        e->chat_ok = 1;
    } else {
        const struct gguf_str *src;
        char cerr[256] = "";
        if (gguf_get_str(e->model->gguf, "tokenizer.chat_template", &src, cerr, sizeof cerr) == 0 &&
            chat_template_detect(src->s, &e->chat, cerr, sizeof cerr) == 0) {
            e->chat_ok = 1;
        } else {
            LOG_WARN("%s: no usable chat template (%s); chat requests need --chat-template NAME",
                     p->model_path, cerr[0] ? cerr : "none in the file");
        }
    }
    if (e->chat_ok) {
        /* The template's bos_token / eos_token are the vocabulary's texts. */
        const char *bos = tok_text(e->tok, tok_bos(e->tok), NULL);
        const char *eos = tok_text(e->tok, tok_eos(e->tok), NULL);
        if (chat_template_set_tokens(&e->chat, bos, eos))
            LOG_WARN("%s: BOS/EOS token text too long for the chat template; using the family's", p->model_path);
    }
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (e->model->hp.n_ctx_train < 4096 ? e->model->hp.n_ctx_train : 4096);
    int n_slot = p->n_slot > 0 ? p->n_slot : 1;
    const struct eng_hparams *hp = &e->model->hp;
    if ((rc = eng_kv_init(&e->kv, &e->be, hp->n_layer, n_slot, n_ctx, hp->n_head_kv * hp->head_dim))) {
        snprintf(err, cap, "cannot allocate the KV cache (%.1f MB for %d slots of %d entries)",
                 eng_kv_bytes(hp->n_layer, n_slot, n_ctx, hp->n_head_kv * hp->head_dim) / 1e6, n_slot, n_ctx);
        goto err;
    }
    if ((rc = eng_forward_init(&e->fwd, e->model, p->max_rows > 0 ? p->max_rows : 256))) {
        snprintf(err, cap, "cannot allocate forward scratch for %d rows", p->max_rows);
        goto err;
    }
    *out = e;
    return 0;
err:
    if (!err[0]) snprintf(err, cap, "%s", eng_err_msg(rc));
    eng_engine_close(e);
    return rc;
}

void eng_engine_close(struct eng_engine *e) {
    if (!e) return;
    eng_forward_free(&e->fwd);
    eng_kv_free(&e->kv);
    tok_free(e->tok);
    eng_model_free(e->model);
    eng_backend_free(&e->be);
    free(e);
}

int eng_engine_text_tokens(const struct eng_engine *e, const char *text, int32_t **ids, int *n_ids) {
    return tok_encode_alloc(e->tok, text, strlen(text), tok_add_bos(e->tok), true, ids, n_ids);
}

int eng_engine_chat_tokens(const struct eng_engine *e, const struct chat_msg *msgs, int n, int32_t **ids,
                           int *n_ids, char *err, size_t cap) {
    if (!e->chat_ok) {
        snprintf(err, cap, "the model has no chat template ppd can render; pass --chat-template NAME");
        return ENG_E_UNSUPPORTED;
    }
    char *text = NULL;
    int rc = chat_render(&e->chat, msgs, n, true, &text, err, cap);
    if (rc) return rc;
    /* The template writes BOS text itself when it wants one; the tokenizer's
     * add_bos applies only when the template does not. */
    bool add_bos = tok_add_bos(e->tok) && !e->chat.emits_bos;
    rc = tok_encode_alloc(e->tok, text, strlen(text), add_bos, true, ids, n_ids);
    free(text);
    if (rc) snprintf(err, cap, "cannot tokenize the rendered prompt: %s", eng_err_msg(rc));
    return rc;
}
