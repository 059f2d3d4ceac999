/* test_ppd_adapter.c — PPD adapter files: round trip, text initialisation, the
 * base-model check, and broken files giving a clear error (never a crash). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/model/backend.h"
#include "engine/err.h"
#include "engine/load/gguf.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/load/tokenizer.h"

static struct eng_ppd_adapter *make_adapter(int n, int k, int h, int with_acc) {
    struct eng_ppd_adapter *a = calloc(1, sizeof *a);
    a->n_prompt = n;
    a->topk = k;
    a->n_embd = h;
    a->emb = malloc(sizeof(float) * (size_t)n * h);
    for (int i = 0; i < n * h; i++) a->emb[i] = (float)sin(i * 0.37) * 0.25f;
    if (with_acc) {
        a->accuracy = malloc(sizeof(float) * (size_t)n * k);
        for (int i = 0; i < n * k; i++) a->accuracy[i] = 0.5f / (float)(1 + i);
        const int nj = eng_ppd_joint_size(n, k);   /* a distribution: 1/2 on "all missed", the rest spread */
        a->joint = malloc(sizeof(float) * (size_t)nj);
        for (int i = 0; i < nj; i++) a->joint[i] = i == nj - 1 ? 0.5f : 0.5f / (float)(nj - 1);
        a->n_deep = 2;   /* deep prompts for a 3-layer model */
        a->deep = malloc(sizeof(float) * 2 * (size_t)n * h);
        for (int i = 0; i < 2 * n * h; i++) a->deep[i] = (float)cos(i * 0.11) * 0.1f;
    }
    snprintf(a->base_name, sizeof a->base_name, "test-model");
    a->base_fingerprint = 0x0123456789abcdefull;
    snprintf(a->provenance, sizeof a->provenance, "unit test");
    return a;
}

START_TEST(test_round_trip) {
    char path[] = "/tmp/ppd-adapter-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char err[512];
    for (int acc = 0; acc < 2; acc++) {
        struct eng_ppd_adapter *a = make_adapter(3, 10, 64, acc), *b = NULL;
        a->tree_budget = acc ? 12 : 0;   /* the tuned tree budget travels with the file when set */
        ck_assert_int_eq(eng_ppd_adapter_save(a, path, err, sizeof err), 0);
        int rc = eng_ppd_adapter_load(&b, path, NULL, err, sizeof err);
        ck_assert_msg(rc == 0, "load: %s", err);
        ck_assert_int_eq(b->n_prompt, 3);
        ck_assert_int_eq(b->topk, 10);
        ck_assert_int_eq(b->n_embd, 64);
        ck_assert(b->base_fingerprint == a->base_fingerprint);
        ck_assert_str_eq(b->base_name, "test-model");
        ck_assert_str_eq(b->provenance, "unit test");
        ck_assert_int_eq(memcmp(a->emb, b->emb, sizeof(float) * 3 * 64), 0);
        ck_assert_int_eq(!!b->accuracy, acc);
        ck_assert_int_eq(b->tree_budget, acc ? 12 : 0);
        ck_assert_int_eq(!!b->joint, acc);
        if (acc) ck_assert_int_eq(memcmp(a->accuracy, b->accuracy, sizeof(float) * 30), 0);
        if (acc) ck_assert_int_eq(memcmp(a->joint, b->joint, sizeof(float) * 1331), 0);
        ck_assert_int_eq(b->n_deep, acc ? 2 : 0);
        if (acc) ck_assert_int_eq(memcmp(a->deep, b->deep, sizeof(float) * 2 * 3 * 64), 0);
        eng_ppd_adapter_free(a);
        eng_ppd_adapter_free(b);
    }
    unlink(path);
}
END_TEST

/* Every proper prefix of a good file and a set of single-byte flips must load
 * or fail with a message; never crash, never succeed with a wrong shape. */
