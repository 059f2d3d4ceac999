/* test_ppd_cli.c — PPD through the `ppd` binary as a user runs it:
 * `ppd adapter init` makes an untrained adapter; `ppd generate --ppd` then
 * prints exactly the tokens of `ppd generate --no-ppd`, greedy and with a
 * seeded sampler, and --json carries the PPD statistics; a wrong-base,
 * corrupt or missing adapter and a bad tree file exit 1 with a message
 * naming the problem, conflicting flags exit 2.
 * The binary comes from PPD_BIN (set by `make test-unit`), default build/ppd.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/ppd/ppd_adapter.h"

static char adapter_path[] = "/tmp/ppd-cli-adapter-XXXXXX";

static void make_adapter(void) {
    int fd = mkstemp(adapter_path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char out[4096], err[8192];
    char *argv[] = {(char *)test_ppd_bin(), "adapter", "init", "-m", (char *)test_model_path(), "-o", adapter_path, "--force", NULL};
    int rc = test_run_capture(argv, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "adapter init: %d %s", rc, err);
}

static json_t *generate(const char *prompt, const char *mode, const char *temp, const char *seed) {
    static char out[1 << 16], err[1 << 14];
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)test_ppd_bin();
    argv[n++] = "generate";
    argv[n++] = "-m";
    argv[n++] = (char *)test_model_path();
    argv[n++] = "-p";
    argv[n++] = (char *)prompt;
    argv[n++] = "-n";
    argv[n++] = "32";
    argv[n++] = "-t";
    argv[n++] = "2";
    argv[n++] = "--temp";
    argv[n++] = (char *)temp;
    argv[n++] = "--seed";
    argv[n++] = (char *)seed;
    argv[n++] = "--json";
    if (mode) {
        argv[n++] = "--ppd";
        argv[n++] = (char *)mode;
    } else {
        argv[n++] = "--no-ppd";
    }
    argv[n] = NULL;
    int rc = test_run_capture(argv, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "generate: %d %s", rc, err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    ck_assert_msg(j != NULL, "bad JSON: %s", out);
    return j;
}

static const char *prompts[] = {
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
};

static void equivalence(const char *temp) {
    make_adapter();
    for (unsigned i = 0; i < sizeof prompts / sizeof prompts[0]; i++) {
        json_t *a = generate(prompts[i], NULL, temp, "7"), *b = generate(prompts[i], adapter_path, temp, "7");
        ck_assert_msg(json_equal(json_object_get(a, "tokens"), json_object_get(b, "tokens")),
                      "prompt %u at temperature %s: PPD tokens differ from plain", i, temp);
        ck_assert_str_eq(json_string_value(json_object_get(a, "text")), json_string_value(json_object_get(b, "text")));
        ck_assert(json_is_true(json_object_get(b, "ppd")));
        ck_assert(json_is_false(json_object_get(a, "ppd")));
        /* the statistics add up: n_gen = 1 (from the prefill) + the tokens of every step */
        json_t *acc = json_object_get(b, "tokens_per_step"), *hist = json_object_get(b, "accepted_hist");
        long steps = (long)json_integer_value(json_object_get(b, "steps")), sum = 0, hsum = 0, hw = 0;
        ck_assert_int_eq((long)json_array_size(acc), steps);
        for (size_t k = 0; k < json_array_size(acc); k++) sum += (long)json_integer_value(json_array_get(acc, k));
        for (size_t k = 0; k < json_array_size(hist); k++) {
            hsum += (long)json_integer_value(json_array_get(hist, k));
            hw += (long)k * (long)json_integer_value(json_array_get(hist, k));
        }
        ck_assert_int_eq(hsum, steps);
        ck_assert_int_eq(hw, sum);
        long n_gen = (long)json_integer_value(json_object_get(b, "n_gen"));
        ck_assert_int_ge(1 + sum, n_gen);   /* a step cut by EOS or -n emits less than it accepted */
        double mean = json_real_value(json_object_get(b, "mean_accepted_per_step"));
        ck_assert(steps == 0 || (mean >= 1.0 && mean <= 4.0));
        ck_assert(json_is_real(json_object_get(b, "step_overhead")));
        printf("temp %s prompt %u: %ld tokens, %ld steps, %.3f accepted per step, overhead %.2f%%\n", temp, i, n_gen,
               steps, mean, 100 * json_real_value(json_object_get(b, "step_overhead")));
        json_decref(a);
        json_decref(b);
    }
    unlink(adapter_path);
}

