/* config.c — the settings table of config.h and its three readers. */
#include "config.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"
#include "engine/engine.h"
#include "engine/log.h"

enum cfg_type { CFG_STR, CFG_INT, CFG_FLAG };

struct cfg_entry {
    const char *name;       /* long flag without "--"; env PPD_<NAME upper, '-' -> '_'> */
    const char *short_flag; /* "-m" or NULL */
    enum cfg_type type;
    size_t off;
    long min, max;          /* CFG_INT bounds */
    const char *def;        /* default as text (NULL: unset) */
    const char *help;
};

#define F(field) offsetof(struct srv_config, field)

static const struct cfg_entry cfg_table[] = {
    {"model", "-m", CFG_STR, F(model), 0, 0, PPD_DEFAULT_MODEL, "GGUF model file"},
    {"alias", "-a", CFG_STR, F(alias), 0, 0, NULL, "model id served by the API (default: the model file name)"},
    {"host", NULL, CFG_STR, F(host), 0, 0, "127.0.0.1", "address to listen on"},
    {"port", NULL, CFG_INT, F(port), 0, 65535, "8080", "TCP port (0: any free port, logged)"},
    {"api-key", NULL, CFG_STR, F(api_key), 0, 0, NULL, "require 'Authorization: Bearer KEY' on /v1 routes"},
    {"ctx-size", "-c", CFG_INT, F(n_ctx), 16, 1 << 20, "4096", "KV entries per slot (prompt + generated tokens)"},
    {"n-predict", "-n", CFG_INT, F(n_predict), -1, 1 << 20, "-1", "default max_tokens (-1: until the context is full)"},
    {"threads", "-t", CFG_INT, F(n_threads), 1, 1024, NULL, "CPU threads (default: the CPUs this process may use, at most 8)"},
    {"device", NULL, CFG_STR, F(device), 0, 0, "auto", "auto, cpu or cuda (auto: CUDA when a GPU is usable, else the CPU)"},
    {"parallel", "-np", CFG_INT, F(n_parallel), 1, 256, "4", "sequences decoded at once (KV slots)"},
    {"batch-size", "-b", CFG_INT, F(batch), 1, 4096, "256", "rows per forward step"},
    {"prefill-chunk", NULL, CFG_INT, F(prefill_chunk), 1, 4096, "256", "prompt rows per sequence per step"},
    {"max-queue", NULL, CFG_INT, F(max_queue), 0, 1 << 20, "64", "requests waiting for a slot before 429"},
    {"max-body", NULL, CFG_INT, F(max_body), 1024, 1 << 30, "1048576", "request body bytes before 413"},
    {"drain-timeout", NULL, CFG_INT, F(drain_s), 0, 3600, "30", "seconds SIGTERM waits for in-flight requests"},
    {"timeout", "-to", CFG_INT, F(timeout_s), 0, 86400, "600", "seconds a request may take before it is cancelled (0: no limit)"},
    {"sse-keepalive", NULL, CFG_INT, F(keepalive_s), 1, 3600, "5", "seconds a stream may stay quiet before a keep-alive comment"},
    {"chat-template", NULL, CFG_STR, F(chat_template), 0, 0, NULL,
     "chatml, vicuna, llama2, llama3, zephyr (default: from the model)"},
    {"ppd", NULL, CFG_STR, F(ppd), 0, 0, "auto",
     "PPD adapter FILE; auto: MODEL.ppd.gguf next to the model when it exists; none: plain decoding"},
    {"no-ppd", NULL, CFG_FLAG, F(no_ppd), 0, 1, "0", "plain decoding (the same as --ppd none)"},
    {"tree", NULL, CFG_STR, F(tree), 0, 0, "auto",
     "PPD tree family: auto (built from the adapter's accuracy table) or a JSON file"},
    {"tree-budget", NULL, CFG_INT, F(tree_budget), 0, 4096, "0",
     "budget L of the auto tree; 0: the adapter's tuned one (ppd tree tune), else 20 (lowered until every slot's tree fits in --batch-size)"},
    {"calibrate", NULL, CFG_STR, F(calibrate), 0, 0, "auto",
     "auto: with the auto tree and no --tree-budget, measure this device at start-up (cached) and choose the tree per number of sequences; off: the adapter's tuned budget"},
    {"calib-cache", NULL, CFG_STR, F(calib_cache), 0, 0, NULL,
     "directory of cached calibration tables (default $XDG_CACHE_HOME/ppd, else ~/.cache/ppd; empty: no cache)"},
    {"ppd-accept", NULL, CFG_STR, F(ppd_accept), 0, 0, "exact",
     "PPD acceptance: exact (lossless) or typical (Medusa typical acceptance for temperature > 0; not lossless)"},
    {"prefix-cache", NULL, CFG_STR, F(prefix_cache), 0, 0, "on",
     "on: a request reuses the KV entries a finished request left in a free slot for the longest common prompt "
     "prefix (CPU; off on CUDA); off: every prompt is prefilled in full"},
    {"verbose", "-v", CFG_FLAG, F(verbose), 0, 1, "0", "debug logging"},
    {"config", NULL, CFG_STR, F(config), 0, 0, NULL, "read settings from FILE first (key = value lines)"},
};
#define CFG_N (int)(sizeof cfg_table / sizeof cfg_table[0])

