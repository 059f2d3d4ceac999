/* test_ppd_import.c — importing the paper's PEFT adapters
 * (engine/ppd/ppd_import.h, `ppd adapter import`): the golden adapters written by
 * the real `safetensors` package (tests/golden/gen_peft_adapter.py) give
 * exactly numpy's f32 values for F32, F16 and BF16; the result saves, loads
 * for the default model and drives `ppd generate --ppd`; V > 1 is refused
 * unless one ensemble member is named; a wrong hidden size, a missing or
 * contradicting config, corrupt safetensors and unsupported PEFT variants give
 * clear errors, never a crash. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/model/backend.h"
#include "engine/err.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_import.h"

#define GOLDEN "tests/golden/data/peft/"
#define H 576

static struct eng_backend be;
static struct eng_model *model;

static void setup(void) {
    char err[512];
    ck_assert_int_eq(eng_backend_cpu_init(&be, 1), 0);
    int rc = eng_model_load(&model, test_model_path(), &be, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(model->hp.n_embd, H);
}

static void teardown(void) {
    eng_model_free(model);
    model = NULL;
    eng_backend_free(&be);
}

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

static void write_all(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

static void write_str(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_all(p, text, strlen(text));
}

static void copy_file(const char *from, const char *dir, const char *name) {
    size_t n;
    void *b = read_all(from, &n);
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_all(p, b, n);
    free(b);
}

/* An empty scratch directory; remove_dir deletes it with what the tests put there. */
static void make_dir(char *tmpl) {
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
}

static void remove_dir(const char *dir) {
    static const char *names[] = {"adapter_model.safetensors", "adapter_config.json", "adapter_model.bin",
                                  "other.json", "out.ppd.gguf"};
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    ck_assert_int_eq(rmdir(dir), 0);
}

/* A safetensors file from a header and data of the given size (zeros unless data). */
static void write_st(const char *dir, const char *header, const void *data, size_t data_size) {
    size_t n = strlen(header);
    uint8_t *b = calloc(1, 8 + n + data_size);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    if (data) memcpy(b + 8 + n, data, data_size);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    write_all(p, b, 8 + n + data_size);
    free(b);
}

static float *expected(const char *dir) {
    char p[256];
    snprintf(p, sizeof p, GOLDEN "%s/expected.f32", dir);
    size_t n;
    float *e = read_all(p, &n);
    ck_assert_uint_eq(n, sizeof(float) * 3 * H);
    return e;
}

static int import(const char *path, int n_prompt, int member, struct eng_ppd_adapter **out, char *err, size_t cap) {
    struct eng_ppd_import_opts o = ENG_PPD_IMPORT_OPTS_DEFAULT;
    o.n_prompt = n_prompt;
    o.ensemble_member = member;
    return eng_ppd_adapter_import(out, path, model, &o, err, cap);
}

static void expect_error(const char *path, int n_prompt, int member, int want_rc, const char *want1,
                         const char *want2) {
    struct eng_ppd_adapter *a = (struct eng_ppd_adapter *)1;
    char err[1024];
    int rc = import(path, n_prompt, member, &a, err, sizeof err);
    ck_assert_msg(rc == want_rc, "%s: got %s (want %s): %s", path, eng_err_name(rc), eng_err_name(want_rc), err);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(err, want1) != NULL, "'%s' lacks '%s'", err, want1);
    if (want2) ck_assert_msg(strstr(err, want2) != NULL, "'%s' lacks '%s'", err, want2);
}