START_TEST(test_corrupt_files) {
    char good[] = "/tmp/ppd-adapter-XXXXXX", bad[] = "/tmp/ppd-adapter-bad-XXXXXX";
    int fd = mkstemp(good);
    close(fd);
    fd = mkstemp(bad);
    close(fd);
    char err[512];
    /* K = 3: the last tensor (the rank joint, 4^2 floats) fills whole 32-byte
     * alignment units, so no prefix only loses trailing padding */
    struct eng_ppd_adapter *a = make_adapter(2, 3, 8, 1), *b = NULL;
    ck_assert_int_eq(eng_ppd_adapter_save(a, good, err, sizeof err), 0);
    FILE *f = fopen(good, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    ck_assert_int_eq((long)fread(buf, 1, (size_t)n, f), n);
    fclose(f);
    for (long cut = 0; cut < n; cut += (cut < 400 ? 1 : 7)) {
        f = fopen(bad, "wb");
        fwrite(buf, 1, (size_t)cut, f);
        fclose(f);
        err[0] = 0;
        int rc = eng_ppd_adapter_load(&b, bad, NULL, err, sizeof err);
        ck_assert_msg(rc < 0, "prefix %ld of %ld loaded", cut, n);
        ck_assert_ptr_null(b);
        ck_assert_msg(strstr(err, bad) != NULL, "message without the file name: %s", err);
    }
    for (long at = 0; at < n; at += 3) {
        unsigned char save = buf[at];
        buf[at] ^= 0x5a;
        f = fopen(bad, "wb");
        fwrite(buf, 1, (size_t)n, f);
        fclose(f);
        buf[at] = save;
        err[0] = 0;
        int rc = eng_ppd_adapter_load(&b, bad, NULL, err, sizeof err);
        if (rc == 0) {
            ck_assert(b->n_prompt >= 1 && b->topk >= 1 && b->n_embd >= 1);
            eng_ppd_adapter_free(b);
            b = NULL;
        } else {
            ck_assert(err[0] != 0);
        }
    }
    free(buf);
    eng_ppd_adapter_free(a);
    unlink(good);
    unlink(bad);
}
END_TEST

/* Files with a field missing or wrong, built with the writer. */
START_TEST(test_bad_fields) {
    char path[] = "/tmp/ppd-adapter-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char err[512];
    float emb[2 * 8] = {0}, acc_bad[2 * 4] = {0.5f, 2.0f}, joint_bad[5 * 5] = {0.5f, 0.25f}, joint_neg[5 * 5] = {1.5f, -0.5f};
    emb[3] = NAN;
    float deep_nan[2 * 2 * 8] = {0};
    deep_nan[5] = NAN;
    for (int c = 0; c < 11; c++) {
        struct gguf_writer *w = gguf_writer_new();
        uint64_t fp = 1;
        int64_t ne_e[2] = {8, 2}, ne_wrong[2] = {8, 3}, ne_a[2] = {4, 2}, ne_j[1] = {25}, ne_j_wrong[1] = {24};
        if (c != 0) gguf_writer_set_u32(w, "ppd.n_prompt", 2);
        gguf_writer_set_u32(w, "ppd.topk", c == 1 ? 1000 : 4);
        gguf_writer_set_str(w, "ppd.base.name", "m");
        if (c != 2) gguf_writer_set_scalar(w, "ppd.base.fingerprint", GGUF_VT_UINT64, &fp);
        gguf_writer_add_tensor(w, "ppd.prompt_embeddings", 0, 2, c == 3 ? ne_wrong : ne_e, c == 4 ? emb : NULL);
        if (c == 5) gguf_writer_add_tensor(w, "ppd.accuracy", 0, 2, ne_a, acc_bad);
        if (c == 6) gguf_writer_add_tensor(w, "ppd.rank_joint", 0, 1, ne_j, joint_bad);
        if (c == 7) gguf_writer_add_tensor(w, "ppd.rank_joint", 0, 1, ne_j, joint_neg);
        if (c == 8) gguf_writer_add_tensor(w, "ppd.rank_joint", 0, 1, ne_j_wrong, NULL);
        int64_t ne_d[3] = {8, 2, 2}, ne_d_wrong[2] = {8, 2};
        if (c == 9) gguf_writer_add_tensor(w, "ppd.deep_prompts", 0, 2, ne_d_wrong, NULL);
        if (c == 10) gguf_writer_add_tensor(w, "ppd.deep_prompts", 0, 3, ne_d, deep_nan);
        ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
        gguf_writer_free(w);
        struct eng_ppd_adapter *b = NULL;
        err[0] = 0;
        int rc = eng_ppd_adapter_load(&b, path, NULL, err, sizeof err);
        ck_assert_msg(rc == ENG_E_FORMAT, "case %d: rc %d (%s)", c, rc, err);
        static const char *want[] = {"ppd.n_prompt", "ppd.topk", "ppd.base.fingerprint", "ppd.prompt_embeddings",
                                     "not finite", "not a probability", "ppd.rank_joint: sums to 0.75",
                                     "ppd.rank_joint: element 0 = 1.5 is not a probability", "ppd.rank_joint: shape",
                                     "ppd.deep_prompts: want F32 [layers, 2, 8]", "ppd.deep_prompts: element 5 is not finite"};
        ck_assert_msg(strstr(err, want[c]) != NULL, "case %d: '%s' lacks '%s'", c, err, want[c]);
    }
    unlink(path);
}
END_TEST

START_TEST(test_init_text_and_base_check) {
    char err[768];
    struct eng_backend be;
    struct eng_model *m = NULL;
    struct tok *t = NULL;
    ck_assert_int_eq(eng_backend_cpu_init(&be, 1), 0);
    int rc = eng_model_load(&m, test_model_path(), &be, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(tok_load(&t, m->gguf, err, sizeof err), 0);
    struct eng_ppd_adapter *a = NULL, *b = NULL;
    ck_assert_int_eq(eng_ppd_adapter_init_text(&a, m, t, 5, 10, ENG_PPD_INIT_TEXT, err, sizeof err), 0);
    ck_assert_int_eq(a->n_embd, m->hp.n_embd);
    ck_assert(a->base_fingerprint == m->fingerprint);
    /* The rows are the embeddings of the init text's tokens, cyclically repeated. */
    int32_t ids[16];
    int n_ids = 0;
    ck_assert_int_eq(tok_encode(t, ENG_PPD_INIT_TEXT, strlen(ENG_PPD_INIT_TEXT), true, false, ids, 16, &n_ids), 0);
    ck_assert_int_ge(n_ids, 1);
    float *row = malloc(sizeof(float) * (size_t)m->hp.n_embd);
    for (int i = 0; i < 5; i++) {
        int32_t id = ids[i % n_ids];
        be.iface->embed(be.ctx, &m->tok_embd, &id, 1, NULL, 0, row);
        ck_assert_int_eq(memcmp(row, a->emb + (size_t)i * m->hp.n_embd, sizeof(float) * (size_t)m->hp.n_embd), 0);
    }
    free(row);
    char path[] = "/tmp/ppd-adapter-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    ck_assert_int_eq(eng_ppd_adapter_save(a, path, err, sizeof err), 0);
    rc = eng_ppd_adapter_load(&b, path, m, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    eng_ppd_adapter_free(b);
    b = NULL;
    /* The same file claimed for another model is refused, naming both. */
    a->base_fingerprint ^= 1;
    snprintf(a->base_name, sizeof a->base_name, "Vicuna 7B v1.3");
    ck_assert_int_eq(eng_ppd_adapter_save(a, path, err, sizeof err), 0);
    rc = eng_ppd_adapter_load(&b, path, m, err, sizeof err);
    ck_assert_int_eq(rc, ENG_E_INVALID);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err, "Vicuna 7B v1.3") && strstr(err, m->name), "%s", err);
    char def[256];
    ck_assert_int_eq(eng_ppd_adapter_default_path("models/x.Q4_1.gguf", def, sizeof def), 0);
    ck_assert_str_eq(def, "models/x.ppd.gguf");
    const char *cases[][2] = {{"x.gguf", "x.ppd.gguf"}, {"m/a.b.gguf", "m/a.b.ppd.gguf"},
                              {"m/A-7B.Q4_K_M.gguf", "m/A-7B.ppd.gguf"}, {"m/A.f16.gguf", "m/A.ppd.gguf"},
                              {"m/A.IQ2_XS.gguf", "m/A.ppd.gguf"}, {"m/.Q4_1.gguf", "m/.Q4_1.ppd.gguf"},
                              {"q4.d/A.Qx.gguf", "q4.d/A.Qx.ppd.gguf"}, {"m/A.Q8_0", "m/A.ppd.gguf"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_int_eq(eng_ppd_adapter_default_path(cases[i][0], def, sizeof def), 0);
        ck_assert_str_eq(def, cases[i][1]);
    }
    unlink(path);
    eng_ppd_adapter_free(a);
    tok_free(t);
    eng_model_free(m);
    eng_backend_free(&be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ppd_adapter");
    TCase *tc = tcase_create("ppd_adapter");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_corrupt_files);
    tcase_add_test(tc, test_bad_fields);
    tcase_add_test(tc, test_init_text_and_base_check);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
