/* test_gguf.c — the GGUF reader and writer.
 *
 * A round trip through the writer of every value type and several tensor
 * types; a table of broken files made by editing the bytes of a good one (each
 * must fail with the right code and a message naming the file and the field);
 * every prefix of a small file and random byte flips (clean errors, never a
 * crash: run this binary under ASan); and the real default model.
 * It does not test the model loader or tokenizer, which read these values.
 */
#include "engine/err.h"
#include "engine/load/gguf.h"
#include "common/qtypes.h"

#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#define ERR_CAP 512

static char tmp_dir[PATH_MAX];

static const char *tmp_path(const char *name) {
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", tmp_dir, name);
    return buf;
}

static void fill_bytes(uint8_t *p, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint8_t)(x >> 24);
    }
}

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    ck_assert(buf != NULL);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *size = (size_t)n;
    return buf;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- round trip ---- */

struct tspec { const char *name; int type; uint32_t n_dims; int64_t ne[4]; };

static const struct tspec round_tensors[] = {
    {"t.f32", KQ_F32, 2, {8, 3, 1, 1}},
    {"t.f16", KQ_F16, 1, {33, 1, 1, 1}},
    {"t.bf16", KQ_BF16, 2, {7, 2, 1, 1}},
    {"t.q8_0", KQ_Q8_0, 2, {64, 3, 1, 1}},
    {"t.q4_0", KQ_Q4_0, 2, {32, 1, 1, 1}},
    {"t.q4_1", KQ_Q4_1, 3, {32, 5, 2, 1}},
    {"t.q4_k", KQ_Q4_K, 2, {256, 2, 1, 1}},
    {"t.q5_k", KQ_Q5_K, 1, {256, 1, 1, 1}},
    {"t.q6_k", KQ_Q6_K, 4, {512, 1, 3, 2}},
};
#define N_ROUND_TENSORS (sizeof round_tensors / sizeof round_tensors[0])

static size_t tspec_size(const struct tspec *t) {
    return kq_row_bytes(t->type, t->ne[0]) * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
}

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 65535};
static const int16_t arr_i16[] = {-32768, 32767, 5};
static const uint32_t arr_u32[] = {0, 4000000000u, 7};
static const int32_t arr_i32[] = {-5, 0, 2147483647, -2147483647 - 1};
static const float arr_f32[] = {1.5f, -0.25f, 1e-30f};
static const uint8_t arr_bool[] = {1, 0, 1, 1};
static const uint64_t arr_u64[] = {UINT64_MAX, 3};
static const int64_t arr_i64[] = {INT64_MIN, -1, INT64_MAX};
static const double arr_f64[] = {3.141592653589793, -2e300};
static const char *const arr_str[] = {"alpha", "", "\xc4\xa0 t", "z"};

static void write_round_file(const char *path, uint32_t alignment) {
    char err[ERR_CAP];
    struct gguf_writer *w = gguf_writer_new();
    ck_assert(w != NULL);
    uint8_t u8 = 200, b = 1;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint64_t u64 = 0xfedcba9876543210ull;
    int64_t i64 = -1234567890123ll;
    double f64 = 2.5, f64big = 1e300;
    ck_assert_int_eq(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    if (alignment) ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", alignment), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.u8", GGUF_VT_UINT8, &u8), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.i8", GGUF_VT_INT8, &i8), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.u16", GGUF_VT_UINT16, &u16), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.i16", GGUF_VT_INT16, &i16), 0);
    ck_assert_int_eq(gguf_writer_set_u32(w, "v.u32", 4000000000u), 0);
    ck_assert_int_eq(gguf_writer_set_i32(w, "v.i32", -2000000000), 0);
    ck_assert_int_eq(gguf_writer_set_f32(w, "v.f32", 0.1f), 0);
    ck_assert_int_eq(gguf_writer_set_bool(w, "v.bool", true), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.bool2", GGUF_VT_BOOL, &b), 0);
    ck_assert_int_eq(gguf_writer_set_str(w, "v.str", "h\xc3\xa9llo {{ chat }}"), 0);
    ck_assert_int_eq(gguf_writer_set_str(w, "v.empty", ""), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.u64", GGUF_VT_UINT64, &u64), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.i64", GGUF_VT_INT64, &i64), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.f64", GGUF_VT_FLOAT64, &f64), 0);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "v.f64big", GGUF_VT_FLOAT64, &f64big), 0);
    ck_assert_int_eq(gguf_writer_set_u32(w, "v.replaced", 1), 0);
    ck_assert_int_eq(gguf_writer_set_u32(w, "v.replaced", 2), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.u8", GGUF_VT_UINT8, arr_u8, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.i8", GGUF_VT_INT8, arr_i8, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.u16", GGUF_VT_UINT16, arr_u16, 2), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.i16", GGUF_VT_INT16, arr_i16, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.u32", GGUF_VT_UINT32, arr_u32, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.i32", GGUF_VT_INT32, arr_i32, 4), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.f32", GGUF_VT_FLOAT32, arr_f32, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.bool", GGUF_VT_BOOL, arr_bool, 4), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.u64", GGUF_VT_UINT64, arr_u64, 2), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.i64", GGUF_VT_INT64, arr_i64, 3), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.f64", GGUF_VT_FLOAT64, arr_f64, 2), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.empty", GGUF_VT_INT32, NULL, 0), 0);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "a.str", arr_str, 4), 0);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "a.str_empty", NULL, 0), 0);
    for (size_t i = 0; i < N_ROUND_TENSORS; i++) {
        const struct tspec *t = &round_tensors[i];
        size_t n = tspec_size(t);
        uint8_t *data = malloc(n);
        ck_assert(data != NULL);
        fill_bytes(data, n, (uint32_t)i);
        ck_assert_int_eq(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, data), 0);
        free(data);
    }
    ck_assert_int_eq(gguf_writer_add_tensor(w, "t.zeros", KQ_F32, 1, (int64_t[]){5}, NULL), 0);
    ck_assert_msg(gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    char tmp[PATH_MAX + 128];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert_msg(access(tmp, F_OK) != 0, "%s was left behind", tmp);
}

