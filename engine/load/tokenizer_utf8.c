/* tokenizer_utf8.c — one code point out of UTF-8 bytes, leniently as
 * llama.cpp reads them, and one code point into UTF-8. */
#include "engine/load/tokenizer_utf8.h"

uint32_t tok_utf8_next_lenient(const unsigned char *s, size_t n, size_t *i) {
    /* llama.cpp's unicode_cpt_from_utf8: the lead byte fixes the length, the
     * continuation bytes are checked for 10xxxxxx only (no overlong check) */
    size_t p = *i;
    unsigned c = s[p];
    if (!(c & 0x80)) {
        *i = p + 1;
        return c;
    }
    if ((c & 0x40) && !(c & 0x20)) {
        if (p + 1 < n && (s[p + 1] & 0xc0) == 0x80) {
            *i = p + 2;
            return ((c & 0x1fu) << 6) | (s[p + 1] & 0x3fu);
        }
    } else if ((c & 0x40) && !(c & 0x10)) {
        if (p + 2 < n && (s[p + 1] & 0xc0) == 0x80 && (s[p + 2] & 0xc0) == 0x80) {
            *i = p + 3;
            return ((c & 0x0fu) << 12) | ((s[p + 1] & 0x3fu) << 6) | (s[p + 2] & 0x3fu);
        }
    } else if ((c & 0x40) && !(c & 0x08)) {
        if (p + 3 < n && (s[p + 1] & 0xc0) == 0x80 && (s[p + 2] & 0xc0) == 0x80 && (s[p + 3] & 0xc0) == 0x80) {
            *i = p + 4;
            return ((c & 0x07u) << 18) | ((s[p + 1] & 0x3fu) << 12) | ((s[p + 2] & 0x3fu) << 6) | (s[p + 3] & 0x3fu);
        }
    }
    *i = p + 1;
    return 0xfffd;
}

size_t tok_utf8_put(uint32_t c, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xc0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | ((c >> 18) & 0x07));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (c & 0x3f));
    return 4;
}
