/* adapter.c — `ppd adapter`: make and inspect PPD adapter files.
 *
 *   ppd adapter init [-m MODEL] [-o FILE] [--n-prompt N] [--topk K] [--text T]
 *       an untrained adapter by the paper's text initialisation (docs/ppd.md)
 *   ppd adapter show FILE [-m MODEL]
 *       the adapter's metadata; with -m also whether it fits that model
 *   ppd adapter import DIR|FILE.safetensors [CONFIG.json] [-m MODEL] [-o FILE] [--topk K]
 *                      [--n-prompt N] [--ensemble-member J] [--force]
 *       the paper's released PEFT adapter as an adapter for MODEL
 *       (engine/ppd/ppd_import.h says what is accepted)
 *
 * init and import take the model flag every program shares
 * (server/settings.h); show's -m is optional, so it has no default.
 * Not here: training (`ppd train`).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "server/settings.h"
#include "engine/model/backend.h"
#include "engine/err.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_import.h"
#include "engine/load/tokenizer.h"

struct adapter_opts {
    const char *model, *output, *text;
    long n_prompt, topk, member, force;
    struct flag_list files;   /* show: the adapter; import: the adapter and its config */
};

#define O(field) offsetof(struct adapter_opts, field)
#define ADAPTER(...) FLAG_OWN(__VA_ARGS__)

/* init's and import's flags that read alike in both */
static const struct flag_spec adapter_output = {
    .name = "output", .short_flag = "-o", .kind = FLAG_STR, .meta = "FILE",
    .help = "adapter to write (default: MODEL with .ppd.gguf)"};
static const struct flag_spec adapter_topk = {
    .name = "topk", .kind = FLAG_INT, .min = 1, .max = ENG_PPD_MAX_TOPK, .def = "10", .meta = "K",
    .help = "guesses per prompt token"};
static const struct flag_spec adapter_force = {
    .name = "force", .kind = FLAG_BOOL, .help = "overwrite an existing output file"};

static const struct flag_opt adapter_init_flags[] = {
    {&setting_model, O(model)},
    {&adapter_output, O(output)},
    {ADAPTER(.name = "n-prompt", .kind = FLAG_INT, .min = 1, .max = ENG_PPD_MAX_PROMPT, .def = "3",
             .help = "prompt tokens"), O(n_prompt)},
    {&adapter_topk, O(topk)},
    {ADAPTER(.name = "text", .kind = FLAG_STR, .def = ENG_PPD_INIT_TEXT, .meta = "TEXT",
             .help = "the text whose token embeddings start the prompt tokens"), O(text)},
    {&adapter_force, O(force)},
};

/* show opens a model only when asked: its -m has no default */
static const struct flag_opt adapter_show_flags[] = {
    {ADAPTER(.name = "model", .short_flag = "-m", .kind = FLAG_STR, .meta = "FILE",
             .help = "also check that the adapter fits this GGUF model"), O(model)},
};

static const struct flag_opt adapter_import_flags[] = {
    {&setting_model, O(model)},
    {&adapter_output, O(output)},
    {ADAPTER(.name = "n-prompt", .kind = FLAG_INT, .min = 1, .max = ENG_PPD_MAX_PROMPT,
             .help = "prompt tokens, only when there is no config (V = 1 is then assumed)"), O(n_prompt)},
    {&adapter_topk, O(topk)},
    {ADAPTER(.name = "ensemble-member", .kind = FLAG_INT, .min = 0, .max = 1 << 20, .meta = "J",
             .help = "for V > 1 adapters, take virtual token J of every prompt token alone (ppd runs V = 1; "
                     "without it V > 1 is refused)"), O(member)},
    {&adapter_force, O(force)},
};

static const struct flag_table adapter_init_table = FLAG_TABLE("ppd adapter init", adapter_init_flags);
static const struct flag_table adapter_show_table = FLAG_TABLE("ppd adapter show", adapter_show_flags);
static const struct flag_table adapter_import_table = FLAG_TABLE("ppd adapter import", adapter_import_flags);