static const char *const round_keys[] = {
    "general.architecture", "v.u8", "v.i8", "v.u16", "v.i16", "v.u32", "v.i32", "v.f32",
    "v.bool", "v.bool2", "v.str", "v.empty", "v.u64", "v.i64", "v.f64", "v.f64big", "v.replaced",
    "a.u8", "a.i8", "a.u16", "a.i16", "a.u32", "a.i32", "a.f32", "a.bool", "a.u64", "a.i64",
    "a.f64", "a.empty", "a.str", "a.str_empty",
};
#define N_ROUND_KEYS (sizeof round_keys / sizeof round_keys[0])

static void check_arr(const struct gguf_file *f, const char *key, enum gguf_vtype t,
                      const void *data, uint64_t n, size_t es) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    ck_assert_msg(kv != NULL, "%s missing", key);
    ck_assert_int_eq(kv->type, GGUF_VT_ARRAY);
    ck_assert_int_eq(kv->arr_type, t);
    ck_assert_uint_eq(kv->arr_n, n);
    if (n) ck_assert_msg(!memcmp(kv->arr_data, data, n * es), "%s elements differ", key);
}

START_TEST(test_round_trip) {
    char err[ERR_CAP];
    const char *path = tmp_path("round.gguf");
    write_round_file(path, 0);
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(f->version, 3);
    ck_assert_uint_eq(f->alignment, 32);
    ck_assert_str_eq(f->path, path);
    ck_assert_uint_eq(f->n_kv, N_ROUND_KEYS);
    for (size_t i = 0; i < N_ROUND_KEYS; i++) ck_assert_str_eq(f->kv[i].key, round_keys[i]);

    const struct gguf_kv *kv;
    ck_assert((kv = gguf_find_kv(f, "v.u8")) && kv->type == GGUF_VT_UINT8 && kv->v.u == 200);
    ck_assert((kv = gguf_find_kv(f, "v.i8")) && kv->type == GGUF_VT_INT8 && kv->v.i == -100);
    ck_assert((kv = gguf_find_kv(f, "v.u16")) && kv->type == GGUF_VT_UINT16 && kv->v.u == 60000);
    ck_assert((kv = gguf_find_kv(f, "v.i16")) && kv->type == GGUF_VT_INT16 && kv->v.i == -30000);
    ck_assert((kv = gguf_find_kv(f, "v.u32")) && kv->type == GGUF_VT_UINT32 && kv->v.u == 4000000000u);
    ck_assert((kv = gguf_find_kv(f, "v.i32")) && kv->type == GGUF_VT_INT32 && kv->v.i == -2000000000);
    ck_assert((kv = gguf_find_kv(f, "v.f32")) && kv->type == GGUF_VT_FLOAT32 && kv->v.f == (double)0.1f);
    ck_assert((kv = gguf_find_kv(f, "v.bool")) && kv->type == GGUF_VT_BOOL && kv->v.b);
    ck_assert((kv = gguf_find_kv(f, "v.u64")) && kv->type == GGUF_VT_UINT64 && kv->v.u == 0xfedcba9876543210ull);
    ck_assert((kv = gguf_find_kv(f, "v.i64")) && kv->type == GGUF_VT_INT64 && kv->v.i == -1234567890123ll);
    ck_assert((kv = gguf_find_kv(f, "v.f64")) && kv->type == GGUF_VT_FLOAT64 && kv->v.f == 2.5);
    ck_assert((kv = gguf_find_kv(f, "v.replaced")) && kv->v.u == 2);
    ck_assert((kv = gguf_find_kv(f, "v.str")) && kv->type == GGUF_VT_STRING);
    ck_assert_str_eq(kv->str.s, "h\xc3\xa9llo {{ chat }}");
    ck_assert_uint_eq(kv->str.len, strlen("h\xc3\xa9llo {{ chat }}"));
    ck_assert((kv = gguf_find_kv(f, "v.empty")) && kv->str.len == 0 && kv->str.s[0] == 0);
    ck_assert(gguf_find_kv(f, "v.nope") == NULL);

    check_arr(f, "a.u8", GGUF_VT_UINT8, arr_u8, 3, 1);
    check_arr(f, "a.i8", GGUF_VT_INT8, arr_i8, 3, 1);
    check_arr(f, "a.u16", GGUF_VT_UINT16, arr_u16, 2, 2);
    check_arr(f, "a.i16", GGUF_VT_INT16, arr_i16, 3, 2);
    check_arr(f, "a.u32", GGUF_VT_UINT32, arr_u32, 3, 4);
    check_arr(f, "a.i32", GGUF_VT_INT32, arr_i32, 4, 4);
    check_arr(f, "a.f32", GGUF_VT_FLOAT32, arr_f32, 3, 4);
    check_arr(f, "a.bool", GGUF_VT_BOOL, arr_bool, 4, 1);
    check_arr(f, "a.u64", GGUF_VT_UINT64, arr_u64, 2, 8);
    check_arr(f, "a.i64", GGUF_VT_INT64, arr_i64, 3, 8);
    check_arr(f, "a.f64", GGUF_VT_FLOAT64, arr_f64, 2, 8);
    check_arr(f, "a.empty", GGUF_VT_INT32, NULL, 0, 4);
    ck_assert((kv = gguf_find_kv(f, "a.str")) && kv->arr_type == GGUF_VT_STRING && kv->arr_n == 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(kv->arr_str[i].s, arr_str[i]);
        ck_assert_uint_eq(kv->arr_str[i].len, strlen(arr_str[i]));
    }
    ck_assert((kv = gguf_find_kv(f, "a.str_empty")) && kv->arr_type == GGUF_VT_STRING && kv->arr_n == 0);

    ck_assert_uint_eq(f->n_tensors, N_ROUND_TENSORS + 1);
    ck_assert_uint_eq(f->data_offset % 32, 0);
    for (size_t i = 0; i < N_ROUND_TENSORS; i++) {
        const struct tspec *s = &round_tensors[i];
        const struct gguf_tensor *t = gguf_find_tensor(f, s->name);
        ck_assert_msg(t != NULL, "%s missing", s->name);
        ck_assert_ptr_eq(t, &f->tensors[i]);
        ck_assert_str_eq(t->name, s->name);
        ck_assert_int_eq(t->type, s->type);
        ck_assert_uint_eq(t->n_dims, s->n_dims);
        for (int d = 0; d < 4; d++) ck_assert_int_eq(t->ne[d], s->ne[d]);
        ck_assert_uint_eq(t->size, tspec_size(s));
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_eq((uintptr_t)t->data % 32, 0);
        ck_assert_ptr_eq(t->data, f->base + f->data_offset + t->offset);
        uint8_t *want = malloc(t->size);
        fill_bytes(want, t->size, (uint32_t)i);
        ck_assert_msg(!memcmp(t->data, want, t->size), "%s data differs", s->name);
        free(want);
    }
    const struct gguf_tensor *z = gguf_find_tensor(f, "t.zeros");
    ck_assert(z && z->size == 20 && z->n_dims == 1 && z->ne[1] == 1);
    for (int i = 0; i < 20; i++) ck_assert_uint_eq(((const uint8_t *)z->data)[i], 0);
    ck_assert(gguf_find_tensor(f, "t.nope") == NULL);
    gguf_close(f);
    unlink(path);
}
END_TEST

