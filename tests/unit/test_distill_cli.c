/* test_distill_cli.c — `ppd distill` through the binary, as `make adapter`
 * runs it: each answer equals what `ppd generate --chat --no-ppd` gives for
 * that prompt alone (greedy), with several prompts sharing the batch; the
 * header carries the documented provenance; a larger --count resumes an
 * earlier run (its records kept byte for byte, only the new prompt
 * generated) and the result equals a fresh run; a run with other settings is
 * refused naming the first differing field unless --force; malformed prompt
 * files exit 1 naming FILE:LINE.  Prompt files are written to a temporary
 * directory (no dependency on ../shared/data).
 * The binary comes from PPD_BIN (set by `make test-unit`), default build/ppd.
 */
#include <check.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/load/sha256.h"

/* ids with characters JSON must escape; turns[0] only is used */
static const char *const ids[] = {"capital", "fib \"quoted\" id", "story-\xc3\xa9t\xc3\xa9", "list"};
static const char *const texts[] = {
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Tell me a very short story about a lighthouse.",
    "Name three colours.",
};
#define N_PROMPTS 4

static char dir[64];
static char prompts_path[256];

static void write_file(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
}

/* The temporary directory and a prompt file of N_PROMPTS lines (plus a
 * blank line, which is allowed). */
static void setup_prompts(void) {
    snprintf(dir, sizeof dir, "/tmp/ppd-distill-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(prompts_path, sizeof prompts_path, "%s/prompts.jsonl", dir);
    FILE *fp = fopen(prompts_path, "wb");
    ck_assert_ptr_nonnull(fp);
    for (int i = 0; i < N_PROMPTS; i++) {
        json_t *j = json_pack("{s:s, s:s, s:[s, s]}", "id", ids[i], "source", "test", "turns", texts[i], "ignored");
        char *s = json_dumps(j, 0);
        fprintf(fp, "%s\n%s", s, i == 1 ? "\n" : "");
        free(s);
        json_decref(j);
    }
    fclose(fp);
}

static void cleanup(void) {
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static char out_buf[1 << 16], err_buf[1 << 16];

/* build/ppd distill -f PROMPTS -o OUT -m MODEL -t 2 plus extra args (NULL-ended). */
static int distill(const char *prompts, const char *out, ...) {
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)test_ppd_bin();
    argv[n++] = "distill";
    argv[n++] = "-f";
    argv[n++] = (char *)prompts;
    argv[n++] = "-o";
    argv[n++] = (char *)out;
    argv[n++] = "-m";
    argv[n++] = (char *)test_model_path();
    argv[n++] = "-t";
    argv[n++] = "2";
    va_list ap;
    va_start(ap, out);
    for (const char *a; (a = va_arg(ap, const char *)) && n < 39;) argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return test_run_capture(argv, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
}

static char *slurp(const char *path) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    static char buf[1 << 18];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    return strdup(buf);
}

/* The file's lines as parsed JSON (every line must parse); returns the count. */
static int load_lines(const char *path, json_t **lines, int cap) {
    char *text = slurp(path), *save = NULL;
    int n = 0;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        ck_assert_int_lt(n, cap);
        json_error_t je;
        lines[n] = json_loads(l, 0, &je);
        ck_assert_msg(lines[n] != NULL, "%s line %d is not JSON: %s", path, n + 1, je.text);
        n++;
    }
    free(text);
    return n;
}

static const char *prompt_text(const char *id) {
    for (int i = 0; i < N_PROMPTS; i++)
        if (!strcmp(ids[i], id)) return texts[i];
    ck_abort_msg("record id '%s' is not in the prompt file", id);
    return NULL;
}