/* One subcommand's usage, or all three when t is NULL. */
static void adapter_usage(FILE *fp, const struct flag_table *t) {
    if (!t || t == &adapter_init_table) {
        fprintf(fp, "usage: ppd adapter init [flags]\n"
                    "  an untrained adapter (the paper's text initialisation)\n");
        flag_usage(fp, &adapter_init_table);
    }
    if (!t || t == &adapter_show_table) {
        fprintf(fp, "%susage: ppd adapter show FILE [-m MODEL]\n"
                    "  the adapter's metadata\n", t ? "" : "\n");
        flag_usage(fp, &adapter_show_table);
    }
    if (!t || t == &adapter_import_table) {
        fprintf(fp, "%susage: ppd adapter import DIR|FILE.safetensors [CONFIG.json] [flags]\n"
                    "  the paper's PEFT adapter (adapter_model.safetensors + adapter_config.json) for MODEL\n",
                t ? "" : "\n");
        flag_usage(fp, &adapter_import_table);
    }
}

/* A subcommand's flags into o; the words that are not flags into o->files.
 * 0, 1 after --help (printed), 2 after a message. */
static int adapter_parse(const struct flag_table *t, int argc, char **argv, struct adapter_opts *o) {
    memset(o, 0, sizeof *o);
    o->member = -1;   /* no --ensemble-member */
    int rc = flag_defaults(t, o);
    if (!rc) rc = flag_parse(t, o, argc, argv, t == &adapter_init_table ? NULL : &o->files);
    if (rc == 1) adapter_usage(stdout, t);
    return rc;
}

static int adapter_open_model(const char *path, struct eng_backend *be, struct eng_model **m, struct tok **t) {
    char err[512];
    if (eng_backend_cpu_init(be, 1)) { fprintf(stderr, "ppd: cannot start the CPU backend\n"); return 1; }
    if (eng_model_load(m, path, be, err, sizeof err) || (t && tok_load(t, (*m)->gguf, err, sizeof err))) {
        fprintf(stderr, "ppd: %s\n", err);
        return 1;
    }
    return 0;
}