START_TEST(test_alignment_64) {
    char err[ERR_CAP];
    const char *path = tmp_path("align64.gguf");
    write_round_file(path, 64);
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(f->alignment, 64);
    ck_assert_uint_eq(f->data_offset % 64, 0);
    uint32_t a;
    ck_assert_int_eq(gguf_get_u32(f, "general.alignment", &a, err, sizeof err), 0);
    ck_assert_uint_eq(a, 64);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        ck_assert_uint_eq(f->tensors[i].offset % 64, 0);
        ck_assert_uint_eq((uintptr_t)f->tensors[i].data % 64, 0);
    }
    gguf_close(f);
    unlink(path);
}
END_TEST

START_TEST(test_getters) {
    char err[ERR_CAP];
    const char *path = tmp_path("getters.gguf");
    write_round_file(path, 0);
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    uint32_t u;
    int64_t i;
    float x;
    bool b;
    const struct gguf_str *s;
    const struct gguf_kv *kv;

    ck_assert_int_eq(gguf_get_u32(f, "v.u8", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 200);
    ck_assert_int_eq(gguf_get_u32(f, "v.u16", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 60000);
    ck_assert_int_eq(gguf_get_u32(f, "v.u32", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 4000000000u);
    ck_assert_int_eq(gguf_get_u32(f, "v.i8", &u, err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, path) && strstr(err, "v.i8") && strstr(err, "-100"), "%s", err);
    ck_assert_int_eq(gguf_get_u32(f, "v.u64", &u, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_u32(f, "v.bool", &u, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_u32(f, "v.str", &u, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_u32(f, "v.f32", &u, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_u32(f, "v.missing", &u, err, sizeof err), ENG_E_NOT_FOUND);
    ck_assert_msg(strstr(err, path) && strstr(err, "v.missing"), "%s", err);

    ck_assert_int_eq(gguf_get_i64(f, "v.i8", &i, err, sizeof err), 0);
    ck_assert_int_eq(i, -100);
    ck_assert_int_eq(gguf_get_i64(f, "v.i16", &i, err, sizeof err), 0);
    ck_assert_int_eq(i, -30000);
    ck_assert_int_eq(gguf_get_i64(f, "v.u32", &i, err, sizeof err), 0);
    ck_assert_int_eq(i, 4000000000ll);
    ck_assert_int_eq(gguf_get_i64(f, "v.i64", &i, err, sizeof err), 0);
    ck_assert_int_eq(i, -1234567890123ll);
    ck_assert_int_eq(gguf_get_i64(f, "v.u64", &i, err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, "v.u64") && strstr(err, "INT64"), "%s", err);

    ck_assert_int_eq(gguf_get_f32(f, "v.f32", &x, err, sizeof err), 0);
    ck_assert(x == 0.1f);
    ck_assert_int_eq(gguf_get_f32(f, "v.f64", &x, err, sizeof err), 0);
    ck_assert(x == 2.5f);
    ck_assert_int_eq(gguf_get_f32(f, "v.f64big", &x, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_f32(f, "v.u32", &x, err, sizeof err), ENG_E_FORMAT);

    ck_assert_int_eq(gguf_get_bool(f, "v.bool", &b, err, sizeof err), 0);
    ck_assert(b);
    ck_assert_int_eq(gguf_get_bool(f, "v.u8", &b, err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, "v.u8") && strstr(err, "BOOL"), "%s", err);

    ck_assert_int_eq(gguf_get_str(f, "general.architecture", &s, err, sizeof err), 0);
    ck_assert_str_eq(s->s, "llama");
    ck_assert_int_eq(gguf_get_str(f, "v.u32", &s, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_str(f, "v.none", &s, err, sizeof err), ENG_E_NOT_FOUND);

    ck_assert_int_eq(gguf_get_arr(f, "a.i32", GGUF_VT_INT32, &kv, err, sizeof err), 0);
    for (int k = 0; k < 4; k++) ck_assert_int_eq(gguf_arr_i32(kv, k), arr_i32[k]);
    ck_assert_int_eq(gguf_get_arr(f, "a.u32", GGUF_VT_INT32, &kv, err, sizeof err), 0);
    ck_assert_uint_eq((uint32_t)gguf_arr_i32(kv, 1), 4000000000u);
    ck_assert_int_eq(gguf_get_arr(f, "a.f32", GGUF_VT_INT32, &kv, err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, "a.f32") && strstr(err, "FLOAT32"), "%s", err);
    ck_assert_int_eq(gguf_get_arr(f, "a.f32", GGUF_VT_FLOAT32, &kv, err, sizeof err), 0);
    for (int k = 0; k < 3; k++) ck_assert(gguf_arr_f32(kv, k) == arr_f32[k]);
    ck_assert_int_eq(gguf_get_arr(f, "a.i32", GGUF_VT_UINT32, &kv, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_arr(f, "a.str", GGUF_VT_STRING, &kv, err, sizeof err), 0);
    ck_assert_str_eq(kv->arr_str[0].s, "alpha");
    ck_assert_int_eq(gguf_get_arr(f, "v.u32", GGUF_VT_INT32, &kv, err, sizeof err), ENG_E_FORMAT);
    ck_assert_int_eq(gguf_get_arr(f, "a.none", GGUF_VT_INT32, &kv, err, sizeof err), ENG_E_NOT_FOUND);
    gguf_close(f);
    unlink(path);
}
END_TEST

START_TEST(test_writer_rejects) {
    char err[ERR_CAP];
    struct gguf_writer *w = gguf_writer_new();
    int64_t ne_bad[2] = {48, 2}, ne_ok[2] = {64, 2}, ne_zero[2] = {64, 0};
    uint8_t two = 2;
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_0, 2, ne_bad, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_0, 2, ne_zero, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_0, 0, ne_ok, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_K, 2, ne_ok, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "", KQ_Q8_0, 2, ne_ok, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_0, 2, ne_ok, NULL), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "x", KQ_Q8_0, 2, ne_ok, NULL), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_arr(w, "k", GGUF_VT_STRING, "x", 1), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_arr(w, "k", GGUF_VT_ARRAY, "x", 1), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_scalar(w, "k", GGUF_VT_BOOL, &two), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_u32(w, "", 1), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 48), 0);
    const char *path = tmp_path("rejected.gguf");
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), ENG_E_INVALID);
    ck_assert_msg(strstr(err, "general.alignment"), "%s", err);
    ck_assert_int_eq(gguf_writer_set_i32(w, "general.alignment", 64), 0);
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), ENG_E_INVALID);
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 64), 0);
    ck_assert_int_eq(gguf_writer_write(w, "/nonexistent-dir-ppd/x.gguf", err, sizeof err), ENG_E_IO);
    ck_assert_msg(strstr(err, "/nonexistent-dir-ppd/x.gguf"), "%s", err);
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
    ck_assert(access(path, F_OK) == 0);
    gguf_writer_free(w);
    gguf_writer_free(NULL);
    gguf_close(NULL);
    unlink(path);
}
END_TEST