START_TEST(test_greedy_equals_no_ppd) { equivalence("0"); }
END_TEST

START_TEST(test_sampling_equals_no_ppd) { equivalence("0.7"); }
END_TEST

static void expect_fail(char *const argv[], int want_rc, const char *want1, const char *want2) {
    char out[8192], err[8192];
    int rc = test_run_capture(argv, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == want_rc, "exit %d (want %d): %s", rc, want_rc, err);
    ck_assert_msg(strstr(err, want1) != NULL, "'%s' lacks '%s'", err, want1);
    if (want2) ck_assert_msg(strstr(err, want2) != NULL, "'%s' lacks '%s'", err, want2);
}

START_TEST(test_bad_adapters_and_trees) {
    char p1[] = "/tmp/ppd-cli-bad-XXXXXX", p2[] = "/tmp/ppd-cli-tree-XXXXXX";
    int fd = mkstemp(p1);
    close(fd);
    fd = mkstemp(p2);
    close(fd);
    char *B = (char *)test_ppd_bin(), *M = (char *)test_model_path();
    /* an adapter for another model */
    struct eng_ppd_adapter a = {.n_prompt = 3, .topk = 10, .n_embd = 576, .base_fingerprint = 42};
    float emb[3 * 576] = {0};
    a.emb = emb;
    snprintf(a.base_name, sizeof a.base_name, "Vicuna 7B v1.3");
    char err[512];
    ck_assert_int_eq(eng_ppd_adapter_save(&a, p1, err, sizeof err), 0);
    char *g1[] = {B, "generate", "-m", M, "-p", "hi", "-n", "2", "--ppd", p1, NULL};
    expect_fail(g1, 1, "Vicuna 7B v1.3", "not for the loaded model");
    /* a corrupt one: cut in half */
    FILE *f = fopen(p1, "r+b");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    ck_assert_int_eq(truncate(p1, n / 2), 0);
    expect_fail(g1, 1, p1, NULL);
    char *g2[] = {B, "generate", "-m", M, "-p", "hi", "-n", "2", "--ppd", "/nonexistent/a.ppd.gguf", NULL};
    expect_fail(g2, 1, "/nonexistent/a.ppd.gguf", NULL);
    /* a tree file with a bad rank, with a good adapter */
    make_adapter();
    f = fopen(p2, "w");
    fputs("{\"N\": 3, \"K\": 10, \"states\": {\"1\": [[[12], 0.1, 3]], \"2\": [], \"3\": []}}", f);
    fclose(f);
    char *g3[] = {B, "generate", "-m", M, "-p", "hi", "-n", "2", "--ppd", adapter_path, "--tree", p2, NULL};
    expect_fail(g3, 1, p2, "rank");
    f = fopen(p2, "w");
    fputs("{\"N\": 3, \"K\": 10, \"states\": {\"1\": [[[0, 1], 0.1, 3]], \"2\": [], \"3\": []}}", f);
    fclose(f);
    expect_fail(g3, 1, p2, "depth");
    char *g4[] = {B, "generate", "-m", M, "-p", "hi", "--no-ppd", "--ppd", adapter_path, NULL};
    expect_fail(g4, 2, "--no-ppd", NULL);
    /* a good tree file from config/ runs */
    char out[1 << 14], e2[8192];
    char *g5[] = {B, "generate", "-m", M, "-p", "hi", "-n", "4", "--ppd", adapter_path, "--tree",
                  "config/trees/vicuna-7b-L60.json", "--json", NULL};
    ck_assert_msg(test_run_capture(g5, out, sizeof out, e2, sizeof e2) == 0, "%s", e2);
    ck_assert_ptr_nonnull(strstr(out, "\"tree_rows\":[44,64,64]"));
    unlink(adapter_path);
    unlink(p1);
    unlink(p2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ppd_cli");
    TCase *tc = tcase_create("ppd_cli");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, test_bad_adapters_and_trees);
    tcase_add_test(tc, test_greedy_equals_no_ppd);
    tcase_add_test(tc, test_sampling_equals_no_ppd);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
