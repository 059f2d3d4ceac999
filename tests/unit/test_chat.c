/* test_chat.c — chat templates against renderings by Python jinja2.
 *
 * tests/golden/data/chat_golden.json (written by tests/golden/gen_chat.py)
 * holds, for each stored template, the expected detection details and ~20
 * message lists with the string jinja2 rendered, or the error we must return.
 * Every rendering must be byte-identical.  Run from the repository root.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/load/chat.h"
#include "engine/err.h"

#define GOLDEN_DIR "tests/golden/data/"

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

static json_t *load_golden(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(GOLDEN_DIR "chat_golden.json", 0, &jerr);
    ck_assert_msg(root != NULL, "chat_golden.json: %s (line %d)", jerr.text, jerr.line);
    return root;
}

static void detect_file(const char *file, struct chat_template *t)
{
    char path[512], err[256] = "";
    snprintf(path, sizeof path, GOLDEN_DIR "templates/%s", file);
    char *src = read_text(path);
    ck_assert_msg(src != NULL, "cannot read %s", path);
    int rc = chat_template_detect(src, t, err, sizeof err);
    ck_assert_msg(rc == 0, "%s: detect failed: %s (%s)", file, eng_err_name(rc), err);
    free(src);
}

static json_t *find_template(json_t *root, const char *file)
{
    size_t i;
    json_t *tj;
    json_array_foreach(json_object_get(root, "templates"), i, tj) {
        if (!strcmp(json_string_value(json_object_get(tj, "file")), file))
            return tj;
    }
    return NULL;
}

START_TEST(test_detect_stored_templates)
{
    json_t *root = load_golden();
    size_t i;
    json_t *tj;
    int n = 0;
    json_array_foreach(json_object_get(root, "templates"), i, tj) {
        const char *file = json_string_value(json_object_get(tj, "file"));
        struct chat_template t;
        detect_file(file, &t);
        ck_assert_str_eq(chat_family_name(t.family), json_string_value(json_object_get(tj, "family")));
        json_t *ds = json_object_get(tj, "default_system");
        if (json_is_string(ds)) {
            ck_assert_msg(t.has_default_system, "%s: default system not found", file);
            ck_assert_str_eq(t.default_system, json_string_value(ds));
        } else {
            ck_assert_msg(!t.has_default_system, "%s: unexpected default system \"%s\"", file,
                          t.default_system);
        }
        ck_assert_int_eq(t.emits_bos, json_is_true(json_object_get(tj, "emits_bos")));
        n++;
    }
    printf("chat: detected %d stored templates\n", n);
    ck_assert_int_ge(n, 7);
    json_decref(root);
}
END_TEST

/* Render one golden case with template t; returns 1 if it matched. */
static int check_case(const struct chat_template *t, json_t *c, const char *label)
{
    json_t *jm = json_object_get(c, "messages");
    size_t n = json_array_size(jm), i;
    struct chat_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
    json_t *m;
    json_array_foreach(jm, i, m) {
        msgs[i].role = json_string_value(json_object_get(m, "role"));
        msgs[i].content = json_string_value(json_object_get(m, "content"));
    }
    char *out = NULL, err[512] = "";
    int rc = chat_render(t, msgs, (int)n, json_is_true(json_object_get(c, "add_generation_prompt")),
                         &out, err, sizeof err);
    const char *name = json_string_value(json_object_get(c, "name"));
    json_t *expected = json_object_get(c, "expected");
    int ok;
    if (json_is_string(expected)) {
        ok = rc == 0 && out && !strcmp(out, json_string_value(expected));
        if (!ok)
            fprintf(stderr, "%s/%s: rc=%s err=%s\n got: [%s]\nwant: [%s]\n", label, name,
                    eng_err_name(rc), err, out ? out : "(null)", json_string_value(expected));
    } else {
        ok = rc == ENG_E_INVALID && out == NULL && err[0];
        if (!ok)
            fprintf(stderr, "%s/%s: expected an error (%s), got rc=%s out=[%s]\n", label, name,
                    json_string_value(json_object_get(c, "error")), eng_err_name(rc),
                    out ? out : "(null)");
    }
    free(out);
    free(msgs);
    return ok;
}

START_TEST(test_golden_renderings)
{
    json_t *root = load_golden();
    size_t i;
    json_t *c;
    int n = 0, n_ok = 0, n_err = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *file = json_string_value(json_object_get(c, "template"));
        json_t *tj = find_template(root, file);
        ck_assert_ptr_nonnull(tj);
        struct chat_template t;
        detect_file(file, &t);
        ck_assert_int_eq(chat_template_set_tokens(&t, json_string_value(json_object_get(tj, "bos_token")),
                                                  json_string_value(json_object_get(tj, "eos_token"))), 0);
        n++;
        n_ok += check_case(&t, c, file);
        n_err += !json_is_string(json_object_get(c, "expected"));
    }
    printf("chat: %d/%d golden cases byte-identical or refused as expected (%d expected errors)\n",
           n_ok, n, n_err);
    ck_assert_int_ge(n, 100);
    ck_assert_int_eq(n_ok, n);
    json_decref(root);
}
END_TEST