/* ---- broken files ---- */

/* A small good file whose fields the table below finds by name. */
static uint8_t *small_file(size_t *size) {
    char err[ERR_CAP];
    const char *path = tmp_path("small.gguf");
    struct gguf_writer *w = gguf_writer_new();
    const int32_t ints[3] = {1, 2, 3};
    const char *const strs[2] = {"ab", "cde"};
    uint8_t tdata[136];
    fill_bytes(tdata, sizeof tdata, 9);
    ck_assert_int_eq(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 32), 0);
    ck_assert_int_eq(gguf_writer_set_arr(w, "test.aaa", GGUF_VT_INT32, ints, 3), 0);
    ck_assert_int_eq(gguf_writer_set_i32(w, "test.bbb", 7), 0);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "test.strs", strs, 2), 0);
    ck_assert_int_eq(gguf_writer_set_bool(w, "test.flag", true), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "tensor.a", KQ_F32, 2, (int64_t[]){4, 2}, tdata), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "tensor.b", KQ_Q8_0, 2, (int64_t[]){64, 2}, tdata), 0);
    ck_assert_msg(gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    uint8_t *buf = read_all(path, size);
    unlink(path);
    return buf;
}

struct bad_case {
    const char *what;
    const char *anchor;     /* NULL: edit at delta from the file start; else from the end of this name */
    long delta;
    int width;              /* 1, 4 or 8: a little-endian integer; 0: the bytes of `bytes` */
    uint64_t value;
    const char *bytes;
    int code;
    const char *needle1, *needle2;  /* both must appear in the message */
};

