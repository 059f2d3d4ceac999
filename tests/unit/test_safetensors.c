/* test_safetensors.c — the safetensors reader: files written by the real
 * `safetensors` package (tests/golden/gen_peft_adapter.py) read back value for
 * value; F16/BF16 widening checked over all 65536 bit patterns against an
 * independent formula; a table of broken headers, every prefix of a small file
 * and of a golden file, and random byte flips give ENG_E_FORMAT with the file
 * name, never a crash. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/err.h"
#include "engine/load/safetensors.h"

#define GOLDEN "tests/golden/data/peft/"
#define ERR_CAP 512

static void *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* A file from a header string (8-byte length added) and data bytes. */
static uint8_t *make_file(const char *header, const void *data, size_t data_size, size_t *size) {
    size_t n = strlen(header);
    *size = 8 + n + data_size;
    uint8_t *b = malloc(*size);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    if (data_size) memcpy(b + 8 + n, data, data_size);
    return b;
}

/* ---- golden files ---- */

static void check_golden(const char *dir, enum st_dtype want) {
    char path[256], err[ERR_CAP];
    snprintf(path, sizeof path, GOLDEN "%s/adapter_model.safetensors", dir);
    struct st_file *f;
    int rc = st_open(&f, path, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(f->n_tensors, 1);
    const struct st_tensor *t = st_find_tensor(f, "prompt_embeddings");
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_null(st_find_tensor(f, "prompt"));
    ck_assert_int_eq(t->dtype, want);
    ck_assert_int_eq(t->n_dims, 2);
    ck_assert_uint_eq(t->shape[0], 3);
    ck_assert_uint_eq(t->shape[1], 576);
    ck_assert_uint_eq(t->n_elem, 3 * 576);
    ck_assert_str_eq(st_meta_get(f, "format"), "pt");
    ck_assert_ptr_null(st_meta_get(f, "missing"));
    ck_assert_uint_eq(f->data_offset % 8, 0);   /* the writer pads the header with spaces */
    float *got = malloc(sizeof(float) * 3 * 576);
    ck_assert_int_eq(st_tensor_to_f32(f, t, got, t->n_elem, err, sizeof err), 0);
    ck_assert_int_eq(st_tensor_to_f32(f, t, got, t->n_elem - 1, err, sizeof err), ENG_E_INVALID);
    snprintf(path, sizeof path, GOLDEN "%s/expected.f32", dir);
    size_t n;
    float *exp = read_all(path, &n);
    ck_assert_uint_eq(n, sizeof(float) * 3 * 576);
    int bad = 0;
    for (int i = 0; i < 3 * 576; i++) bad += memcmp(&got[i], &exp[i], sizeof(float)) != 0;
    printf("%s: %d of %d values differ from numpy's (bitwise)\n", dir, bad, 3 * 576);
    ck_assert_int_eq(bad, 0);
    free(exp);
    free(got);
    st_close(f);
}

START_TEST(test_golden_f32) { check_golden("f32", ST_F32); }
END_TEST

START_TEST(test_golden_f16) { check_golden("f16", ST_F16); }
END_TEST

START_TEST(test_golden_bf16) { check_golden("bf16", ST_BF16); }
END_TEST

/* ---- conversions ---- */

/* Every half against sign * (exp ? 1024 + mant : mant) * 2^(max(exp, 1) - 25),
 * computed in double (exact) and rounded once to float (exact as well). */
START_TEST(test_f16_all_values) {
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
        float got = st_f16_to_f32((uint16_t)h);
        uint32_t gb;
        memcpy(&gb, &got, 4);
        ck_assert_msg((gb >> 31) == (h >> 15), "h=%04x sign", h);
        if (exp == 0x1f) {
            ck_assert_msg(mant ? isnan(got) : isinf(got), "h=%04x", h);
            ck_assert_uint_eq(gb & 0x7fffff, mant << 13);   /* NaN payload kept */
            continue;
        }
        double want = ldexp(exp ? 1024.0 + mant : (double)mant, (exp ? (int)exp : 1) - 25);
        if (h >> 15) want = -want;
        ck_assert_msg(got == (float)want, "h=%04x: %.10g, want %.10g", h, got, want);
    }
    ck_assert(st_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(st_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(st_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(st_f16_to_f32(0x03ff) == 0x3ffp-24f);
    ck_assert(st_f16_to_f32(0xc000) == -2.0f);
}
END_TEST

START_TEST(test_bf16_values) {
    for (uint32_t h = 0; h < 65536; h++) {
        float got = st_bf16_to_f32((uint16_t)h);
        uint32_t gb;
        memcpy(&gb, &got, 4);
        ck_assert_uint_eq(gb, h << 16);
    }
    ck_assert(st_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(st_bf16_to_f32(0xc040) == -3.0f);
    ck_assert(st_bf16_to_f32(0x0001) == 0x1p-133f);   /* smallest subnormal */
    ck_assert(isinf(st_bf16_to_f32(0x7f80)));
}
END_TEST

/* ---- a small hand-made file ---- */

static const char small_header[] =
    "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
    "\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
    "\"c\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[16,20]},"
    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[20,20]},"
    "\"d\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[20,24]}}    ";

static uint8_t *small_file(size_t *size) {
    static const uint16_t a[6] = {0x3c00, 0xc000, 0x0001, 0x8000, 0x7bff, 0x3555};
    static const uint16_t bb[2] = {0x3f80, 0x4049};
    uint8_t data[24];
    for (int i = 0; i < 6; i++) { data[2 * i] = (uint8_t)a[i]; data[2 * i + 1] = (uint8_t)(a[i] >> 8); }
    for (int i = 0; i < 2; i++) { data[12 + 2 * i] = (uint8_t)bb[i]; data[13 + 2 * i] = (uint8_t)(bb[i] >> 8); }
    int32_t c = -7;
    float d = 0.375f;
    memcpy(data + 16, &c, 4);
    memcpy(data + 20, &d, 4);
    return make_file(small_header, data, sizeof data, size);
}

START_TEST(test_small_file) {
    size_t size;
    uint8_t *buf = small_file(&size);
    struct st_file *f;
    char err[ERR_CAP];
    ck_assert_msg(st_parse(&f, buf, size, "small.st", err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(f->n_tensors, 5);
    ck_assert_str_eq(f->tensors[0].name, "a");   /* header order */
    ck_assert_str_eq(f->tensors[4].name, "d");
    ck_assert_str_eq(st_meta_get(f, "note"), "x");
    float out[6];
    const struct st_tensor *t = st_find_tensor(f, "a");
    ck_assert_int_eq(st_tensor_to_f32(f, t, out, 6, err, sizeof err), 0);
    const float want_a[6] = {1.0f, -2.0f, 0x1p-24f, -0.0f, 65504.0f, 0x1.554p-2f};
    ck_assert_int_eq(memcmp(out, want_a, sizeof want_a), 0);
    t = st_find_tensor(f, "b");
    ck_assert_int_eq(st_tensor_to_f32(f, t, out, 2, err, sizeof err), 0);
    ck_assert(out[0] == 1.0f && out[1] == 3.140625f);
    t = st_find_tensor(f, "c");
    ck_assert_int_eq(t->n_dims, 0);
    ck_assert_uint_eq(t->n_elem, 1);
    ck_assert_int_eq(st_tensor_to_f32(f, t, out, 1, err, sizeof err), ENG_E_UNSUPPORTED);
    ck_assert_msg(strstr(err, "I32") != NULL, "%s", err);
    t = st_find_tensor(f, "e");
    ck_assert_uint_eq(t->n_elem, 0);
    ck_assert_int_eq(st_tensor_to_f32(f, t, out, 0, err, sizeof err), 0);
    t = st_find_tensor(f, "d");
    ck_assert_int_eq(st_tensor_to_f32(f, t, out, 1, err, sizeof err), 0);
    ck_assert(out[0] == 0.375f);
    ck_assert_str_eq(st_dtype_name(ST_BF16), "BF16");
    ck_assert_str_eq(st_dtype_name((enum st_dtype)99), "?");
    ck_assert_uint_eq(st_dtype_size(ST_F64), 8);
    st_close(f);
    st_close(NULL);
    free(buf);
}
END_TEST

/* Broken headers: each gives ENG_E_FORMAT and a message naming the field. */
START_TEST(test_bad_headers) {
    static const struct { const char *header; size_t data; const char *want; } cases[] = {
        {"{\"t\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype: unknown"},
        {"{\"t\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype: unknown"},
        {"{\"t\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype: not a string"},
        {"{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype: missing"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 12, "needs 12"},
        {"{\"t\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,6]}}", 8, "needs 8"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "past the data area"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 8, "past the data area"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "is after end"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, "data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8, "data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets: missing"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, "shape: not an array"},
        {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape: missing"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "dimensions"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", 8, "overflows"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8, "overflows"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, "JSON"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "JSON"},
        {"{\"t\":[1,2]}", 0, "not a JSON object"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "empty name"},
        {"{\"__metadata__\":{\"format\":1}}", 0, "__metadata__: format"},
        {"{\"__metadata__\":[\"pt\"]}", 0, "__metadata__: not"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "JSON"},
        {"{\"t\" 1}", 0, "JSON"},
        {"[]", 0, "does not start"},
        {" {}", 0, "does not start"},
        {"{", 0, "header length"},
    };
    char err[ERR_CAP];
    uint8_t zeros[16] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t size;
        uint8_t *buf = make_file(cases[i].header, zeros, cases[i].data, &size);
        struct st_file *f = (struct st_file *)1;
        int rc = st_parse(&f, buf, size, "bad.st", err, sizeof err);
        ck_assert_msg(rc == ENG_E_FORMAT, "case %zu: got %s (%s)", i, eng_err_name(rc), err);
        ck_assert_ptr_null(f);
        ck_assert_msg(!strncmp(err, "bad.st: ", 8), "case %zu: %s", i, err);
        ck_assert_msg(strstr(err, cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
        free(buf);
    }
    /* the header length itself */
    struct st_file *f;
    uint8_t b[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    ck_assert_int_eq(st_parse(&f, b, 10, "len.st", err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, "header length") != NULL, "%s", err);
    memset(b, 0, 8);
    ck_assert_int_eq(st_parse(&f, b, 10, "len.st", err, sizeof err), ENG_E_FORMAT);   /* length 0 */
    b[0] = 2;
    ck_assert_int_eq(st_parse(&f, b, 10, "len.st", err, sizeof err), 0);   /* "{}": no tensors */
    ck_assert_int_eq(f->n_tensors, 0);
    st_close(f);
    b[9] = 0;   /* a NUL inside the JSON */
    ck_assert_int_eq(st_parse(&f, b, 10, "len.st", err, sizeof err), ENG_E_FORMAT);
    /* an empty tensor may sit anywhere, even inside another's bytes */
    size_t size;
    uint8_t *ok = make_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", zeros, 8, &size);
    ck_assert_msg(st_parse(&f, ok, size, "ok.st", err, sizeof err) == 0, "%s", err);
    st_close(f);
    free(ok);
}
END_TEST

/* Every prefix shorter than the file fails cleanly (the last tensor ends at
 * the end of the file). */
static void every_prefix(const uint8_t *buf, size_t size, const char *name) {
    char err[ERR_CAP];
    size_t name_len = strlen(name);
    for (size_t len = 0; len <= size; len++) {
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        struct st_file *f = (struct st_file *)1;
        int rc = st_parse(&f, exact, len, name, err, sizeof err);
        if (len < size) {
            ck_assert_msg(rc == ENG_E_FORMAT, "prefix %zu: got %s", len, eng_err_name(rc));
            ck_assert_msg(!strncmp(err, name, name_len) && err[name_len] == ':', "prefix %zu: %s", len, err);
            ck_assert_ptr_null(f);
        } else {
            ck_assert_msg(rc == 0, "prefix %zu: %s", len, err);
            st_close(f);
        }
        free(exact);
    }
}

START_TEST(test_every_prefix) {
    size_t size;
    uint8_t *buf = small_file(&size);
    every_prefix(buf, size, "prefix.st");
    free(buf);
    buf = read_all(GOLDEN "f16/adapter_model.safetensors", &size);
    every_prefix(buf, size, "golden.st");
    free(buf);
}
END_TEST

/* Random byte flips (mostly in the header): an error with the file name, or a
 * file whose every tensor lies inside the buffer with a consistent size. */
START_TEST(test_random_flips) {
    char err[ERR_CAP];
    size_t size;
    uint8_t *buf = small_file(&size);
    struct st_file *f;
    ck_assert_int_eq(st_parse(&f, buf, size, "flip.st", err, sizeof err), 0);
    size_t header = (size_t)f->data_offset;
    st_close(f);
    uint32_t x = 12345;
    int n_ok = 0;
    for (int iter = 0; iter < 5000; iter++) {
        uint8_t *copy = malloc(size);
        memcpy(copy, buf, size);
        int flips = 1 + iter % 3;
        for (int k = 0; k < flips; k++) {
            x = x * 1664525u + 1013904223u;
            size_t pos = (x >> 8) % (iter % 8 ? header : size);
            x = x * 1664525u + 1013904223u;
            copy[pos] ^= (uint8_t)(1u << ((x >> 13) % 8));
        }
        int rc = st_parse(&f, copy, size, "flip.st", err, sizeof err);
        if (rc) {
            ck_assert_msg(rc == ENG_E_FORMAT, "iter %d: %s", iter, eng_err_name(rc));
            ck_assert_msg(!strncmp(err, "flip.st: ", 9), "iter %d: %s", iter, err);
        } else {
            n_ok++;
            float out[8];
            for (int i = 0; i < f->n_tensors; i++) {
                const struct st_tensor *t = &f->tensors[i];
                ck_assert((const uint8_t *)t->data >= copy + f->data_offset);
                ck_assert((const uint8_t *)t->data + (t->end - t->begin) <= copy + size);
                ck_assert_uint_eq(t->end - t->begin, t->n_elem * st_dtype_size(t->dtype));
                ck_assert(st_find_tensor(f, t->name) != NULL);
                if (t->n_elem <= 8) st_tensor_to_f32(f, t, out, t->n_elem, err, sizeof err);
            }
            st_close(f);
        }
        free(copy);
    }
    printf("random flips: %d of 5000 files still valid\n", n_ok);
    ck_assert(n_ok > 0);   /* flips in the data area and in metadata values leave a valid file */
    free(buf);
}
END_TEST

START_TEST(test_open_errors) {
    char err[ERR_CAP];
    struct st_file *f = (struct st_file *)1;
    ck_assert_int_eq(st_open(&f, "/nonexistent-dir-ppd/a.safetensors", err, sizeof err), ENG_E_IO);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err, "/nonexistent-dir-ppd/a.safetensors") != NULL, "%s", err);
    ck_assert_int_eq(st_open(&f, "tests", err, sizeof err), ENG_E_IO);
    char path[] = "/tmp/ppd-st-empty-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(st_open(&f, path, err, sizeof err), ENG_E_FORMAT);   /* empty file */
    ck_assert_msg(strstr(err, path) != NULL, "%s", err);
    unlink(path);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_golden_f32);
    tcase_add_test(tc, test_golden_f16);
    tcase_add_test(tc, test_golden_bf16);
    tcase_add_test(tc, test_f16_all_values);
    tcase_add_test(tc, test_bf16_values);
    tcase_add_test(tc, test_small_file);
    tcase_add_test(tc, test_bad_headers);
    tcase_add_test(tc, test_every_prefix);
    tcase_add_test(tc, test_random_flips);
    tcase_add_test(tc, test_open_errors);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
