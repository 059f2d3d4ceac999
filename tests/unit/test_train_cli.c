/* test_train_cli.c — `ppd train` as a user runs it, on a small distill file
 * the test writes for the default model: the same seed gives the same adapter
 * byte for byte (also with another thread count); stopping after two steps
 * and resuming from the checkpoint gives exactly the uninterrupted result;
 * the adapter carries measured hit rates and drives `ppd generate --ppd`;
 * data from another model, malformed lines and missing files exit 1 with a
 * message naming the problem.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/model/backend.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"

static char dir[] = "/tmp/ppd-train-cli-XXXXXX";
static char data_path[256], bad_fp_path[256], bad_line_path[256];

/* Token sequences from ordinary English-like ids; answers long enough for cuts. */
static void write_data(const char *path, const char *fingerprint, int bad_line) {
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp, "{\"ppd_distill\": 1, \"model\": \"test\", \"fingerprint\": \"%s\", \"seed\": 1}\n", fingerprint);
    for (int s = 0; s < 6; s++) {
        if (bad_line && s == 3) { fprintf(fp, "{\"id\": \"x\", \"prompt\": [1, 2], \"answer\": \"oops\"}\n"); continue; }
        fprintf(fp, "{\"id\": \"s%d\", \"prompt\": [1", s);
        for (int i = 0; i < 6 + s; i++) fprintf(fp, ", %d", 300 + 37 * i + 11 * s);
        fprintf(fp, "], \"answer\": [%d", 500 + s);
        for (int i = 0; i < 18 + 3 * s; i++) fprintf(fp, ", %d", 1000 + 53 * i + 7 * s);
        fprintf(fp, "], \"finish\": \"length\"}\n");
    }
    fclose(fp);
}

static void setup(void) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct eng_backend be;
    struct eng_model *m = NULL;
    char err[512], fpr[32];
    ck_assert_int_eq(eng_backend_cpu_init(&be, 1), 0);
    ck_assert_msg(eng_model_load(&m, test_model_path(), &be, err, sizeof err) == 0, "%s", err);
    snprintf(fpr, sizeof fpr, "0x%016llx", (unsigned long long)m->fingerprint);
    eng_model_free(m);
    eng_backend_free(&be);
    snprintf(data_path, sizeof data_path, "%s/data.jsonl", dir);
    snprintf(bad_fp_path, sizeof bad_fp_path, "%s/other.jsonl", dir);
    snprintf(bad_line_path, sizeof bad_line_path, "%s/bad.jsonl", dir);
    write_data(data_path, fpr, 0);
    write_data(bad_fp_path, "0x0123456789abcdef", 0);
    write_data(bad_line_path, fpr, 1);
}

static char out_buf[1 << 16], err_buf[1 << 16];

/* ppd train with the common small settings plus extra flags. */
static int train(const char *data, const char *out, const char *threads, const char *const *extra) {
    char *argv[48];
    int n = 0;
    const char *base[] = {test_ppd_bin(), "train", "-m", test_model_path(), "-d", data, "-o", out, "--force",
                          "--batch", "2", "--cuts", "4", "--val", "0.2", "--epochs", "3", "--seed", "5", "-t", threads};
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) argv[n++] = (char *)base[i];
    for (int i = 0; extra && extra[i]; i++) argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    return test_run_capture(argv, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
}

static char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *b = malloc(*n);
    ck_assert_uint_eq(fread(b, 1, *n, fp), *n);
    fclose(fp);
    return b;
}

static void same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    ck_assert_msg(na == nb && !memcmp(x, y, na), "%s and %s differ", a, b);
    free(x), free(y);
}