#define AT_START NULL
static const struct bad_case bad_cases[] = {
    {"bad magic", AT_START, 0, 0, 0, "GGUG", ENG_E_FORMAT, "header", "magic 'GGUG'"},
    {"version 1", AT_START, 4, 4, 1, NULL, ENG_E_UNSUPPORTED, "header", "version 1"},
    {"version 99", AT_START, 4, 4, 99, NULL, ENG_E_UNSUPPORTED, "header", "version 99"},
    {"version 0", AT_START, 4, 4, 0, NULL, ENG_E_FORMAT, "header", "version 0"},
    {"big-endian version", AT_START, 4, 4, 0x03000000, NULL, ENG_E_UNSUPPORTED, "version", "big-endian"},
    {"absurd tensor count", AT_START, 8, 8, 1ull << 60, NULL, ENG_E_FORMAT, "header", "tensor count"},
    {"absurd kv count", AT_START, 16, 8, UINT64_MAX, NULL, ENG_E_FORMAT, "header", "kv count"},
    /* Three kvs: the fourth is then read as a tensor info, whose n_dims is its value type. */
    {"kv count too small", AT_START, 16, 8, 3, NULL, ENG_E_FORMAT, "tensor 'test.bbb'", "n_dims 5"},
    {"key length past the end", "general.architecture", -28, 8, UINT64_MAX, NULL, ENG_E_FORMAT, "kv #0", "key length"},
    {"empty key", "general.architecture", -28, 8, 0, NULL, ENG_E_FORMAT, "kv #0", "key is empty"},
    {"NUL in a key", "test.aaa", -1, 1, 0, NULL, ENG_E_FORMAT, "kv #2", "NUL"},
    {"string length past the end", "general.architecture", 4, 8, UINT64_MAX, NULL, ENG_E_FORMAT,
     "kv #0 'general.architecture'", "string length 18446744073709551615 exceeds"},
    {"unknown value type", "test.aaa", 0, 4, 13, NULL, ENG_E_FORMAT, "'test.aaa'", "value type 13"},
    {"nested array", "test.aaa", 4, 4, GGUF_VT_ARRAY, NULL, ENG_E_FORMAT, "'test.aaa'", "nested"},
    {"unknown array element type", "test.aaa", 4, 4, 200, NULL, ENG_E_FORMAT, "'test.aaa'", "element type 200"},
    {"huge array count", "test.aaa", 8, 8, 1ull << 62, NULL, ENG_E_FORMAT, "'test.aaa'", "array count"},
    {"array count past the end", "test.aaa", 8, 8, 1000, NULL, ENG_E_FORMAT, "'test.aaa'", "array count 1000"},
    {"huge string array count", "test.strs", 8, 8, 1ull << 61, NULL, ENG_E_FORMAT, "'test.strs'", "array count"},
    {"string array element past the end", "test.strs", 16, 8, 1ull << 40, NULL, ENG_E_FORMAT, "'test.strs'",
     "array element #0"},
    {"bool value 2", "test.flag", 4, 1, 2, NULL, ENG_E_FORMAT, "'test.flag'", "bool"},
    {"duplicate key", "test.bbb", -3, 0, 0, "aaa", ENG_E_FORMAT, "'test.aaa'", "duplicate key"},
    {"alignment 0", "general.alignment", 4, 4, 0, NULL, ENG_E_FORMAT, "'general.alignment'", "alignment 0"},
    {"alignment 48", "general.alignment", 4, 4, 48, NULL, ENG_E_FORMAT, "'general.alignment'", "power of two"},
    {"alignment not UINT32", "general.alignment", 0, 4, GGUF_VT_INT32, NULL, ENG_E_FORMAT, "general.alignment",
     "UINT32"},
    {"alignment 64 misaligns an offset", "general.alignment", 4, 4, 64, NULL, ENG_E_FORMAT, "tensor 'tensor.b'",
     "alignment 64"},
    {"empty tensor name", "tensor.a", -16, 8, 0, NULL, ENG_E_FORMAT, "tensor #0", "name is empty"},
    {"tensor name past the end", "tensor.a", -16, 8, 1ull << 50, NULL, ENG_E_FORMAT, "tensor #0", "name length"},
    {"duplicate tensor name", "tensor.b", -1, 0, 0, "a", ENG_E_FORMAT, "tensor 'tensor.a'", "duplicate tensor name"},
    {"n_dims 0", "tensor.b", 0, 4, 0, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "n_dims 0"},
    {"n_dims 5", "tensor.b", 0, 4, 5, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "n_dims 5"},
    {"ne 0", "tensor.b", 12, 8, 0, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "ne[1] is 0"},
    {"ne above INT64_MAX", "tensor.b", 12, 8, UINT64_MAX, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "ne[1]"},
    {"ne0 not a block multiple", "tensor.b", 4, 8, 48, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "block size 32"},
    {"element count overflow", "tensor.a", 12, 8, 1ull << 62, NULL, ENG_E_FORMAT, "tensor 'tensor.a'",
     "element count"},
    {"size overflow", "tensor.a", 4, 8, 1ull << 61, NULL, ENG_E_FORMAT, "tensor 'tensor.a'", "size overflows"},
    {"unknown tensor type", "tensor.b", 20, 4, 16, NULL, ENG_E_UNSUPPORTED, "tensor 'tensor.b'", "type 16 (IQ2_XXS)"},
    {"tensor type id out of range", "tensor.b", 20, 4, 1000, NULL, ENG_E_UNSUPPORTED, "tensor 'tensor.b'",
     "type 1000"},
    {"non-weight tensor type", "tensor.b", 20, 4, KQ_Q8_K, NULL, ENG_E_UNSUPPORTED, "tensor 'tensor.b'", "type 15"},
    {"offset misaligned", "tensor.b", 24, 8, 33, NULL, ENG_E_FORMAT, "tensor 'tensor.b'", "data offset 33"},
    {"offset past the end", "tensor.b", 24, 8, 1ull << 40, NULL, ENG_E_FORMAT, "tensor 'tensor.b'",
     "past the end"},
    {"offset + size just past the end", "tensor.b", 24, 8, 64, NULL, ENG_E_FORMAT, "tensor 'tensor.b'",
     "data offset 64 + size 136 is past the end"},
    {"offset + size overflow", "tensor.b", 24, 8, UINT64_MAX - 31, NULL, ENG_E_FORMAT, "tensor 'tensor.b'",
     "past the end"},
};
#define N_BAD_CASES (sizeof bad_cases / sizeof bad_cases[0])