/* Other names the config file accepts for a key (the PPD settings grouped
 * under "ppd."). */
static const struct { const char *alias, *name; } cfg_file_aliases[] = {
    {"ppd.adapter", "ppd"}, {"ppd.tree", "tree"}, {"ppd.tree-budget", "tree-budget"}, {"ppd.accept", "ppd-accept"},
    {"ppd.calibrate", "calibrate"},
};

/* Earlier names of a setting, still accepted everywhere the name is: as a
 * flag (--tree-size), a variable (PPD_TREE_SIZE) and a config-file key
 * (tree-size, ppd.tree-size).  The current name wins where both are given. */
static const struct { const char *old, *name; } cfg_old_names[] = {
    {"tree-size", "tree-budget"}, {"ppd.tree-size", "tree-budget"},
};
#define CFG_N_OLD (int)(sizeof cfg_old_names / sizeof cfg_old_names[0])
#define CFG_N_ALIAS (int)(sizeof cfg_file_aliases / sizeof cfg_file_aliases[0])

static const char *cfg_alias_of(const char *name) {
    for (int i = 0; i < CFG_N_ALIAS; i++)
        if (!strcmp(cfg_file_aliases[i].name, name)) return cfg_file_aliases[i].alias;
    return NULL;
}

/* The earlier flag name of a setting, NULL when it has none. */
static const char *cfg_old_name_of(const char *name) {
    for (int i = 0; i < CFG_N_OLD; i++)
        if (!strcmp(cfg_old_names[i].name, name) && strncmp(cfg_old_names[i].old, "ppd.", 4)) return cfg_old_names[i].old;
    return NULL;
}

static void cfg_env_name(const struct cfg_entry *e, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "PPD_%s", e->name);
    for (size_t i = 4; i < n && i < cap; i++) buf[i] = buf[i] == '-' ? '_' : (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
}

static int cfg_set(struct srv_config *c, const struct cfg_entry *e, const char *what, const char *v) {
    char *base = (char *)c;
    if (e->type == CFG_STR) {
        *(const char **)(base + e->off) = v;
        return 0;
    }
    long l;
    if (e->type == CFG_FLAG) {
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes")) l = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !*v) l = 0;
        else { fprintf(stderr, "ppd serve: %s: '%s' is not a boolean (1/0, true/false)\n", what, v); return 2; }
    } else if (flag_int(what, v, e->min, e->max, &l)) {
        return 2;
    }
    *(long *)(base + e->off) = l;
    return 0;
}

