/* kv_cache.c — allocation of the KV cache in backend memory. */
#include "engine/model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model/backend.h"
#include "engine/err.h"

size_t eng_kv_bytes(int n_layer, int n_slot, int max_seq, int kv_dim) {
    return 2 * (size_t)n_layer * (size_t)n_slot * (size_t)max_seq * (size_t)kv_dim * sizeof(float);
}

int eng_kv_init(struct eng_kv *kv, struct eng_backend *be, int n_layer, int n_slot, int max_seq, int kv_dim) {
    memset(kv, 0, sizeof *kv);
    if (n_layer < 1 || n_slot < 1 || max_seq < 1 || kv_dim < 1) return ENG_E_RANGE;
    size_t half = eng_kv_bytes(n_layer, n_slot, max_seq, kv_dim) / 2;
    kv->n_layer = n_layer;
    kv->n_slot = n_slot;
    kv->max_seq = max_seq;
    kv->kv_dim = kv_dim;
    kv->be = be;
    kv->k = be->iface->buf_alloc(be->ctx, half);
    kv->v = be->iface->buf_alloc(be->ctx, half);
    kv->len = calloc((size_t)n_slot, sizeof *kv->len);
    if (!kv->k || !kv->v || !kv->len) {
        eng_kv_free(kv);
        return ENG_E_NOMEM;
    }
    return 0;
}

void eng_kv_free(struct eng_kv *kv) {
    if (!kv || !kv->be) return;
    if (kv->k) kv->be->iface->buf_free(kv->be->ctx, kv->k);
    if (kv->v) kv->be->iface->buf_free(kv->be->ctx, kv->v);
    free(kv->len);
    memset(kv, 0, sizeof *kv);
}
