/* attention.h — softmax(q·Kᵀ·scale)·V for the query vectors that share one
 * K/V head, over lists of cache entries.
 *
 * The unit of work is a task: n_row rows × a run of query heads (under GQA
 * several query heads read one KV head).  Every row of a task sees the same
 * `shared` entries first (a slot's committed prefix, plus any entries of the
 * step that all its rows see), then a list of its own.  A task walks the
 * entries once, in order, for all its queries (an entry's KV heads lie side by
 * side, so this reads memory front to back), and keeps several queries' sums
 * in registers.
 *
 * Bit-identity, the property the lossless decoding relies on: the output of a
 * (row, head) depends only on its query vector and on its list of entries
 * (shared then own, in order), never on which other queries share the task,
 * how the list is split into shared and own, or whether the AVX2 path runs.
 * Per (row, head) the arithmetic is exactly kq_attn_run_ref's:
 *   s[i] = kq_dot_f32(q, K[e_i], head_dim) * scale    for the entries e_i in order,
 *   p = kq_softmax(s),
 *   out = 0, then out[d] += p[i] * V[e_i][d] for i in order (kq_axpy_f32).
 *
 * Not here: which rows form a task, threads, the KV cache layout, masks
 * (the caller turns a batch into tasks; backend_cpu.c).
 */
#ifndef PPD_ATTENTION_H
#define PPD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* Most queries (n_row * n_head) one task may hold on the fast path. */
#define KQ_ATTN_MAX_QUERIES 128

struct kq_attn_task {
    const float *k, *v;          /* entry e, KV head h at k + e * kv_stride + h * head_dim (v likewise) */
    size_t kv_stride;            /* floats from one entry to the next */
    int head_dim;
    float scale;
    int n_rep;                   /* query heads per KV head: query head hq reads KV head hq / n_rep */
    int head0, n_head;           /* the task's query heads: head0 .. head0 + n_head - 1 */
    const float *q;              /* query (row r, head hq) at q + r * q_stride + hq * head_dim */
    size_t q_stride;
    float *out;                  /* output (row r, head hq) at out + r * out_stride + hq * head_dim */
    size_t out_stride;
    int n_row;
    const int32_t *shared;       /* [n_shared] entries every row sees first, in order */
    int n_shared;
    const int32_t *const *own;   /* [n_row] each row's further entries, in order; NULL: none */
    const int *n_own;            /* [n_row] their counts; NULL: none */
};

/* Floats of scratch a task of n_query queries (n_row * n_head) with at most
 * n_keys entries per row (shared + own) needs. */
size_t kq_attn_scratch_floats(int n_query, int n_keys);

/* Compute the task's outputs (AVX2 when the CPU has it, head_dim % 8 == 0 and
 * n_row * n_head <= KQ_ATTN_MAX_QUERIES; else the plain path).  A row that
 * sees no entry gets zeros. */
void kq_attn_run(const struct kq_attn_task *t, float *scratch);

/* The plain C definition, one (row, head) at a time; identical results. */
void kq_attn_run_ref(const struct kq_attn_task *t, float *scratch);

#endif