static long find_name(const uint8_t *buf, size_t size, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i + n <= size; i++)
        if (!memcmp(buf + i, name, n)) return (long)i;
    return -1;
}

START_TEST(test_bad_file) {
    const struct bad_case *c = &bad_cases[_i];
    char err[ERR_CAP];
    size_t size;
    uint8_t *buf = small_file(&size);
    long at = c->delta;
    if (c->anchor) {
        long pos = find_name(buf, size, c->anchor);
        ck_assert_msg(pos >= 0, "%s: anchor %s not found", c->what, c->anchor);
        at += pos + (long)strlen(c->anchor);
    }
    size_t width = c->width ? (size_t)c->width : strlen(c->bytes);
    ck_assert(at >= 0 && (size_t)at + width <= size);
    if (c->width) memcpy(buf + at, &c->value, width);
    else memcpy(buf + at, c->bytes, width);
    /* Parse an exact-size copy so that any read past the end is an ASan error. */
    uint8_t *exact = malloc(size);
    memcpy(exact, buf, size);
    struct gguf_file *f = (struct gguf_file *)1;
    int rc = gguf_parse(&f, exact, size, "bad.gguf", err, sizeof err);
    ck_assert_msg(rc == c->code, "%s: got %s (%s), want %s", c->what, eng_err_name(rc), err,
                  eng_err_name(c->code));
    ck_assert_ptr_null(f);
    ck_assert_msg(!strncmp(err, "bad.gguf: ", 10), "%s: message lacks the file name: %s", c->what, err);
    ck_assert_msg(strstr(err, c->needle1) && strstr(err, c->needle2), "%s: message '%s' lacks '%s' / '%s'",
                  c->what, err, c->needle1, c->needle2);
    free(exact);
    free(buf);
}
END_TEST