/* Import, check every value bitwise, save, load back for the model. */
static void check_import(const char *path, const char *golden, int n_prompt) {
    struct eng_ppd_adapter *a = NULL, *b = NULL;
    char err[1024];
    int rc = import(path, n_prompt, -1, &a, err, sizeof err);
    ck_assert_msg(rc == 0, "%s: %s", path, err);
    ck_assert_int_eq(a->n_prompt, 3);
    ck_assert_int_eq(a->topk, 10);
    ck_assert_int_eq(a->n_embd, H);
    ck_assert_ptr_null(a->accuracy);
    ck_assert(a->base_fingerprint == model->fingerprint);
    ck_assert_str_eq(a->base_name, model->name);
    ck_assert_msg(strstr(a->provenance, "imported from ") && strstr(a->provenance, path), "%s", a->provenance);
    float *e = expected(golden);
    int bad = 0;
    for (int i = 0; i < 3 * H; i++) bad += memcmp(&a->emb[i], &e[i], sizeof(float)) != 0;
    printf("%s: %d of %d values differ from numpy's (bitwise); provenance: %s\n", path, bad, 3 * H, a->provenance);
    ck_assert_int_eq(bad, 0);

    char out[] = "/tmp/ppd-import-out-XXXXXX";
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_msg(eng_ppd_adapter_save(a, out, err, sizeof err) == 0, "%s", err);
    rc = eng_ppd_adapter_load(&b, out, model, err, sizeof err);
    ck_assert_msg(rc == 0, "load: %s", err);
    ck_assert_int_eq(memcmp(b->emb, e, sizeof(float) * 3 * H), 0);
    ck_assert_str_eq(b->provenance, a->provenance);
    unlink(out);
    free(e);
    eng_ppd_adapter_free(a);
    eng_ppd_adapter_free(b);
}

