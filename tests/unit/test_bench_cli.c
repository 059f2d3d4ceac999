/* test_bench_cli.c — `ppd bench` as a user runs it: plain decoding and PPD on
 * a small prompt file written here, in one run; the --json object carries
 * the comparison with sane values (accepted tokens per step >= 1, no prompt
 * where PPD's tokens differ from plain decoding's, a positive speed-up, an
 * overhead share in [0, 1), a histogram that adds up); the table mode,
 * seeded sampling, --no-ppd and --rows run; a bad or missing --tree file
 * exits 1 naming the file.  Speed itself is not asserted (benchmarks measure
 * it, tests do not).  The binary comes from PPD_BIN, default build/ppd.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/ppd/ppd_adapter.h"

static char prompts_path[] = "/tmp/ppd-bench-prompts-XXXXXX";

static void write_prompts(void) {
    strcpy(prompts_path, "/tmp/ppd-bench-prompts-XXXXXX");
    int fd = mkstemp(prompts_path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"id\": \"a\", \"turns\": [\"What is the capital of France?\", \"And of Italy?\"]}\n"
          "{\"id\": \"b\", \"turns\": [\"Write a haiku about the sea.\"]}\n"
          "{\"id\": \"c\", \"turns\": [\"not reached with --count 2\"]}\n", f);
    fclose(f);
}

/* ppd bench -m MODEL -f prompts -n 16 --count 2 -t 2 plus extra (NULL-ended). */
static int bench(const char *const *extra, char *out, size_t out_cap, char *err, size_t err_cap) {
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)test_ppd_bin();
    argv[n++] = "bench";
    argv[n++] = "-m";
    argv[n++] = (char *)test_model_path();
    argv[n++] = "-f";
    argv[n++] = prompts_path;
    argv[n++] = "--count";
    argv[n++] = "2";
    argv[n++] = "-n";
    argv[n++] = "16";
    argv[n++] = "-t";
    argv[n++] = "2";
    for (int i = 0; extra[i]; i++) argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    return test_run_capture(argv, out, out_cap, err, err_cap);
}

static double num(json_t *j, const char *key) {
    json_t *v = json_object_get(j, key);
    ck_assert_msg(json_is_number(v), "field %s missing or not a number", key);
    return json_number_value(v);
}

START_TEST(test_bench_json) {
    static char out[1 << 16], err[1 << 14];
    write_prompts();
    const char *extra[] = {"--json", NULL};
    int rc = bench(extra, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "bench: exit %d: %s", rc, err);
    json_error_t je;
    json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, &je);
    ck_assert_msg(j != NULL, "bad JSON: %s", out);
    printf("%s", out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), "ppd");
    ck_assert_str_eq(json_string_value(json_object_get(j, "file")), prompts_path);
    ck_assert_int_eq((int)num(j, "prompts"), 2);
    ck_assert_int_eq((int)num(j, "mismatches"), 0);
    /* greedy and lossless: both runs of each prompt emit the same tokens, -n 16 each at most */
    long gen = (long)num(j, "generated");
    ck_assert_int_eq((long)num(j, "ppd_generated"), gen);
    ck_assert(gen >= 2 && gen <= 32);
    long steps = (long)num(j, "steps");
    double mean = num(j, "mean_accepted_per_step");
    ck_assert_int_ge(steps, 1);
    ck_assert_msg(mean >= 1.0 && mean <= 4.0, "mean accepted per step %g", mean);
    /* the histogram adds up: its steps, and (first token from the prefill) the tokens */
    json_t *hist = json_object_get(j, "accepted_hist");
    ck_assert(json_is_array(hist));
    long hs = 0, hw = 0;
    for (size_t k = 0; k < json_array_size(hist); k++) {
        hs += (long)json_integer_value(json_array_get(hist, k));
        hw += (long)k * (long)json_integer_value(json_array_get(hist, k));
    }
    ck_assert_int_eq(hs, steps);
    ck_assert_msg(hw + 2 >= gen && hw <= gen, "accepted %ld, generated %ld over 2 prompts", hw, gen);
    ck_assert_double_eq_tol(mean, (double)hw / (double)steps, 1e-9);
    ck_assert(num(j, "baseline_decode_tokens_per_s") > 0);
    ck_assert(num(j, "ppd_decode_tokens_per_s") > 0);
    ck_assert(num(j, "speedup") > 0);
    double ov = num(j, "step_overhead");
    ck_assert_msg(ov >= 0 && ov < 1, "step overhead %g", ov);
    ck_assert(num(j, "forward_s") > 0 && num(j, "forward_s") <= num(j, "ppd_decode_s"));
    ck_assert(num(j, "verify_s") >= 0 && num(j, "build_s") >= 0);
    json_t *rows = json_object_get(j, "tree_rows");
    ck_assert(json_is_array(rows) && json_array_size(rows) >= 1);
    /* no adapter next to the model: an untrained one made in memory, said so */
    char path[1024];
    ck_assert_int_eq(eng_ppd_adapter_default_path(test_model_path(), path, sizeof path), 0);
    const char *ad = json_string_value(json_object_get(j, "adapter"));
    ck_assert_ptr_nonnull(ad);
    if (access(path, F_OK) != 0) ck_assert_str_eq(ad, "text-init (untrained)");
    else ck_assert_str_eq(ad, path);
    json_decref(j);
    unlink(prompts_path);
}
END_TEST