START_TEST(test_small_file_good) {
    char err[ERR_CAP];
    size_t size;
    uint8_t *buf = small_file(&size);
    struct gguf_file *f;
    ck_assert_msg(gguf_parse(&f, buf, size, "small.gguf", err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(f->n_kv, 6);
    ck_assert_uint_eq(f->n_tensors, 2);
    ck_assert_int_eq(f->mapped_, 0);
    /* The layout the table of broken files assumes. */
    ck_assert_uint_eq(f->tensors[1].offset, 32);
    ck_assert_uint_eq(f->tensors[1].size, 136);
    ck_assert_uint_eq(f->data_offset + 192, size);
    gguf_close(f);
    free(buf);
}
END_TEST

/* Every prefix must fail cleanly until the last tensor's data is complete
 * (what follows is only padding). */
START_TEST(test_every_prefix) {
    char err[ERR_CAP];
    size_t size;
    uint8_t *buf = small_file(&size);
    struct gguf_file *f;
    ck_assert_int_eq(gguf_parse(&f, buf, size, "prefix.gguf", err, sizeof err), 0);
    size_t needed = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        size_t end = f->data_offset + f->tensors[i].offset + f->tensors[i].size;
        if (end > needed) needed = end;
    }
    gguf_close(f);
    for (size_t len = 0; len <= size; len++) {
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        int rc = gguf_parse(&f, exact, len, "prefix.gguf", err, sizeof err);
        if (len < needed) {
            ck_assert_msg(rc == ENG_E_FORMAT, "prefix %zu: got %s", len, eng_err_name(rc));
            ck_assert_msg(!strncmp(err, "prefix.gguf: ", 13), "prefix %zu: %s", len, err);
            ck_assert_ptr_null(f);
        } else {
            ck_assert_msg(rc == 0, "prefix %zu: %s", len, err);
            gguf_close(f);
        }
        free(exact);
    }
    free(buf);
}
END_TEST

/* Random byte flips in the header: an error with the file name, or a file
 * whose every tensor lies inside the buffer. */
START_TEST(test_random_flips) {
    char err[ERR_CAP];
    size_t size;
    uint8_t *buf = small_file(&size);
    struct gguf_file *f;
    ck_assert_int_eq(gguf_parse(&f, buf, size, "flip.gguf", err, sizeof err), 0);
    size_t header = f->data_offset;
    gguf_close(f);
    uint32_t x = 12345;
    int n_ok = 0;
    for (int iter = 0; iter < 5000; iter++) {
        uint8_t *copy = malloc(size);
        memcpy(copy, buf, size);
        int flips = 1 + iter % 3;
        for (int k = 0; k < flips; k++) {
            x = x * 1664525u + 1013904223u;
            size_t pos = (x >> 8) % header;
            x = x * 1664525u + 1013904223u;
            copy[pos] ^= (uint8_t)(1u << ((x >> 13) % 8));
        }
        int rc = gguf_parse(&f, copy, size, "flip.gguf", err, sizeof err);
        if (rc) {
            ck_assert_msg(!strncmp(err, "flip.gguf: ", 11), "iter %d: %s", iter, err);
        } else {
            n_ok++;
            for (uint64_t i = 0; i < f->n_tensors; i++) {
                const struct gguf_tensor *t = &f->tensors[i];
                ck_assert((const uint8_t *)t->data >= copy);
                ck_assert((const uint8_t *)t->data + t->size <= copy + size);
            }
            for (uint64_t i = 0; i < f->n_kv; i++) ck_assert(gguf_find_kv(f, f->kv[i].key) == &f->kv[i]);
            gguf_close(f);
        }
        free(copy);
    }
    ck_assert(n_ok > 0); /* flips inside string values leave a valid file */
    free(buf);
}
END_TEST

START_TEST(test_open_errors) {
    char err[ERR_CAP];
    struct gguf_file *f = (struct gguf_file *)1;
    const char *missing = "/nonexistent-dir-ppd/missing.gguf";
    ck_assert_int_eq(gguf_open(&f, missing, err, sizeof err), ENG_E_IO);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err, missing) && strstr(err, "open"), "%s", err);
    ck_assert_int_eq(gguf_open(&f, tmp_dir, err, sizeof err), ENG_E_IO);
    ck_assert_msg(strstr(err, tmp_dir) && strstr(err, "regular"), "%s", err);
    const char *empty = tmp_path("empty.gguf");
    FILE *fp = fopen(empty, "wb");
    ck_assert(fp != NULL);
    fclose(fp);
    ck_assert_int_eq(gguf_open(&f, empty, err, sizeof err), ENG_E_FORMAT);
    ck_assert_msg(strstr(err, empty) && strstr(err, "header"), "%s", err);
    unlink(empty);
}
END_TEST