/* --chat-template NAME renders what the published template of that family renders. */
START_TEST(test_by_name_matches_published)
{
    static const char *const pairs[][2] = {
        { "chatml", "chatml.jinja" }, { "vicuna", "vicuna.jinja" }, { "llama2", "llama2.jinja" },
        { "llama3", "llama3.jinja" }, { "zephyr", "zephyr.jinja" },
    };
    json_t *root = load_golden();
    int n = 0;
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        struct chat_template t;
        ck_assert_int_eq(chat_template_by_name(pairs[p][0], &t), 0);
        ck_assert_str_eq(chat_family_name(t.family), pairs[p][0]);
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(root, "cases"), i, c) {
            if (strcmp(json_string_value(json_object_get(c, "template")), pairs[p][1]))
                continue;
            ck_assert_msg(check_case(&t, c, pairs[p][0]), "by-name %s differs", pairs[p][0]);
            n++;
        }
    }
    printf("chat: %d by-name renderings match the published templates\n", n);
    json_decref(root);
}
END_TEST

START_TEST(test_errors)
{
    struct chat_template t;
    char err[256] = "", *out = (char *)1;
    ck_assert_int_eq(chat_template_by_name("nonesuch", &t), ENG_E_INVALID);
    ck_assert_int_eq(chat_template_by_name(NULL, &t), ENG_E_INVALID);
    ck_assert_int_eq(chat_template_detect("", &t, err, sizeof err), ENG_E_INVALID);
    ck_assert_int_eq(chat_template_detect("{{ messages[0]['content'] }}", &t, err, sizeof err),
                     ENG_E_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err, "--chat-template"));
    /* Mistral-style [INST] without <<SYS>>, Phi-3 <|user|> with <|end|>, Llama 3.1 */
    ck_assert_int_eq(chat_template_detect("{{ bos_token }}{{ '[INST] ' + m + ' [/INST]' }}", &t, err,
                                          sizeof err), ENG_E_UNSUPPORTED);
    ck_assert_int_eq(chat_template_detect("{{'<|user|>' + '\\n' + c + '<|end|>'}}", &t, err, sizeof err),
                     ENG_E_UNSUPPORTED);
    ck_assert_int_eq(chat_template_detect("{{ '<|start_header_id|>system<|end_header_id|>\\n\\n"
                                          "Cutting Knowledge Date: December 2023' }}", &t, err,
                                          sizeof err), ENG_E_UNSUPPORTED);

    ck_assert_int_eq(chat_template_by_name("chatml", &t), 0);
    struct chat_msg bad[] = { { "user", "hi" }, { "tool", "42" } };
    ck_assert_int_eq(chat_render(&t, bad, 2, true, &out, err, sizeof err), ENG_E_INVALID);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err, "\"tool\""));
    struct chat_msg nullc[] = { { "user", NULL } };
    ck_assert_int_eq(chat_render(&t, nullc, 1, true, &out, err, sizeof err), ENG_E_INVALID);
    struct chat_msg nullr[] = { { NULL, "x" } };
    ck_assert_int_eq(chat_render(&t, nullr, 1, true, &out, err, sizeof err), ENG_E_INVALID);

    ck_assert_int_eq(chat_template_by_name("llama2", &t), 0);
    struct chat_msg two_users[] = { { "user", "a" }, { "user", "b" } };
    ck_assert_int_eq(chat_render(&t, two_users, 2, true, &out, err, sizeof err), ENG_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "alternat"));
    ck_assert_int_eq(chat_render(&t, NULL, 0, true, &out, err, sizeof err), ENG_E_INVALID);
    /* errors with no error buffer must not crash */
    ck_assert_int_eq(chat_render(&t, two_users, 2, true, &out, NULL, 0), ENG_E_INVALID);
}
END_TEST

/* The SmolLM2 template (extracted from the default model by gen_chat.py) by hand. */
START_TEST(test_smollm2_template)
{
    struct chat_template t;
    detect_file("chatml_smollm2.jinja", &t);
    ck_assert_int_eq(t.family, CHAT_FAMILY_CHATML);
    ck_assert(t.default_system_needs_message);
    struct chat_msg m[] = { { "user", "Hi" } };
    char *out = NULL, err[128];
    ck_assert_int_eq(chat_render(&t, m, 1, true, &out, err, sizeof err), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                          "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                          "<|im_start|>assistant\n");
    free(out);
}
END_TEST

static Suite *chat_suite(void)
{
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_detect_stored_templates);
    tcase_add_test(tc, test_golden_renderings);
    tcase_add_test(tc, test_by_name_matches_published);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_smollm2_template);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(chat_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