START_TEST(test_answers_equal_generate) {
    setup_prompts();
    char out[300];
    snprintf(out, sizeof out, "%s/out.jsonl", dir);
    int rc = distill(prompts_path, out, "--count", "3", "-n", "12", "--seed", "7", NULL);
    ck_assert_msg(rc == 0, "distill: %d %s", rc, err_buf);
    json_t *lines[8];
    int n = load_lines(out, lines, 8);
    ck_assert_int_eq(n, 4);

    /* header: the documented fields, in order, with their values */
    static const char *const keys[] = {"ppd_distill", "model", "fingerprint", "prompts", "prompts_sha256",
                                       "seed", "count", "max_tokens", "max_prompt"};
    const char *key;
    json_t *v;
    int k = 0;
    json_object_foreach(lines[0], key, v) {
        ck_assert_int_lt(k, 9);
        ck_assert_str_eq(key, keys[k++]);
    }
    ck_assert_int_eq(k, 9);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "ppd_distill")), 1);
    ck_assert(json_is_string(json_object_get(lines[0], "model")));
    const char *fp = json_string_value(json_object_get(lines[0], "fingerprint"));
    ck_assert_msg(fp && strlen(fp) == 18 && !strncmp(fp, "0x", 2) && strspn(fp + 2, "0123456789abcdef") == 16,
                  "fingerprint %s", fp ? fp : "(none)");
    ck_assert_str_eq(json_string_value(json_object_get(lines[0], "prompts")), prompts_path);
    char *ptext = slurp(prompts_path), sha[ENG_SHA256_HEX];
    eng_sha256_hex(ptext, strlen(ptext), sha);
    free(ptext);
    ck_assert_str_eq(json_string_value(json_object_get(lines[0], "prompts_sha256")), sha);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "seed")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "count")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "max_tokens")), 12);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "max_prompt")), 768);

    /* records: distinct prompts of the file, each answer what generate gives alone */
    for (int i = 1; i < n; i++) {
        const char *id = json_string_value(json_object_get(lines[i], "id"));
        ck_assert_ptr_nonnull(id);
        for (int j = 1; j < i; j++) ck_assert_str_ne(id, json_string_value(json_object_get(lines[j], "id")));
        char *g[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)test_model_path(), "--chat", "-p",
                     (char *)prompt_text(id), "-n", "12", "-t", "2", "--no-ppd", "--json", NULL};
        rc = test_run_capture(g, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
        ck_assert_msg(rc == 0, "generate: %d %s", rc, err_buf);
        json_t *gj = json_loads(out_buf, 0, NULL);
        ck_assert_ptr_nonnull(gj);
        json_t *ans = json_object_get(lines[i], "answer");
        char *a = json_dumps(ans, JSON_COMPACT), *b = json_dumps(json_object_get(gj, "tokens"), JSON_COMPACT);
        ck_assert_msg(json_equal(ans, json_object_get(gj, "tokens")), "'%s': distill %s, generate %s", id, a, b);
        free(a);
        free(b);
        ck_assert_int_eq((int)json_array_size(json_object_get(lines[i], "prompt")),
                         (int)json_integer_value(json_object_get(gj, "n_prompt")));
        const char *fin = json_string_value(json_object_get(lines[i], "finish"));
        const char *gfin = json_string_value(json_object_get(gj, "finish_reason"));
        ck_assert_str_eq(fin, !strcmp(gfin, "stop") ? "eog" : "length");
        json_decref(gj);
    }
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    cleanup();
}
END_TEST

START_TEST(test_resume) {
    setup_prompts();
    char out[300], fresh[300];
    snprintf(out, sizeof out, "%s/out.jsonl", dir);
    snprintf(fresh, sizeof fresh, "%s/fresh.jsonl", dir);
    int rc = distill(prompts_path, out, "--count", "2", "-n", "6", NULL);
    ck_assert_msg(rc == 0, "distill --count 2: %d %s", rc, err_buf);
    char *first = slurp(out);
    rc = distill(prompts_path, out, "--count", "3", "-n", "6", NULL);
    ck_assert_msg(rc == 0, "distill --count 3: %d %s", rc, err_buf);
    ck_assert_msg(strstr(err_buf, "2 record(s) kept") && strstr(err_buf, "1 answered, 2 resumed"),
                  "stderr does not report the resume: %s", err_buf);
    char *second = slurp(out);
    /* the records after the header are kept byte for byte */
    const char *r1 = strchr(first, '\n') + 1, *r2 = strchr(second, '\n') + 1;
    ck_assert_msg(!strncmp(r1, r2, strlen(r1)), "the kept records changed");
    json_t *lines[8];
    int n = load_lines(out, lines, 8);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "count")), 3);
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    /* and the whole file equals a fresh --count 3 run */
    rc = distill(prompts_path, fresh, "--count", "3", "-n", "6", NULL);
    ck_assert_msg(rc == 0, "fresh distill: %d %s", rc, err_buf);
    char *third = slurp(fresh);
    ck_assert_str_eq(second, third);
    /* a partial last line (an interrupted write) is dropped and regenerated */
    FILE *fp = fopen(out, "wb");
    fwrite(second, 1, strlen(second) - 10, fp);
    fclose(fp);
    rc = distill(prompts_path, out, "--count", "3", "-n", "6", NULL);
    ck_assert_msg(rc == 0 && strstr(err_buf, "incomplete last line"), "distill after a cut: %d %s", rc, err_buf);
    char *fourth = slurp(out);
    ck_assert_str_eq(fourth, third);
    /* --skip 2 --count 1 answers exactly the third prompt of the selection (the
     * held-out data of `make adapter`), and its header says so */
    char skipped[300];
    snprintf(skipped, sizeof skipped, "%s/skipped.jsonl", dir);
    rc = distill(prompts_path, skipped, "--skip", "2", "--count", "1", "-n", "6", NULL);
    ck_assert_msg(rc == 0, "distill --skip 2: %d %s", rc, err_buf);
    json_t *all[4], *sk[2];
    ck_assert_int_eq(load_lines(fresh, all, 4), 4);
    ck_assert_int_eq(load_lines(skipped, sk, 2), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(sk[0], "skip")), 2);
    ck_assert_msg(json_equal(sk[1], all[3]), "the --skip 2 record is not the third of the selection");
    for (int i = 0; i < 4; i++) json_decref(all[i]);
    for (int i = 0; i < 2; i++) json_decref(sk[i]);
    /* resuming it without --skip is another selection: refused, naming the field */
    rc = distill(prompts_path, skipped, "--count", "1", "-n", "6", NULL);
    ck_assert_msg(rc == 1 && strstr(err_buf, "skip"), "resume without --skip: %d %s", rc, err_buf);
    rc = distill(prompts_path, skipped, "--skip", "9", "-n", "6", "--force", NULL);
    ck_assert_msg(rc == 1 && strstr(err_buf, "--skip 9 leaves none"), "--skip past the end: %d %s", rc, err_buf);
    free(first);
    free(second);
    free(third);
    free(fourth);
    cleanup();
}
END_TEST

