/* test_cli.c — the `ppd` binary as a user meets it: bad model files and bad
 * flags give a clear message and exit status 1 (runtime) or 2 (usage), never
 * a crash; a good run prints what --json promises.
 * The binary comes from PPD_BIN (set by `make test-unit`), default build/ppd.
 */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

/* Write the first n bytes of the model, with optional byte edits, to path. */
static void write_variant(const char *path, size_t n, size_t edit_at, const void *edit, size_t edit_len) {
    FILE *in = fopen(test_model_path(), "rb");
    ck_assert_ptr_nonnull(in);
    FILE *outf = fopen(path, "wb");
    ck_assert_ptr_nonnull(outf);
    char buf[65536];
    size_t done = 0;
    while (done < n) {
        size_t want = n - done < sizeof buf ? n - done : sizeof buf;
        size_t got = fread(buf, 1, want, in);
        if (got == 0) break;
        if (edit && edit_at >= done && edit_at < done + got) {
            size_t k = edit_len < done + got - edit_at ? edit_len : done + got - edit_at;
            memcpy(buf + (edit_at - done), edit, k);
        }
        fwrite(buf, 1, got, outf);
        done += got;
    }
    fclose(in);
    fclose(outf);
}

static void expect_model_error(const char *path, const char *want_in_msg) {
    char out[4096], err[8192];
    char *argv[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)path, "-p", "hi", "-n", "2", NULL};
    int st = test_run_capture(argv, out, sizeof out, err, sizeof err);
    ck_assert_msg(st == 1, "%s: exit status %d (want 1); stderr: %s", path, st, err);
    ck_assert_msg(strstr(err, path) != NULL, "message does not name the file: %s", err);
    if (want_in_msg) ck_assert_msg(strstr(err, want_in_msg) != NULL, "message lacks '%s': %s", want_in_msg, err);
}

START_TEST(test_bad_model_files) {
    const char *p = "/tmp/ppd-test-bad.gguf";
    write_variant(p, 4, 0, NULL, 0);                     /* 4 bytes: magic only */
    expect_model_error(p, NULL);
    write_variant(p, 1 << 20, 0, "GGUX", 4);             /* bad magic */
    expect_model_error(p, "magic");
    write_variant(p, 1 << 20, 0, NULL, 0);               /* header intact, data cut off */
    expect_model_error(p, NULL);
    uint64_t huge = 0xffffffffffffull;
    write_variant(p, 1 << 20, 8, &huge, 8);              /* absurd tensor count */
    expect_model_error(p, "tensor");
    write_variant(p, 1 << 20, 4, "\x63\0\0\0", 4);       /* version 99 */
    expect_model_error(p, "version");
    expect_model_error("/tmp/ppd-test-does-not-exist.gguf", NULL);
    unlink(p);
}
END_TEST

START_TEST(test_bad_flags) {
    char out[4096], err[4096];
    char *a1[] = {(char *)test_ppd_bin(), "generate", "-n", "many", "-p", "x", NULL};
    ck_assert_int_eq(test_run_capture(a1, out, sizeof out, err, sizeof err), 2);
    ck_assert_ptr_nonnull(strstr(err, "-n"));
    char *a2[] = {(char *)test_ppd_bin(), "generate", "--temp", "-1", "-p", "x", NULL};
    ck_assert_int_eq(test_run_capture(a2, out, sizeof out, err, sizeof err), 2);
    char *a3[] = {(char *)test_ppd_bin(), "generate", NULL};
    ck_assert_int_eq(test_run_capture(a3, out, sizeof out, err, sizeof err), 2);
    char *a4[] = {(char *)test_ppd_bin(), "frobnicate", NULL};
    ck_assert_int_eq(test_run_capture(a4, out, sizeof out, err, sizeof err), 2);
    ck_assert_ptr_nonnull(strstr(err, "frobnicate"));
    char *a5[] = {(char *)test_ppd_bin(), "generate", "--chat-template", "nope", "-m", (char *)test_model_path(), "-p", "x", NULL};
    ck_assert_int_eq(test_run_capture(a5, out, sizeof out, err, sizeof err), 1);
    ck_assert_ptr_nonnull(strstr(err, "nope"));
}
END_TEST

START_TEST(test_generate_json) {
    static char out[1 << 16], err[1 << 16];
    char *argv[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)test_model_path(), "--chat", "-p",
                    "Name three colours.", "-n", "16", "-t", "2", "--json", NULL};
    ck_assert_int_eq(test_run_capture(argv, out, sizeof out, err, sizeof err), 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    ck_assert_msg(j != NULL, "stdout is not one JSON object: %s", out);
    const char *keys[] = {"text", "tokens", "n_prompt", "n_gen", "steps", "decode_tokens_per_s", "prefill_tokens_per_s"};
    for (unsigned i = 0; i < sizeof keys / sizeof keys[0]; i++)
        ck_assert_msg(json_object_get(j, keys[i]) != NULL, "missing key %s", keys[i]);
    int n_gen = (int)json_integer_value(json_object_get(j, "n_gen"));
    ck_assert_int_ge(n_gen, 1);
    ck_assert_int_le(n_gen, 16);
    ck_assert_int_eq((int)json_array_size(json_object_get(j, "tokens")), n_gen);
    ck_assert_int_gt((int)json_integer_value(json_object_get(j, "n_prompt")), 10);
    ck_assert(json_real_value(json_object_get(j, "decode_tokens_per_s")) > 0);
    /* greedy is deterministic: a second run prints the same tokens */
    static char out2[1 << 16];
    ck_assert_int_eq(test_run_capture(argv, out2, sizeof out2, err, sizeof err), 0);
    json_t *j2 = json_loads(out2, 0, &je);
    ck_assert(json_equal(json_object_get(j, "tokens"), json_object_get(j2, "tokens")));
    json_decref(j);
    json_decref(j2);
}
END_TEST

START_TEST(test_seeded_sampling_repeats) {
    static char o1[1 << 16], o2[1 << 16], o3[1 << 16], err[1 << 16];
    char *a[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)test_model_path(), "-p", "The weather today",
                 "-n", "24", "--temp", "0.9", "--top-p", "0.95", "--seed", "11", "--json", "--ignore-eos", NULL};
    ck_assert_int_eq(test_run_capture(a, o1, sizeof o1, err, sizeof err), 0);
    ck_assert_int_eq(test_run_capture(a, o2, sizeof o2, err, sizeof err), 0);
    a[13] = "12";
    ck_assert_int_eq(test_run_capture(a, o3, sizeof o3, err, sizeof err), 0);
    json_error_t je;
    json_t *j1 = json_loads(o1, 0, &je), *j2 = json_loads(o2, 0, &je), *j3 = json_loads(o3, 0, &je);
    ck_assert(j1 && j2 && j3);
    ck_assert(json_equal(json_object_get(j1, "tokens"), json_object_get(j2, "tokens")));
    ck_assert(!json_equal(json_object_get(j1, "tokens"), json_object_get(j3, "tokens")));
    json_decref(j1);
    json_decref(j2);
    json_decref(j3);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    test_set_timeout(tc, 300);
    tcase_add_test(tc, test_bad_model_files);
    tcase_add_test(tc, test_bad_flags);
    tcase_add_test(tc, test_generate_json);
    tcase_add_test(tc, test_seeded_sampling_repeats);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