static int adapter_init(int argc, char **argv) {
    struct adapter_opts o;
    int rc = adapter_parse(&adapter_init_table, argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    const char *model = o.model, *output = o.output;
    char path[1024], err[512];
    if (!output) {
        if (eng_ppd_adapter_default_path(model, path, sizeof path)) { fprintf(stderr, "ppd: model path too long\n"); return 2; }
        output = path;
    }
    FILE *exists = o.force ? NULL : fopen(output, "rb");
    if (exists) {
        fclose(exists);
        fprintf(stderr, "ppd: %s exists; --force overwrites it\n", output);
        return 1;
    }
    struct eng_backend be = {0};
    struct eng_model *m = NULL;
    struct tok *t = NULL;
    struct eng_ppd_adapter *ad = NULL;
    int status = 1;
    if (adapter_open_model(model, &be, &m, &t)) goto done;
    if (eng_ppd_adapter_init_text(&ad, m, t, (int)o.n_prompt, (int)o.topk, o.text, err, sizeof err) ||
        eng_ppd_adapter_save(ad, output, err, sizeof err)) {
        fprintf(stderr, "ppd: %s\n", err);
        goto done;
    }
    fprintf(stderr, "ppd: wrote %s (N=%d, K=%d, H=%d, %s)\n", output, ad->n_prompt, ad->topk, ad->n_embd, ad->provenance);
    status = 0;
done:
    eng_ppd_adapter_free(ad);
    tok_free(t);
    eng_model_free(m);
    eng_backend_free(&be);
    return status;
}

static int adapter_show(int argc, char **argv) {
    struct adapter_opts o;
    int rc = adapter_parse(&adapter_show_table, argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    if (o.files.n > 1) { fprintf(stderr, "ppd adapter show: one file at a time\n"); return 2; }
    if (!o.files.n) { adapter_usage(stderr, &adapter_show_table); return 2; }
    const char *file = o.files.v[0], *model = o.model;
    struct eng_backend be = {0};
    struct eng_model *m = NULL;
    struct eng_ppd_adapter *ad = NULL;
    char err[768];
    int status = 1;
    if (model && adapter_open_model(model, &be, &m, NULL)) goto done;
    if (eng_ppd_adapter_load(&ad, file, m, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); goto done; }
    printf("file         %s\nN            %d\nK            %d\nhidden size  %d\nbase model   %s\n"
           "fingerprint  %016llx\nprovenance   %s\naccuracy     %s\n",
           file, ad->n_prompt, ad->topk, ad->n_embd, ad->base_name, (unsigned long long)ad->base_fingerprint,
           ad->provenance, ad->accuracy ? "measured" : "none (untrained)");
    if (ad->accuracy)
        for (int i = 0; i < ad->n_prompt; i++) {
            printf("  prompt %d:", i + 1);
            for (int k = 0; k < ad->topk; k++) printf(" %.5f", ad->accuracy[i * ad->topk + k]);
            printf("\n");
        }
    if (ad->joint) {   /* how far right guesses go together: the chance of the top-1 chain */
        const int K = ad->topk, nj = eng_ppd_joint_size(ad->n_prompt, K);
        printf("rank joint   measured (%d cells); top-1 chain right through prompt 1..d:", nj);
        long stride = 1;
        for (int d = 1; d <= ad->n_prompt; d++, stride *= K + 1) {
            double p = 0;   /* ranks 0 at prompts 1..d, anything after */
            for (int idx = 0; idx < nj; idx++)
                if (idx % (stride * (K + 1)) == 0) p += ad->joint[idx];
            printf(" %.5f", p);
        }
        printf("\n");
    } else {
        printf("rank joint   none (trees assume independent guesses)\n");
    }
    if (ad->deep) printf("deep prompts %d layers x %d vectors (added to the prompt rows at layers 1..%d)\n", ad->n_deep,
                         ad->n_prompt, ad->n_deep);
    if (m) printf("fits %s\n", m->name);
    status = 0;
done:
    eng_ppd_adapter_free(ad);
    eng_model_free(m);
    eng_backend_free(&be);
    return status;
}

static int adapter_import(int argc, char **argv) {
    struct adapter_opts a;
    int rc = adapter_parse(&adapter_import_table, argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    struct eng_ppd_import_opts o = ENG_PPD_IMPORT_OPTS_DEFAULT;
    const char *model = a.model, *output = a.output, *src = NULL;
    for (int i = 0; i < a.files.n; i++) {
        const char *f = a.files.v[i];
        const size_t len = strlen(f);
        if (len > 5 && !strcmp(f + len - 5, ".json")) {
            if (o.config_path) { fprintf(stderr, "ppd adapter import: one config file at a time\n"); return 2; }
            o.config_path = f;
        } else if (!src) src = f;
        else { fprintf(stderr, "ppd adapter import: one adapter at a time\n"); return 2; }
    }
    if (!src) { adapter_usage(stderr, &adapter_import_table); return 2; }
    o.n_prompt = (int)a.n_prompt;
    o.topk = (int)a.topk;
    o.ensemble_member = (int)a.member;
    char path[1024], err[1024];
    if (!output) {
        if (eng_ppd_adapter_default_path(model, path, sizeof path)) { fprintf(stderr, "ppd: model path too long\n"); return 2; }
        output = path;
    }
    FILE *exists = a.force ? NULL : fopen(output, "rb");
    if (exists) {
        fclose(exists);
        fprintf(stderr, "ppd: %s exists; --force overwrites it\n", output);
        return 1;
    }
    struct eng_backend be = {0};
    struct eng_model *m = NULL;
    struct eng_ppd_adapter *ad = NULL;
    int status = 1;
    if (adapter_open_model(model, &be, &m, NULL)) goto done;
    if (eng_ppd_adapter_import(&ad, src, m, &o, err, sizeof err) || eng_ppd_adapter_save(ad, output, err, sizeof err)) {
        fprintf(stderr, "ppd: %s\n", err);
        goto done;
    }
    fprintf(stderr, "ppd: wrote %s (N=%d, K=%d, H=%d, %s)\n", output, ad->n_prompt, ad->topk, ad->n_embd, ad->provenance);
    status = 0;
done:
    eng_ppd_adapter_free(ad);
    eng_model_free(m);
    eng_backend_free(&be);
    return status;
}

int cmd_adapter(int argc, char **argv) {
    if (argc < 2) { adapter_usage(stderr, NULL); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) { adapter_usage(stdout, NULL); return 0; }
    if (!strcmp(argv[1], "init")) return adapter_init(argc - 1, argv + 1);
    if (!strcmp(argv[1], "show")) return adapter_show(argc - 1, argv + 1);
    if (!strcmp(argv[1], "import")) return adapter_import(argc - 1, argv + 1);
    fprintf(stderr, "ppd adapter: unknown subcommand '%s' (init, show, import)\n", argv[1]);
    return 2;
}