START_TEST(test_header_mismatch) {
    setup_prompts();
    char out[300];
    snprintf(out, sizeof out, "%s/out.jsonl", dir);
    int rc = distill(prompts_path, out, "--count", "1", "-n", "4", NULL);
    ck_assert_msg(rc == 0, "distill: %d %s", rc, err_buf);
    char *before = slurp(out);
    rc = distill(prompts_path, out, "--count", "1", "-n", "5", NULL);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "different max_tokens") && strstr(err_buf, "--force"), "%s", err_buf);
    rc = distill(prompts_path, out, "--count", "1", "-n", "4", "--seed", "2", "--max-prompt", "100", NULL);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "different seed"), "the first differing field is seed: %s", err_buf);
    char *after = slurp(out);
    ck_assert_str_eq(before, after);   /* a refused run leaves the file alone */
    rc = distill(prompts_path, out, "--count", "1", "-n", "5", "--force", NULL);
    ck_assert_msg(rc == 0, "--force: %d %s", rc, err_buf);
    json_t *lines[4];
    int n = load_lines(out, lines, 4);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(json_integer_value(json_object_get(lines[0], "max_tokens")), 5);
    for (int i = 0; i < n; i++) json_decref(lines[i]);
    /* a file that is not a distill output is never taken over without --force */
    write_file(out, "{\"something\": \"else\"}\n");
    rc = distill(prompts_path, out, "--count", "1", "-n", "5", NULL);
    ck_assert_msg(rc == 1 && strstr(err_buf, "not a ppd distill output"), "%d %s", rc, err_buf);
    free(before);
    free(after);
    cleanup();
}
END_TEST

START_TEST(test_bad_input) {
    setup_prompts();
    char bad[300], out[300], want[400];
    snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
    snprintf(out, sizeof out, "%s/out.jsonl", dir);
    static const struct { const char *text, *why; int line; } cases[] = {
        {"{\"id\": \"a\", \"turns\": [\"x\"]}\n{\"id\": \"b\", \"turns\": [\"y\"]\n", "expected", 2},
        {"{\"id\": \"a\", \"turns\": [\"x\"]}\n\n{\"turns\": [\"y\"]}\n", "\"id\"", 3},
        {"{\"id\": \"a\", \"turns\": []}\n", "\"turns\"[0]", 1},
        {"{\"id\": \"a\", \"turns\": [\"x\"]}\n[1, 2]\n", "not a JSON object", 2},
        {"{\"id\": \"a\", \"turns\": [\"x\"]}\n{\"id\": \"b\", \"turns\": \"y\"}\n", "\"turns\" array", 2},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(bad, cases[i].text);
        int rc = distill(bad, out, NULL);
        snprintf(want, sizeof want, "%s:%d:", bad, cases[i].line);
        ck_assert_msg(rc == 1 && strstr(err_buf, want) && strstr(err_buf, cases[i].why),
                      "case %u: rc %d, stderr: %s", i, rc, err_buf);
        ck_assert_int_ne(access(out, F_OK), 0);   /* nothing written */
    }
    write_file(bad, "\n  \n");
    int rc = distill(bad, out, NULL);
    ck_assert_msg(rc == 1 && strstr(err_buf, "no prompts"), "empty file: %d %s", rc, err_buf);
    snprintf(want, sizeof want, "%s/missing.jsonl", dir);
    rc = distill(want, out, NULL);
    ck_assert_msg(rc == 1 && strstr(err_buf, "cannot open"), "missing file: %d %s", rc, err_buf);
    char *noout[] = {(char *)test_ppd_bin(), "distill", "-f", prompts_path, NULL};
    rc = test_run_capture(noout, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
    ck_assert_int_eq(rc, 2);
    rc = distill(prompts_path, out, "--count", "0", NULL);
    ck_assert_int_eq(rc, 2);
    cleanup();
}
END_TEST

int main(void) {
    Suite *s = suite_create("distill_cli");
    TCase *tc = tcase_create("distill_cli");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, test_answers_equal_generate);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_header_mismatch);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
