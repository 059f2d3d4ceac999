/* kv_cache.h — the per-slot key/value cache, one layout, one accessor.
 *
 * Layout (n_layer, n_slot, max_seq, kv_dim) for K and for V, f32, K stored
 * after RoPE.  Entries [0, len[slot]) of a slot are committed; a step writes its
 * rows after that and the caller commits (or, for PPD, compacts the accepted
 * rows to the front, in ascending order) afterwards.  Memory comes from the
 * backend, so on a GPU the cache lives on the device; the lengths stay on the
 * host.
 */
#ifndef PPD_KV_CACHE_H
#define PPD_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct eng_backend;

struct eng_kv {
    int n_layer, n_slot, max_seq, kv_dim;
    float *k;           /* (n_layer, n_slot, max_seq, kv_dim), backend memory */
    float *v;           /* same shape */
    int32_t *len;       /* [n_slot] committed entries, host memory */
    struct eng_backend *be;
};

int eng_kv_init(struct eng_kv *kv, struct eng_backend *be, int n_layer, int n_slot, int max_seq, int kv_dim);
void eng_kv_free(struct eng_kv *kv);   /* accepts NULL */

/* Element offset of entry `pos` of `slot` in `layer` (into k or v). */
static inline size_t eng_kv_offset(const struct eng_kv *kv, int layer, int slot, int pos) {
    return (((size_t)layer * (size_t)kv->n_slot + (size_t)slot) * (size_t)kv->max_seq + (size_t)pos) *
           (size_t)kv->kv_dim;
}

/* Bytes the cache takes. */
size_t eng_kv_bytes(int n_layer, int n_slot, int max_seq, int kv_dim);

#endif
