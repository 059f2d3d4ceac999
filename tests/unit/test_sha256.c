/* test_sha256.c — engine/sha256 against the FIPS 180-2 example vectors
 * (empty, "abc", the 448-bit message, a million 'a'), lengths around the
 * padding boundary (55, 56, 63, 64, 119 bytes; digests from Python's hashlib),
 * and streaming in uneven pieces giving the one-shot digest. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/load/sha256.h"

static void check_hex(const void *data, size_t n, const char *want) {
    char got[ENG_SHA256_HEX];
    eng_sha256_hex(data, n, got);
    ck_assert_msg(strcmp(got, want) == 0, "%zu bytes: got %s want %s", n, got, want);
}

START_TEST(test_fips_vectors) {
    check_hex("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_hex("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_hex(m, strlen(m), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *a = malloc(1000000);
    ck_assert_ptr_nonnull(a);
    memset(a, 'a', 1000000);
    check_hex(a, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}
END_TEST

START_TEST(test_padding_boundaries) {
    static const struct { size_t n; const char *hex; } v[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
    };
    char a[128];
    memset(a, 'a', sizeof a);
    for (unsigned i = 0; i < sizeof v / sizeof v[0]; i++) check_hex(a, v[i].n, v[i].hex);
}
END_TEST

START_TEST(test_streaming) {
    /* bytes 0..255 three times (hashlib: f3a25aa9...), fed in pieces of 1, 2, 3, ... bytes */
    unsigned char m[768];
    for (int i = 0; i < 768; i++) m[i] = (unsigned char)i;
    check_hex(m, sizeof m, "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363");
    uint8_t one[ENG_SHA256_BYTES], pieces[ENG_SHA256_BYTES];
    struct eng_sha256 s;
    eng_sha256_init(&s);
    eng_sha256_update(&s, m, sizeof m);
    eng_sha256_final(&s, one);
    eng_sha256_init(&s);
    for (size_t off = 0, k = 1; off < sizeof m; off += k, k++)
        eng_sha256_update(&s, m + off, k < sizeof m - off ? k : sizeof m - off);
    eng_sha256_final(&s, pieces);
    ck_assert_mem_eq(one, pieces, ENG_SHA256_BYTES);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sha256");
    TCase *tc = tcase_create("sha256");
    tcase_add_test(tc, test_fips_vectors);
    tcase_add_test(tc, test_padding_boundaries);
    tcase_add_test(tc, test_streaming);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