void srv_config_usage(FILE *fp) {
    fprintf(fp, "usage: ppd serve [flags]\n\nEvery flag can also be set by the environment variable shown "
                "(a flag given on the command line wins).\n\n");
    for (int i = 0; i < CFG_N; i++) {
        const struct cfg_entry *e = &cfg_table[i];
        char env[64], left[64];
        cfg_env_name(e, env, sizeof env);
        snprintf(left, sizeof left, "%s%s--%s%s", e->short_flag ? e->short_flag : "", e->short_flag ? ", " : "",
                 e->name, e->type == CFG_FLAG ? "" : e->type == CFG_INT ? " N" : " TEXT");
        fprintf(fp, "  %-26s %s", left, e->help);
        if (e->type == CFG_INT) fprintf(fp, " [%ld..%ld]", e->min, e->max);
        if (e->def && e->type != CFG_FLAG) fprintf(fp, " (default %s)", e->def);
        const char *alias = cfg_alias_of(e->name), *old = cfg_old_name_of(e->name);
        fprintf(fp, "\n  %-26s env %s%s%s", "", env, alias ? "; config-file key also " : "", alias ? alias : "");
        if (old) fprintf(fp, "; also --%s", old);
        fprintf(fp, "\n");
    }
    fprintf(fp, "  %-26s this text\n", "-h, --help");
}

static const struct cfg_entry *cfg_find(const char *name, size_t n) {
    for (int i = 0; i < CFG_N; i++)
        if (strlen(cfg_table[i].name) == n && !strncmp(cfg_table[i].name, name, n)) return &cfg_table[i];
    return NULL;
}

/* A config-file key: the long name or its alias. */
static const struct cfg_entry *cfg_find_key(const char *key) {
    for (int i = 0; i < CFG_N_OLD; i++)
        if (!strcmp(cfg_old_names[i].old, key)) key = cfg_old_names[i].name;
    for (int i = 0; i < CFG_N_ALIAS; i++)
        if (!strcmp(cfg_file_aliases[i].alias, key)) key = cfg_file_aliases[i].name;
    return cfg_find(key, strlen(key));
}

static char *cfg_trim(char *p) {
    while (*p == ' ' || *p == '\t') p++;
    char *e = p + strlen(p);
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = 0;
    return p;
}

/* Read `key = value` lines; values may be "quoted".  The text stays alive in
 * c->file_text because string settings point into it. */
static int cfg_read_file(struct srv_config *c, const char *path) {
    if (!(c->file_text = flag_read_file(path))) return 2;
    int line = 0;
    for (char *p = c->file_text; p && *p;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        line++;
        char *hash = strchr(p, '#');
        if (hash) *hash = 0;
        char *t = cfg_trim(p);
        p = nl ? nl + 1 : NULL;
        if (!*t) continue;
        char *eq = strchr(t, '=');
        char where[512];
        if (!eq) {
            fprintf(stderr, "ppd serve: %s:%d: expected 'key = value'\n", path, line);
            return 2;
        }
        *eq = 0;
        char *key = cfg_trim(t), *val = cfg_trim(eq + 1);
        size_t nv = strlen(val);
        if (nv >= 2 && val[0] == '"' && val[nv - 1] == '"') { val[nv - 1] = 0; val++; }
        const struct cfg_entry *e = cfg_find_key(key);
        snprintf(where, sizeof where, "%s:%d: %s", path, line, key);
        if (!e || e->off == F(config)) {
            fprintf(stderr, "ppd serve: %s: unknown key (see ppd serve --help)\n", where);
            return 2;
        }
        if (cfg_set(c, e, where, val)) return 2;
    }
    return 0;
}