/* ---- the real default model ---- */

START_TEST(test_real_model) {
    char err[ERR_CAP];
    const char *path = test_model_path();
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s (run `make model` to fetch it)", err);
    ck_assert_uint_eq(f->version, 3);
    ck_assert_uint_eq(f->alignment, 32);
    ck_assert_uint_eq(f->n_tensors, 272);
    uint32_t u;
    ck_assert_int_eq(gguf_get_u32(f, "llama.block_count", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 30);
    ck_assert_int_eq(gguf_get_u32(f, "llama.embedding_length", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 576);
    ck_assert_int_eq(gguf_get_u32(f, "llama.attention.head_count_kv", &u, err, sizeof err), 0);
    ck_assert_uint_eq(u, 3);
    float x;
    ck_assert_int_eq(gguf_get_f32(f, "llama.rope.freq_base", &x, err, sizeof err), 0);
    ck_assert(x == 100000.0f);
    bool b;
    ck_assert_int_eq(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b, err, sizeof err), 0);
    ck_assert(!b);
    const struct gguf_str *s;
    ck_assert_int_eq(gguf_get_str(f, "tokenizer.ggml.pre", &s, err, sizeof err), 0);
    ck_assert_str_eq(s->s, "smollm");
    ck_assert_int_eq(gguf_get_str(f, "tokenizer.ggml.model", &s, err, sizeof err), 0);
    ck_assert_str_eq(s->s, "gpt2");
    const struct gguf_kv *kv;
    ck_assert_int_eq(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_VT_STRING, &kv, err, sizeof err), 0);
    ck_assert_uint_eq(kv->arr_n, 49152);
    ck_assert_str_eq(kv->arr_str[0].s, "<|endoftext|>");
    ck_assert_str_eq(kv->arr_str[49151].s, "ectable");
    ck_assert_int_eq(gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_VT_STRING, &kv, err, sizeof err), 0);
    ck_assert_uint_eq(kv->arr_n, 48900);
    ck_assert_str_eq(kv->arr_str[0].s, "\xc4\xa0 t");
    ck_assert_int_eq(gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_VT_INT32, &kv, err, sizeof err), 0);
    ck_assert_uint_eq(kv->arr_n, 49152);
    ck_assert_int_eq(gguf_arr_i32(kv, 0), 3);

    const struct gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    ck_assert(t != NULL);
    ck_assert_int_eq(t->type, KQ_Q8_0);
    ck_assert_uint_eq(t->n_dims, 2);
    ck_assert_int_eq(t->ne[0], 576);
    ck_assert_int_eq(t->ne[1], 49152);
    ck_assert_uint_eq(t->size, 576 / 32 * 34 * 49152ull);
    t = gguf_find_tensor(f, "blk.0.attn_q.weight");
    ck_assert(t != NULL);
    ck_assert_int_eq(t->type, KQ_Q4_1);
    ck_assert_int_eq(t->ne[0], 576);
    ck_assert_int_eq(t->ne[1], 576);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        ck_assert_uint_eq((uintptr_t)f->tensors[i].data % 32, 0);
        ck_assert((const uint8_t *)f->tensors[i].data + f->tensors[i].size <= f->base + f->size);
    }
    gguf_close(f);

    /* Opening is on the start-up path: time it (best of 5, warm page cache). */
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now_ms();
        ck_assert_int_eq(gguf_open(&f, path, err, sizeof err), 0);
        double ms = now_ms() - t0;
        gguf_close(f);
        if (ms < best) best = ms;
    }
    printf("gguf_open %s: %.2f ms (best of 5)\n", path, best);
#if defined(__SANITIZE_ADDRESS__)
    ck_assert_msg(best < 500, "gguf_open took %.1f ms", best);
#else
    ck_assert_msg(best < 50, "gguf_open took %.1f ms (limit 50)", best);
#endif
}
END_TEST

static Suite *gguf_suite(void) {
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("writer_reader");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_alignment_64);
    tcase_add_test(tc, test_getters);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_open_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("broken");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_small_file_good);
    tcase_add_loop_test(tc, test_bad_file, 0, (int)N_BAD_CASES);
    tcase_add_test(tc, test_every_prefix);
    tcase_add_test(tc, test_random_flips);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_real_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/ppd_test_gguf_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    SRunner *sr = srunner_create(gguf_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rmdir(tmp_dir);
    return failed ? 1 : 0;
}
