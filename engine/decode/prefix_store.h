/* prefix_store.h — the prefix cache's second level: a hashed, size-limited
 * store of KV blocks copied out of the slots.
 *
 * Design note.  The scheduler's first level is the slots themselves (sched.h:
 * a free slot keeps the entries of the last request that used it), so it holds
 * at most one prefix per slot, and a conversation whose slot is taken by
 * another request loses its entries.  This store keeps such entries as copies,
 * in fixed blocks of ENG_PSTORE_BLOCK (32) positions, indexed as vLLM's
 * automatic prefix caching indexes its blocks:
 *   - a block holds its 32 token ids, its chained hash (the hash of its
 *     parent's hash and its own tokens; block 0 of a chain hashes from a fixed
 *     seed), its parent's index, and the K and V entries of its 32 positions
 *     in every layer, in backend memory;
 *   - a lookup walks a prompt block by block through a chained hash table and
 *     accepts a block only when its stored tokens equal the prompt's and its
 *     parent is the block found one step earlier, so a hash collision costs a
 *     comparison, never a wrong entry.  The hash only spreads the table; any
 *     function would do, and tests make every block collide (hash_mask);
 *   - a block is referenced by each of its children and pinned while a
 *     lookup's result waits to be copied; only unreferenced blocks (the
 *     leaves of the chains) are evicted, least recently used first, so every
 *     chain held is whole from block 0 and a lookup that stops early has
 *     still found the longest cached prefix.
 * The attention kernels read a slot's entries contiguously, so blocks are
 * never shared in place: a hit copies the chain's blocks into the request's
 * slot.  Block b of a chain goes to entries [32 b, 32 b + 32) of the slot: the
 * same absolute positions, so K (stored after RoPE) is identical, and a KV
 * entry depends only on the tokens up to it, so the copy equals a prefill.
 *
 * When: the scheduler stores a free slot's kept entries (their full blocks,
 * skipping blocks already held) just before a new request overwrites entries
 * that would otherwise be lost, and never at a request's finish: a finished
 * request's entries stay in its slot, where the next turn of its conversation
 * usually finds them at no cost, so copying at every finish would copy most
 * entries for nothing.  Copying at eviction copies only what the slot level
 * is about to lose.  Blocks are copied with the backend's buf_copy, one call
 * per layer for K and one for V (a memcpy of 32 * kv_dim floats on the CPU).
 *
 * Size: max_bytes of K and V entries, a whole number of blocks (the token ids
 * and links, 32 * 4 + 32 bytes a block, are not counted).  The memory is
 * allocated once at init; on the CPU backend that is calloc, whose pages the
 * system provides only as blocks are first written.  Eviction scans the
 * blocks for the least recently used leaf: one pass over `cap` blocks per
 * block stored when full, far below the cost of the copy itself.
 *
 * Not here: when to look up and which slot a request takes (sched.c).  One
 * thread (the scheduler's) uses a store.
 */
#ifndef PPD_PREFIX_STORE_H
#define PPD_PREFIX_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/kv_cache.h"

#define ENG_PSTORE_BLOCK 32

struct eng_pstore {
    const struct eng_kv *kv;         /* the slots blocks are copied from and to (not owned) */
    int cap;                         /* blocks the memory holds (0: the store is off) */
    int n_used;                      /* blocks held */
    size_t block_bytes;              /* K and V bytes of one block, every layer */
    float *k, *v;                    /* (cap, n_layer, BLOCK, kv_dim), backend memory */
    int32_t *tok;                    /* (cap, BLOCK) each block's token ids */
    uint64_t *hash;                  /* [cap] chained hash */
    int *parent;                     /* [cap] parent block, -1 for block 0 of a chain */
    int *ref;                        /* [cap] children + pins */
    long long *stamp;                /* [cap] last use (LRU) */
    int *next;                       /* [cap] next in its hash bucket, or in the free list */
    unsigned char *used;             /* [cap] 1: holds a block */
    int *bucket;                     /* [n_bucket] first block of each bucket, -1: empty */
    int n_bucket;                    /* a power of two */
    int free_head;                   /* first free block, -1: none */
    long long clock;
    int *walk;                       /* [max_seq / BLOCK] the blocks of the last match */
    int n_walk, pinned;              /* the last match's length; its last block is pinned (-1: none) */
    uint64_t hash_mask;              /* every hash is ANDed with it: ~0, tests set 0 to make all collide */
    long long n_stored, n_evicted;   /* cumulative blocks copied in, and evicted */
};

/* Bytes of one block of this cache's layout. */
size_t eng_pstore_block_bytes(const struct eng_kv *kv);

/* A store of max_bytes / eng_pstore_block_bytes(kv) blocks, in kv's backend.
 * Fewer bytes than one block: a store that holds nothing (cap 0), not an
 * error.  ENG_E_NOMEM. */
int eng_pstore_init(struct eng_pstore *ps, const struct eng_kv *kv, size_t max_bytes);
void eng_pstore_free(struct eng_pstore *ps);   /* accepts NULL and a zeroed store */

/* How many leading full blocks of tok[0, n) the store holds (only blocks that
 * end at or before n count).  No side effect. */
int eng_pstore_peek(const struct eng_pstore *ps, const int32_t *tok, int n);

/* The same, and the match is kept for eng_pstore_take: its blocks become the
 * most recently used and its last block is pinned, so nothing stored before
 * the take evicts them.  Every match is followed by one take or drop. */
int eng_pstore_match(struct eng_pstore *ps, const int32_t *tok, int n);
/* Copy blocks [b0, nb) of the last match (nb <= its length) into entries
 * [b0 * BLOCK, nb * BLOCK) of `slot`, then release the pin. */
void eng_pstore_take(struct eng_pstore *ps, int slot, int b0, int nb);
/* Release the last match without copying. */
void eng_pstore_drop(struct eng_pstore *ps);

/* Store the full blocks of entries [0, n) of `slot`, whose tokens are
 * tok[0, n): those held already are found and touched, the others copied in,
 * evicting least recently used leaves when the store is full.  Stops at the
 * first block that finds no room (every block pinned or referenced), so what
 * is held stays whole.  Returns the blocks copied in. */
int eng_pstore_save(struct eng_pstore *ps, int slot, const int32_t *tok, int n);

#endif