int srv_config_load(struct srv_config *c, int argc, char **argv) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < CFG_N; i++)
        if (cfg_table[i].def && cfg_set(c, &cfg_table[i], cfg_table[i].name, cfg_table[i].def)) return 2;
    c->n_threads = flag_default_threads();
    /* The config file comes first, wherever --config stands on the line. */
    const char *file = getenv("PPD_CONFIG");
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--config") && a + 1 < argc) file = argv[a + 1];
        else if (!strncmp(argv[a], "--config=", 9)) file = argv[a] + 9;
    }
    if (file && *file) {
        c->config = file;
        int rc = cfg_read_file(c, file);
        if (rc) return rc;
    }
    for (int i = 0; i < CFG_N; i++) {
        char env[64];
        const char *old = cfg_old_name_of(cfg_table[i].name);
        if (old) {   /* the earlier name's variable first, so the current one wins */
            struct cfg_entry was = cfg_table[i];
            was.name = old;
            cfg_env_name(&was, env, sizeof env);
            const char *v = getenv(env);
            if (v && *v && cfg_set(c, &cfg_table[i], env, v)) return 2;
        }
        cfg_env_name(&cfg_table[i], env, sizeof env);
        const char *v = getenv(env);
        if (v && *v && cfg_set(c, &cfg_table[i], env, v)) return 2;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) { srv_config_usage(stdout); return 1; }
        const struct cfg_entry *e = NULL;
        const char *inline_val = NULL;
        for (int i = 0; i < CFG_N && !e; i++) {
            const struct cfg_entry *t = &cfg_table[i];
            const char *old = cfg_old_name_of(t->name);
            for (int k = 0; k < (old ? 2 : 1) && !e; k++) {
                const char *name = k ? old : t->name;
                size_t nl = strlen(name);
                if (t->short_flag && !strcmp(arg, t->short_flag)) e = t;
                else if (!strncmp(arg, "--", 2) && !strncmp(arg + 2, name, nl) && (arg[2 + nl] == 0 || arg[2 + nl] == '=')) {
                    e = t;
                    if (arg[2 + nl] == '=') inline_val = arg + 3 + nl;
                }
            }
        }
        if (!e) {
            fprintf(stderr, "ppd serve: unknown flag '%s' (see ppd serve --help)\n", arg);
            return 2;
        }
        const char *v = inline_val;
        if (!v) v = e->type == CFG_FLAG ? "1" : flag_value(argc, argv, &a);
        if (!v) return 2;
        if (cfg_set(c, e, arg, v)) return 2;
    }
    if (eng_device_parse(c->device) < 0) {
        fprintf(stderr, "ppd serve: device: '%s' is not one of auto, cpu, cuda\n", c->device);
        return 2;
    }
    if (strcmp(c->ppd_accept, "exact") && strcmp(c->ppd_accept, "typical")) {
        fprintf(stderr, "ppd serve: ppd-accept: '%s' is not one of exact, typical\n", c->ppd_accept);
        return 2;
    }
    if (strcmp(c->prefix_cache, "on") && strcmp(c->prefix_cache, "off")) {
        fprintf(stderr, "ppd serve: prefix-cache: '%s' is not one of on, off\n", c->prefix_cache);
        return 2;
    }
    if (strcmp(c->calibrate, "auto") && strcmp(c->calibrate, "off")) {
        fprintf(stderr, "ppd serve: calibrate: '%s' is not one of auto, off\n", c->calibrate);
        return 2;
    }
    if (!*c->ppd || !*c->tree) {
        fprintf(stderr, "ppd serve: %s: give a file, auto or none\n", !*c->ppd ? "ppd" : "tree");
        return 2;
    }
    return 0;
}

void srv_config_free(struct srv_config *c) {
    if (!c) return;
    free(c->file_text);
    c->file_text = NULL;
}

void srv_config_log(const struct srv_config *c) {
    const char *base = (const char *)c;
    LOG_INFO("effective configuration:");
    for (int i = 0; i < CFG_N; i++) {
        const struct cfg_entry *e = &cfg_table[i];
        if (e->type == CFG_STR) {
            const char *v = *(const char *const *)(base + e->off);
            if (e->off == F(api_key) && v && *v) v = "(set)";
            LOG_INFO("  %-14s %s", e->name, v ? v : "(unset)");
        } else {
            LOG_INFO("  %-14s %ld", e->name, *(const long *)(base + e->off));
        }
    }
}
