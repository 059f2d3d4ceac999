/* sha256.h — SHA-256 (FIPS 180-4), streaming and one-shot.
 *
 * Used for provenance: `ppd distill` records the hash of its prompt file so a
 * resumed run (and the trainer) can tell the same input from another one.
 * Not a general crypto library: no HMAC, no constant-time guarantees needed
 * here (nothing secret is hashed).
 */
#ifndef PPD_SHA256_H
#define PPD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define ENG_SHA256_BYTES 32
#define ENG_SHA256_HEX (2 * ENG_SHA256_BYTES + 1)   /* hex digits plus NUL */

struct eng_sha256 {
    uint32_t h[8];        /* chaining state */
    uint64_t n_bytes;     /* message length so far */
    uint8_t buf[64];      /* the current partial block */
    size_t n_buf;         /* bytes held in buf, < 64 */
};

void eng_sha256_init(struct eng_sha256 *s);
void eng_sha256_update(struct eng_sha256 *s, const void *data, size_t n);
/* Pads, writes the digest; s must be re-initialised before reuse. */
void eng_sha256_final(struct eng_sha256 *s, uint8_t out[ENG_SHA256_BYTES]);

/* The digest of data[0..n) as 64 lower-case hex digits plus NUL. */
void eng_sha256_hex(const void *data, size_t n, char out[ENG_SHA256_HEX]);

#endif