/* The table, with seeded sampling: PPD draws what plain sampling draws. */
START_TEST(test_bench_table_sampling) {
    static char out[1 << 16], err[1 << 14];
    write_prompts();
    const char *extra[] = {"--temp", "0.8", "--seed", "11", NULL};
    int rc = bench(extra, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "bench: exit %d: %s", rc, err);
    printf("%s", out);
    ck_assert_ptr_nonnull(strstr(out, "sampling T=0.8 seed 11"));
    ck_assert_ptr_nonnull(strstr(out, "adapter: "));
    ck_assert_ptr_nonnull(strstr(out, "speed-up"));
    ck_assert_ptr_nonnull(strstr(out, "mismatches"));
    const char *base = strrchr(prompts_path, '/') + 1;
    const char *row = strstr(out, base);
    ck_assert_ptr_nonnull(row);
    int prompts = -1, tokens = -1, mism = -1;
    double acc = 0, tb = 0, tp = 0, su = 0, ov = 0;
    ck_assert_int_eq(sscanf(row + strlen(base), "%d %d %lf %lf %lf %lfx %lf%% %d", &prompts, &tokens, &acc, &tb, &tp,
                            &su, &ov, &mism), 8);
    ck_assert_int_eq(prompts, 2);
    ck_assert_int_eq(mism, 0);
    ck_assert(acc >= 1.0 && su > 0 && ov >= 0 && ov < 100);
    unlink(prompts_path);
}
END_TEST

START_TEST(test_bench_no_ppd_and_rows) {
    static char out[1 << 16], err[1 << 14];
    write_prompts();
    const char *extra[] = {"--no-ppd", "--json", NULL};
    int rc = bench(extra, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "bench --no-ppd: exit %d: %s", rc, err);
    json_error_t je;
    json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, &je);
    ck_assert_msg(j != NULL, "bad JSON: %s", out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), "no-ppd");
    ck_assert_int_eq((int)num(j, "prompts"), 2);
    ck_assert(num(j, "decode_tokens_per_s") > 0);
    ck_assert_ptr_null(json_object_get(j, "speedup"));
    json_decref(j);
    char *argv[] = {(char *)test_ppd_bin(), "bench", "-m", (char *)test_model_path(), "--rows", "1,3", "--prefix", "16",
                    "--repeat", "1", "-t", "2", NULL};
    rc = test_run_capture(argv, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "bench --rows: exit %d: %s", rc, err);
    ck_assert_ptr_nonnull(strstr(out, "\"rows\":1,"));
    ck_assert_ptr_nonnull(strstr(out, "\"rows\":3,"));
    unlink(prompts_path);
}
END_TEST

START_TEST(test_bench_bad_tree) {
    static char out[1 << 14], err[1 << 14];
    write_prompts();
    char tree[] = "/tmp/ppd-bench-tree-XXXXXX";
    int fd = mkstemp(tree);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"N\": 3, \"K\": 10, \"states\": {\"1\": [[[12], 0.1, 3]], \"2\": [], \"3\": []}}", f);
    fclose(f);
    const char *bad[] = {"--tree", tree, "--json", NULL};
    int rc = bench(bad, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1, "bad tree: exit %d (want 1): %s", rc, err);
    ck_assert_msg(strstr(err, tree) != NULL, "'%s' does not name %s", err, tree);
    ck_assert_msg(strstr(err, "rank") != NULL, "'%s' does not say what is wrong", err);
    const char *missing[] = {"--tree", "/nonexistent/tree.json", NULL};
    rc = bench(missing, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1, "missing tree: exit %d (want 1): %s", rc, err);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/tree.json"));
    const char *conflict[] = {"--no-ppd", "--tree", tree, NULL};
    rc = bench(conflict, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 2, "--no-ppd --tree: exit %d (want 2): %s", rc, err);
    unlink(tree);
    unlink(prompts_path);
}
END_TEST

int main(void) {
    Suite *s = suite_create("bench_cli");
    TCase *tc = tcase_create("bench_cli");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, test_bench_bad_tree);
    tcase_add_test(tc, test_bench_json);
    tcase_add_test(tc, test_bench_table_sampling);
    tcase_add_test(tc, test_bench_no_ppd_and_rows);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