START_TEST(same_seed_same_adapter_and_resume_is_exact) {
    setup();
    char a[300], b[300], c[300], ck[300];
    snprintf(a, sizeof a, "%s/a.ppd.gguf", dir);
    snprintf(b, sizeof b, "%s/b.ppd.gguf", dir);
    snprintf(c, sizeof c, "%s/c.ppd.gguf", dir);
    snprintf(ck, sizeof ck, "%s/ck.gguf", dir);
    const char *steps[] = {"--steps", "4", NULL};
    int rc = train(data_path, a, "2", steps);
    ck_assert_msg(rc == 0, "train: %d %s", rc, err_buf);
    ck_assert_msg(strstr(out_buf, "\"steps\":4") != NULL, "%s", out_buf);
    rc = train(data_path, b, "1", steps);
    ck_assert_msg(rc == 0, "train: %d %s", rc, err_buf);
    same_file(a, b);   /* one thread or two: the same bytes */

    const char *part1[] = {"--steps", "4", "--checkpoint", ck, "--stop-after", "2", NULL};
    rc = train(data_path, c, "2", part1);
    ck_assert_msg(rc == 0 && strstr(out_buf, "\"steps\":2"), "part 1: %d %s %s", rc, out_buf, err_buf);
    const char *part2[] = {"--steps", "4", "--checkpoint", ck, "--resume", NULL};
    rc = train(data_path, c, "2", part2);
    ck_assert_msg(rc == 0 && strstr(out_buf, "\"steps\":4"), "part 2: %d %s %s", rc, out_buf, err_buf);
    /* the embeddings are the same; provenance is too, so the whole file */
    same_file(a, c);

    /* a resume with other settings is refused, naming the setting */
    const char *other[] = {"--steps", "4", "--checkpoint", ck, "--resume", "--seed", "6", NULL};
    rc = train(data_path, c, "2", other);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "train.seed") != NULL, "%s", err_buf);
    const char *other_loss[] = {"--steps", "4", "--checkpoint", ck, "--resume", "--loss", "ce", NULL};
    rc = train(data_path, c, "2", other_loss);
    ck_assert_msg(rc == 1 && strstr(err_buf, "train.loss_ce") && strstr(err_buf, "KL loss, not CE"), "%d %s", rc, err_buf);

    /* the adapter has hit rates and drives PPD generation */
    struct eng_ppd_adapter *ad = NULL;
    char err[512];
    ck_assert_msg(eng_ppd_adapter_load(&ad, a, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_nonnull(ad->accuracy);
    ck_assert_int_eq(ad->n_prompt, 3);
    ck_assert_msg(strstr(ad->provenance, "ppd train") != NULL, "%s", ad->provenance);
    eng_ppd_adapter_free(ad);
    char *gen[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)test_model_path(), "-p", "Hello", "-n", "8",
                   "--ppd", a, "--json", NULL};
    rc = test_run_capture(gen, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
    ck_assert_msg(rc == 0 && strstr(out_buf, "\"ppd\":true"), "generate: %d %s %s", rc, out_buf, err_buf);

    /* --measure-only: the same embeddings and provenance, hit rates measured
     * again, and a rank joint whose marginals are those hit rates */
    char d[300];
    snprintf(d, sizeof d, "%s/d.ppd.gguf", dir);
    const char *measure[] = {"--measure-only", "--init", a, "--val", "1", NULL};
    rc = train(data_path, d, "2", measure);
    ck_assert_msg(rc == 0 && strstr(out_buf, "\"steps\":0"), "measure: %d %s %s", rc, out_buf, err_buf);
    struct eng_ppd_adapter *da = NULL;
    ck_assert_msg(eng_ppd_adapter_load(&ad, a, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(eng_ppd_adapter_load(&da, d, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(ad->emb, da->emb, sizeof(float) * 3 * (size_t)ad->n_embd), 0);
    /* the training's provenance, plus where the hit rates were measured */
    ck_assert_msg(!strncmp(da->provenance, ad->provenance, strlen(ad->provenance)) &&
                      strstr(da->provenance, "; hit rates measured on data.jsonl (6 sequences x 4 cuts)"),
                  "%s", da->provenance);
    ck_assert_ptr_nonnull(da->joint);
    const int K = da->topk, nj = eng_ppd_joint_size(3, K);
    double marg[3][64] = {{0}}, sum = 0;
    for (int idx = 0; idx < nj; idx++) {
        sum += da->joint[idx];
        for (int i = 0, x = idx; i < 3; i++, x /= K + 1)
            if (x % (K + 1) < K) marg[i][x % (K + 1)] += da->joint[idx];
    }
    ck_assert(fabs(sum - 1.0) < 1e-5);
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < K; k++)
            ck_assert_msg(fabs(marg[i][k] - da->accuracy[i * K + k]) < 1e-5, "prompt %d rank %d: joint %g, accuracy %g",
                          i, k, marg[i][k], da->accuracy[i * K + k]);
    eng_ppd_adapter_free(ad);
    eng_ppd_adapter_free(da);
    /* --deep: a vector per layer and prompt token, saved with the adapter,
     * continued from it, and run by PPD generation */
    char e[300];
    snprintf(e, sizeof e, "%s/e.ppd.gguf", dir);
    const char *deep[] = {"--steps", "2", "--deep", NULL};
    rc = train(data_path, e, "2", deep);
    ck_assert_msg(rc == 0, "train --deep: %d %s", rc, err_buf);
    ck_assert_msg(eng_ppd_adapter_load(&da, e, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_nonnull(da->deep);
    ck_assert_int_eq(da->n_deep, 29);   /* the default model's 30 layers, the first being the embedding */
    double dn = 0;
    for (int i = 0; i < da->n_deep * 3 * da->n_embd; i++) dn += fabs(da->deep[i]);
    ck_assert_msg(dn > 0, "the deep vectors were not trained");
    ck_assert_msg(strstr(da->provenance, "deep prompts"), "%s", da->provenance);
    eng_ppd_adapter_free(da);
    const char *more[] = {"--steps", "2", "--init", e, NULL};   /* continues deep without --deep */
    rc = train(data_path, d, "2", more);
    ck_assert_msg(rc == 0, "train --init deep: %d %s", rc, err_buf);
    ck_assert_msg(eng_ppd_adapter_load(&da, d, NULL, err, sizeof err) == 0 && da->deep, "%s", err);
    eng_ppd_adapter_free(da);
    char *gen_deep[] = {(char *)test_ppd_bin(), "generate", "-m", (char *)test_model_path(), "-p", "Hello", "-n", "8",
                        "--ppd", e, "--json", NULL};
    rc = test_run_capture(gen_deep, out_buf, sizeof out_buf, err_buf, sizeof err_buf);
    ck_assert_msg(rc == 0 && strstr(out_buf, "\"ppd\":true"), "generate deep: %d %s %s", rc, out_buf, err_buf);

    const char *no_init[] = {"--measure-only", NULL};
    rc = train(data_path, d, "2", no_init);
    ck_assert_msg(rc == 2 && strstr(err_buf, "--measure-only needs --init"), "%d %s", rc, err_buf);
}
END_TEST

START_TEST(bad_data_is_refused_clearly) {
    setup();
    char a[300];
    snprintf(a, sizeof a, "%s/x.ppd.gguf", dir);
    const char *steps[] = {"--steps", "1", NULL};
    int rc = train(bad_fp_path, a, "1", steps);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "0x0123456789abcdef") && strstr(err_buf, "fingerprint"), "%s", err_buf);
    rc = train(bad_line_path, a, "1", steps);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "bad.jsonl:5") != NULL, "%s", err_buf);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.jsonl", dir);
    rc = train(missing, a, "1", steps);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err_buf, "none.jsonl") != NULL, "%s", err_buf);
    ck_assert_int_ne(access(a, F_OK), 0);   /* nothing written */
    char *noargs[] = {(char *)test_ppd_bin(), "train", NULL};
    ck_assert_int_eq(test_run_capture(noargs, out_buf, sizeof out_buf, err_buf, sizeof err_buf), 2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train_cli");
    TCase *tc = tcase_create("cli");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, same_seed_same_adapter_and_resume_is_exact);
    tcase_add_test(tc, bad_data_is_refused_clearly);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
