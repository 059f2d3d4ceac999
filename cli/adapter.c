/* adapter.c — `ppd adapter`: make and inspect PPD adapter files.
 *
 *   ppd adapter init [-m MODEL] [-o FILE] [--n-prompt N] [--topk K] [--text T]
 *       an untrained adapter by the paper's text initialisation (docs/ppd.md)
 *   ppd adapter show FILE [-m MODEL]
 *       the adapter's metadata; with -m also whether it fits that model
 *   ppd adapter import DIR|FILE.safetensors [CONFIG.json] [-m MODEL] [-o FILE] [--topk K]
 *                      [--n-prompt N] [--ensemble-member J] [--force]
 *       the paper's released PEFT adapter as an adapter for MODEL
 *       (engine/ppd_import.h says what is accepted)
 *
 * Not here: training (`ppd train`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine/backend.h"
#include "engine/err.h"
#include "engine/model.h"
#include "engine/ppd_adapter.h"
#include "engine/ppd_import.h"
#include "engine/tokenizer.h"

int cmd_adapter(int argc, char **argv);

static void adapter_usage(FILE *fp) {
    fprintf(fp,
            "usage: ppd adapter init [flags]    make an untrained adapter (text initialisation)\n"
            "       ppd adapter show FILE [-m MODEL]\n"
            "       ppd adapter import DIR|FILE.safetensors [CONFIG.json] [flags]\n"
            "                          import the paper's PEFT adapter (adapter_model.safetensors\n"
            "                          + adapter_config.json) for MODEL\n"
            "  -m, --model FILE     base model (default %s)\n"
            "  -o, --output FILE    adapter to write (default: MODEL with .ppd.gguf)\n"
            "      --n-prompt N     prompt tokens (init: default 3; import: only when there is no config,\n"
            "                       V = 1 is then assumed)\n"
            "      --topk K         guesses per prompt token (default 10)\n"
            "      --text TEXT      init text (default \"%s\")\n"
            "      --ensemble-member J  import: for V > 1 adapters, take virtual token J of every\n"
            "                       prompt token alone (ppd runs V = 1; without it V > 1 is refused)\n"
            "      --force          overwrite an existing output file\n",
            PPD_DEFAULT_MODEL, ENG_PPD_INIT_TEXT);
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
    const char *model = PPD_DEFAULT_MODEL, *output = NULL, *text = ENG_PPD_INIT_TEXT, *v;
    long n_prompt = 3, topk = 10;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { adapter_usage(stdout); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = flag_value(argc, argv, &i))) return 2; model = v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!(v = flag_value(argc, argv, &i))) return 2; output = v; }
        else if (!strcmp(a, "--force")) force = 1;
        else if (!strcmp(a, "--text")) { if (!(v = flag_value(argc, argv, &i))) return 2; text = v; }
        else if (!strcmp(a, "--n-prompt")) {
            if (!(v = flag_value(argc, argv, &i)) || flag_int(a, v, 1, ENG_PPD_MAX_PROMPT, &n_prompt)) return 2;
        } else if (!strcmp(a, "--topk")) {
            if (!(v = flag_value(argc, argv, &i)) || flag_int(a, v, 1, ENG_PPD_MAX_TOPK, &topk)) return 2;
        } else { fprintf(stderr, "ppd adapter init: unknown flag '%s' (see --help)\n", a); return 2; }
    }
    char path[1024], err[512];
    if (!output) {
        if (eng_ppd_adapter_default_path(model, path, sizeof path)) { fprintf(stderr, "ppd: model path too long\n"); return 2; }
        output = path;
    }
    FILE *exists = force ? NULL : fopen(output, "rb");
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
    if (eng_ppd_adapter_init_text(&ad, m, t, (int)n_prompt, (int)topk, text, err, sizeof err) ||
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
    const char *file = NULL, *model = NULL, *v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = flag_value(argc, argv, &i))) return 2; model = v; }
        else if (a[0] == '-') { fprintf(stderr, "ppd adapter show: unknown flag '%s'\n", a); return 2; }
        else if (!file) file = a;
        else { fprintf(stderr, "ppd adapter show: one file at a time\n"); return 2; }
    }
    if (!file) { adapter_usage(stderr); return 2; }
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
    const char *model = PPD_DEFAULT_MODEL, *output = NULL, *src = NULL, *v;
    struct eng_ppd_import_opts o = ENG_PPD_IMPORT_OPTS_DEFAULT;
    long n_prompt = 0, topk = o.topk, member = -1;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t len = strlen(a);
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { adapter_usage(stdout); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = flag_value(argc, argv, &i))) return 2; model = v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!(v = flag_value(argc, argv, &i))) return 2; output = v; }
        else if (!strcmp(a, "--force")) force = 1;
        else if (!strcmp(a, "--n-prompt")) {
            if (!(v = flag_value(argc, argv, &i)) || flag_int(a, v, 1, ENG_PPD_MAX_PROMPT, &n_prompt)) return 2;
        } else if (!strcmp(a, "--topk")) {
            if (!(v = flag_value(argc, argv, &i)) || flag_int(a, v, 1, ENG_PPD_MAX_TOPK, &topk)) return 2;
        } else if (!strcmp(a, "--ensemble-member")) {
            if (!(v = flag_value(argc, argv, &i)) || flag_int(a, v, 0, 1 << 20, &member)) return 2;
        } else if (a[0] == '-') {
            fprintf(stderr, "ppd adapter import: unknown flag '%s' (see --help)\n", a);
            return 2;
        } else if (len > 5 && !strcmp(a + len - 5, ".json")) {
            if (o.config_path) { fprintf(stderr, "ppd adapter import: one config file at a time\n"); return 2; }
            o.config_path = a;
        } else if (!src) src = a;
        else { fprintf(stderr, "ppd adapter import: one adapter at a time\n"); return 2; }
    }
    if (!src) { adapter_usage(stderr); return 2; }
    o.n_prompt = (int)n_prompt;
    o.topk = (int)topk;
    o.ensemble_member = (int)member;
    char path[1024], err[1024];
    if (!output) {
        if (eng_ppd_adapter_default_path(model, path, sizeof path)) { fprintf(stderr, "ppd: model path too long\n"); return 2; }
        output = path;
    }
    FILE *exists = force ? NULL : fopen(output, "rb");
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
    if (argc < 2) { adapter_usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) { adapter_usage(stdout); return 0; }
    if (!strcmp(argv[1], "init")) return adapter_init(argc - 1, argv + 1);
    if (!strcmp(argv[1], "show")) return adapter_show(argc - 1, argv + 1);
    if (!strcmp(argv[1], "import")) return adapter_import(argc - 1, argv + 1);
    fprintf(stderr, "ppd adapter: unknown subcommand '%s' (init, show, import)\n", argv[1]);
    return 2;
}