START_TEST(test_import_golden) {
    check_import(GOLDEN "f32", "f32", 0);
    check_import(GOLDEN "f16", "f16", 0);
    check_import(GOLDEN "bf16", "bf16", 0);   /* its config has no peft_type, as PPD leaves it */
    /* the safetensors file itself: its config is found beside it */
    check_import(GOLDEN "bf16/adapter_model.safetensors", "bf16", 0);
    /* --n-prompt agreeing with the config is fine */
    check_import(GOLDEN "f16", "f16", 3);
    struct eng_ppd_adapter *a = NULL;
    char err[1024];
    ck_assert_int_eq(import(GOLDEN "f32", 0, -1, &a, err, sizeof err), 0);
    ck_assert_msg(strstr(a->provenance, "base_model_name_or_path=HuggingFaceTB/SmolLM2-135M-Instruct"), "%s",
                  a->provenance);
    eng_ppd_adapter_free(a);
    /* an explicit config path (another file name) */
    char dir[] = "/tmp/ppd-import-cfg-XXXXXX";
    make_dir(dir);
    copy_file(GOLDEN "f16/adapter_model.safetensors", dir, "adapter_model.safetensors");
    copy_file(GOLDEN "f16/adapter_config.json", dir, "other.json");
    struct eng_ppd_import_opts o = ENG_PPD_IMPORT_OPTS_DEFAULT;
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/other.json", dir);
    o.config_path = cfg;
    o.topk = 5;
    ck_assert_msg(eng_ppd_adapter_import(&a, dir, model, &o, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a->topk, 5);
    eng_ppd_adapter_free(a);
    o.topk = 0;
    ck_assert_int_eq(eng_ppd_adapter_import(&a, dir, model, &o, err, sizeof err), ENG_E_RANGE);
    ck_assert_int_eq(eng_ppd_adapter_import(&a, dir, NULL, NULL, err, sizeof err), ENG_E_INVALID);
    remove_dir(dir);
}
END_TEST

/* V = 2: refused with the reason; one member imports that member's rows. */
START_TEST(test_ensemble) {
    expect_error(GOLDEN "v2", 0, -1, ENG_E_UNSUPPORTED, "V = 1 only", "--ensemble-member");
    expect_error(GOLDEN "v2", 0, 2, ENG_E_RANGE, "ensemble member 2", "0..1");
    expect_error(GOLDEN "f16", 0, 1, ENG_E_RANGE, "ensemble member 1", NULL);
    float *e = expected("f16");
    for (int j = 0; j < 2; j++) {
        struct eng_ppd_adapter *a = NULL;
        char err[1024];
        ck_assert_msg(import(GOLDEN "v2", 0, j, &a, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(a->n_prompt, 3);
        for (int i = 0; i < 3 * H; i++) {
            float want = j ? -e[i] : e[i];   /* member 1 holds the negated rows */
            ck_assert_msg(!memcmp(&a->emb[i], &want, sizeof want), "member %d element %d: %g, want %g", j, i,
                          a->emb[i], want);
        }
        char want_prov[64];
        snprintf(want_prov, sizeof want_prov, "ensemble member %d of V=2", j);
        ck_assert_msg(strstr(a->provenance, want_prov) != NULL, "%s", a->provenance);
        eng_ppd_adapter_free(a);
    }
    free(e);
}
END_TEST

/* A Vicuna-7B-sized adapter (H = 4096) for SmolLM2 (H = 576). */
START_TEST(test_wrong_hidden_size) {
    char dir[] = "/tmp/ppd-import-h-XXXXXX";
    make_dir(dir);
    write_st(dir, "{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[3,4096],\"data_offsets\":[0,24576]}}", NULL,
             24576);
    write_str(dir, "adapter_config.json",
              "{\"base_model_name_or_path\": \"lmsys/vicuna-7b-v1.3\", \"num_special_tokens\": 3,"
              " \"virtual_tokens_per_special_token\": 1, \"vt_attention_type\": \"ensemble\","
              " \"aggregation_type\": \"mean\", \"num_virtual_tokens\": 3, \"token_dim\": 4096}");
    expect_error(dir, 0, -1, ENG_E_INVALID, "hidden size 4096", "hidden size 576");
    expect_error(dir, 0, -1, ENG_E_INVALID, "lmsys/vicuna-7b-v1.3", NULL);
    /* token_dim contradicting the tensor */
    write_str(dir, "adapter_config.json", "{\"num_special_tokens\": 3, \"token_dim\": 576}");
    expect_error(dir, 0, -1, ENG_E_FORMAT, "token_dim", "4096");
    remove_dir(dir);
}
END_TEST

/* No config: N must be given (V = 1 assumed), and must match the rows. */
START_TEST(test_missing_config) {
    char dir[] = "/tmp/ppd-import-nocfg-XXXXXX", st[512];
    make_dir(dir);
    copy_file(GOLDEN "f16/adapter_model.safetensors", dir, "adapter_model.safetensors");
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
    expect_error(dir, 0, -1, ENG_E_NOT_FOUND, "adapter_config.json", "--n-prompt");
    expect_error(st, 0, -1, ENG_E_NOT_FOUND, "adapter_config.json", "--n-prompt");
    expect_error(dir, 2, -1, ENG_E_FORMAT, "3 rows", "2 prompt tokens");
    check_import(dir, "f16", 3);
    check_import(st, "f16", 3);
    /* a config without num_special_tokens (a plain PEFT prompt-tuning adapter) */
    write_str(dir, "adapter_config.json", "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 3}");
    expect_error(dir, 0, -1, ENG_E_FORMAT, "num_special_tokens: missing", NULL);
    check_import(dir, "f16", 3);
    /* --n-prompt contradicting the config */
    write_str(dir, "adapter_config.json", "{\"num_special_tokens\": 3}");
    expect_error(dir, 2, -1, ENG_E_INVALID, "num_special_tokens is 3", NULL);
    remove_dir(dir);
    /* neither safetensors nor anything at all */
    char empty[] = "/tmp/ppd-import-empty-XXXXXX";
    make_dir(empty);
    expect_error(empty, 3, -1, ENG_E_NOT_FOUND, "adapter_model.safetensors", NULL);
    write_str(empty, "adapter_model.bin", "PK");
    expect_error(empty, 3, -1, ENG_E_UNSUPPORTED, "adapter_model.bin", "safetensors");
    remove_dir(empty);
    expect_error("/nonexistent-ppd-dir/adapter", 3, -1, ENG_E_IO, "/nonexistent-ppd-dir/adapter", NULL);
}
END_TEST

/* Configs that are malformed or describe something other than a V = 1 PPD adapter. */
START_TEST(test_bad_configs) {
    static const struct { const char *cfg; int rc; const char *want; } cases[] = {
        {"{\"num_special_tokens\": 3", ENG_E_FORMAT, "JSON error"},
        {"[3]", ENG_E_FORMAT, "not a JSON object"},
        {"{\"num_special_tokens\": \"3\"}", ENG_E_FORMAT, "num_special_tokens: not an integer"},
        {"{\"num_special_tokens\": 0}", ENG_E_FORMAT, "num_special_tokens: 0 is outside"},
        {"{\"num_special_tokens\": 17}", ENG_E_RANGE, "at most 16"},
        {"{\"num_special_tokens\": 4}", ENG_E_FORMAT, "3 rows"},
        {"{\"num_special_tokens\": 3, \"num_special_tokens\": 3}", ENG_E_FORMAT, "JSON error"},
        {"{\"num_special_tokens\": 3, \"num_virtual_tokens\": 6}", ENG_E_FORMAT, "num_virtual_tokens: 6"},
        {"{\"num_special_tokens\": 3, \"virtual_tokens_per_special_token\": 0}", ENG_E_FORMAT,
         "virtual_tokens_per_special_token"},
        {"{\"num_special_tokens\": 3, \"peft_type\": \"LORA\"}", ENG_E_UNSUPPORTED, "LORA"},
        {"{\"num_special_tokens\": 3, \"vt_attention_type\": \"sideways\"}", ENG_E_FORMAT, "vt_attention_type"},
        {"{\"num_special_tokens\": 3, \"aggregation_type\": \"max\"}", ENG_E_FORMAT, "aggregation_type"},
        {"{\"num_special_tokens\": 3, \"aggregation_type\": 1}", ENG_E_FORMAT, "aggregation_type: not a string"},
        {"{\"num_special_tokens\": 3, \"use_prefix_tuning\": true}", ENG_E_UNSUPPORTED, "use_prefix_tuning"},
        {"{\"num_special_tokens\": 3, \"use_prefix_tuning\": 1}", ENG_E_FORMAT, "use_prefix_tuning"},
        {"{\"num_special_tokens\": 3, \"use_custom_lm_head\": true}", ENG_E_UNSUPPORTED, "use_custom_lm_head"},
        {"{\"num_special_tokens\": 3, \"num_exits\": 2}", ENG_E_UNSUPPORTED, "num_exits"},
        {"{\"num_special_tokens\": 1, \"virtual_tokens_per_special_token\": 3, \"aggregation_type\": "
         "\"weighted\"}", ENG_E_UNSUPPORTED, "aggregation weighted"},
    };
    char dir[] = "/tmp/ppd-import-badcfg-XXXXXX";
    make_dir(dir);
    copy_file(GOLDEN "f16/adapter_model.safetensors", dir, "adapter_model.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_str(dir, "adapter_config.json", cases[i].cfg);
        expect_error(dir, 0, -1, cases[i].rc, cases[i].want, "adapter_config.json");
    }
    /* upper-case enum values, nulls for absent fields: accepted */
    write_str(dir, "adapter_config.json",
              "{\"num_special_tokens\": 3, \"vt_attention_type\": \"ENSEMBLE\", \"aggregation_type\": null,"
              " \"token_dim\": null, \"base_model_name_or_path\": null}");
    check_import(dir, "f16", 0);
    /* V = 3 with a member: the rows of that member (rows 0..2 are one prompt token's three members here) */
    write_str(dir, "adapter_config.json", "{\"num_special_tokens\": 1, \"virtual_tokens_per_special_token\": 3}");
    struct eng_ppd_adapter *a = NULL;
    char err[1024];
    float *e = expected("f16");
    ck_assert_msg(import(dir, 0, 2, &a, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a->n_prompt, 1);
    ck_assert_int_eq(memcmp(a->emb, e + 2 * H, sizeof(float) * H), 0);
    eng_ppd_adapter_free(a);
    free(e);
    remove_dir(dir);
}
END_TEST

/* Corrupt or unusable safetensors next to a good config. */
START_TEST(test_bad_safetensors) {
    char dir[] = "/tmp/ppd-import-badst-XXXXXX";
    make_dir(dir);
    copy_file(GOLDEN "f16/adapter_config.json", dir, "adapter_config.json");
    size_t n;
    uint8_t *good = read_all(GOLDEN "f16/adapter_model.safetensors", &n);
    char st[512];
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
    /* cut short at a few places: header length, header, data */
    const size_t cuts[] = {0, 5, 8, 40, 100, n / 2, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(st, good, cuts[i]);
        expect_error(dir, 0, -1, ENG_E_FORMAT, st, NULL);
    }
    /* random flips in the header: a format error naming the file, or a clean import */
    uint32_t x = 99;
    int n_ok = 0;
    uint8_t *copy = malloc(n);
    for (int iter = 0; iter < 200; iter++) {
        memcpy(copy, good, n);
        x = x * 1664525u + 1013904223u;
        copy[8 + (x >> 8) % 112] ^= (uint8_t)(1u << ((x >> 3) % 8));
        write_all(st, copy, n);
        struct eng_ppd_adapter *a = NULL;
        char err[1024];
        int rc = import(dir, 0, -1, &a, err, sizeof err);
        if (rc == 0) n_ok++;
        else ck_assert_msg(rc == ENG_E_FORMAT || rc == ENG_E_UNSUPPORTED, "iter %d: %s %s", iter, eng_err_name(rc), err);
        eng_ppd_adapter_free(a);
    }
    printf("import after random header flips: %d of 200 imported\n", n_ok);
    free(copy);
    free(good);
    /* bad dtype, size mismatch, offsets past the end, other tensor names, wrong rank, integer dtype */
    static const struct { const char *header; size_t data; int rc; const char *want; } cases[] = {
        {"{\"prompt_embeddings\":{\"dtype\":\"F12\",\"shape\":[3,576],\"data_offsets\":[0,3456]}}", 3456,
         ENG_E_FORMAT, "dtype: unknown"},
        {"{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[3,576],\"data_offsets\":[0,3454]}}", 3456,
         ENG_E_FORMAT, "needs 3456"},
        {"{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[3,576],\"data_offsets\":[2,3458]}}", 3456,
         ENG_E_FORMAT, "past the data area"},
        {"{\"base_model.prompt\":{\"dtype\":\"F16\",\"shape\":[3,576],\"data_offsets\":[0,3456]}}", 3456,
         ENG_E_FORMAT, "missing (the file has: base_model.prompt)"},
        {"{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[1728],\"data_offsets\":[0,3456]}}", 3456,
         ENG_E_FORMAT, "1 dimensions"},
        {"{\"prompt_embeddings\":{\"dtype\":\"I16\",\"shape\":[3,576],\"data_offsets\":[0,3456]}}", 3456,
         ENG_E_UNSUPPORTED, "dtype I16"},
        {"{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[0,0]}}", 0,
         ENG_E_FORMAT, "hidden size 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(dir, cases[i].header, NULL, cases[i].data);
        expect_error(dir, 0, -1, cases[i].rc, cases[i].want, NULL);
    }
    /* a non-finite value (F16 infinity) */
    uint16_t vals[3 * 576] = {0};
    vals[700] = 0x7c00;
    write_st(dir, "{\"prompt_embeddings\":{\"dtype\":\"F16\",\"shape\":[3,576],\"data_offsets\":[0,3456]}}", vals,
             sizeof vals);
    expect_error(dir, 0, -1, ENG_E_FORMAT, "element [1, 124] is not finite", NULL);
    remove_dir(dir);
}
END_TEST

/* Through the binary: import, then generate with the result (greedy PPD
 * prints what plain decoding prints); refusals exit 1 with the reason. */
START_TEST(test_cli) {
    char dir[] = "/tmp/ppd-import-cli-XXXXXX", outp[512];
    make_dir(dir);
    snprintf(outp, sizeof outp, "%s/out.ppd.gguf", dir);
    char *B = (char *)test_ppd_bin(), *M = (char *)test_model_path();
    char out[1 << 14], err[1 << 14];
    char *imp[] = {B, "adapter", "import", GOLDEN "bf16", "-m", M, "-o", outp, NULL};
    int rc = test_run_capture(imp, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "import: %d %s", rc, err);
    ck_assert_msg(strstr(err, "imported from") != NULL, "%s", err);
    /* the output exists now: refused without --force, then overwritten with it */
    rc = test_run_capture(imp, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1 && strstr(err, "--force"), "%d %s", rc, err);
    char *imp2[] = {B, "adapter", "import", GOLDEN "f16/adapter_model.safetensors", GOLDEN "f16/adapter_config.json",
                    "-m", M, "-o", outp, "--force", "--topk", "10", NULL};
    rc = test_run_capture(imp2, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "import 2: %d %s", rc, err);
    char *show[] = {B, "adapter", "show", outp, "-m", M, NULL};
    rc = test_run_capture(show, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0 && strstr(out, "imported from") && strstr(out, "fits "), "%d %s %s", rc, out, err);

    static char g_ppd[1 << 14], g_plain[1 << 14];
    char *gen[] = {B, "generate", "-m", M, "-p", "The capital of France is", "-n", "16", "-t", "2", "--ppd", outp, NULL};
    rc = test_run_capture(gen, g_ppd, sizeof g_ppd, err, sizeof err);
    ck_assert_msg(rc == 0, "generate --ppd: %d %s", rc, err);
    ck_assert_msg(strstr(err, "PPD") != NULL, "%s", err);
    char *plain[] = {B, "generate", "-m", M, "-p", "The capital of France is", "-n", "16", "-t", "2", "--no-ppd", NULL};
    rc = test_run_capture(plain, g_plain, sizeof g_plain, err, sizeof err);
    ck_assert_msg(rc == 0, "generate --no-ppd: %d %s", rc, err);
    ck_assert_str_eq(g_ppd, g_plain);

    char *v2[] = {B, "adapter", "import", GOLDEN "v2", "-m", M, "-o", outp, "--force", NULL};
    rc = test_run_capture(v2, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1 && strstr(err, "V = 1 only") && strstr(err, "--ensemble-member"), "%d %s", rc, err);
    char *v2m[] = {B, "adapter", "import", GOLDEN "v2", "-m", M, "-o", outp, "--force", "--ensemble-member", "0", NULL};
    rc = test_run_capture(v2m, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0 && strstr(err, "ensemble member 0 of V=2"), "%d %s", rc, err);

    /* a Vicuna-sized adapter: exit 1 naming both sizes */
    char hdir[] = "/tmp/ppd-import-clih-XXXXXX";
    make_dir(hdir);
    write_st(hdir, "{\"prompt_embeddings\":{\"dtype\":\"BF16\",\"shape\":[3,4096],\"data_offsets\":[0,24576]}}", NULL,
             24576);
    char *wrong[] = {B, "adapter", "import", hdir, "-m", M, "-o", outp, "--force", "--n-prompt", "3", NULL};
    rc = test_run_capture(wrong, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1 && strstr(err, "4096") && strstr(err, "576"), "%d %s", rc, err);
    /* no config and no --n-prompt */
    char *nocfg[] = {B, "adapter", "import", hdir, "-m", M, "-o", outp, "--force", NULL};
    rc = test_run_capture(nocfg, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 1 && strstr(err, "--n-prompt"), "%d %s", rc, err);
    remove_dir(hdir);
    /* usage errors */
    char *u1[] = {B, "adapter", "import", NULL};
    ck_assert_int_eq(test_run_capture(u1, out, sizeof out, err, sizeof err), 2);
    char *u2[] = {B, "adapter", "import", GOLDEN "f16", "--bogus", NULL};
    ck_assert_int_eq(test_run_capture(u2, out, sizeof out, err, sizeof err), 2);
    char *u3[] = {B, "adapter", "import", GOLDEN "f16", GOLDEN "f32", NULL};
    ck_assert_int_eq(test_run_capture(u3, out, sizeof out, err, sizeof err), 2);
    char *u4[] = {B, "adapter", "import", GOLDEN "f16", "--ensemble-member", "-1", NULL};
    ck_assert_int_eq(test_run_capture(u4, out, sizeof out, err, sizeof err), 2);
    remove_dir(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ppd_import");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    test_set_timeout(tc, 300);
    tcase_add_test(tc, test_import_golden);
    tcase_add_test(tc, test_ensemble);
    tcase_add_test(tc, test_wrong_hidden_size);
    tcase_add_test(tc, test_missing_config);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_bad_safetensors);
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
