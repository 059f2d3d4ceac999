/* config.c — the settings table of config.h and its three readers. */
#include "config.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"
#include "settings.h"
#include "engine/log.h"

#define F(field) offsetof(struct srv_config, field)
#define SERVE(...) FLAG_OWN(__VA_ARGS__)

/* The order of --help and of the start-up log.  Settings other programs take
 * too are described in settings.c; the rest here. */
static const struct flag_opt cfg_opts[] = {
    {&setting_model, F(model)},
    {SERVE(.name = "alias", .short_flag = "-a", .kind = FLAG_STR,
           .help = "model id served by the API (default: the model file name)"), F(alias)},
    {SERVE(.name = "host", .kind = FLAG_STR, .def = "127.0.0.1", .help = "address to listen on"), F(host)},
    {SERVE(.name = "port", .kind = FLAG_INT, .min = 0, .max = 65535, .def = "8080",
           .help = "TCP port (0: any free port, logged)"), F(port)},
    {SERVE(.name = "api-key", .kind = FLAG_STR, .help = "require 'Authorization: Bearer KEY' on /v1 routes"), F(api_key)},
    {&setting_ctx_size, F(n_ctx)},
    {SERVE(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = -1, .max = 1 << 20, .def = "-1",
           .help = "default max_tokens (-1: until the context is full)"), F(n_predict)},
    {&setting_threads, F(n_threads)},
    {&setting_device, F(device)},
    {SERVE(.name = "parallel", .short_flag = "-np", .kind = FLAG_INT, .min = 1, .max = 256, .def = "4",
           .help = "sequences decoded at once (KV slots)"), F(n_parallel)},
    {&setting_batch_size, F(batch)},
    {SERVE(.name = "prefill-chunk", .kind = FLAG_INT, .min = 1, .max = 4096, .def = "256",
           .help = "prompt rows per sequence per step"), F(prefill_chunk)},
    {SERVE(.name = "max-queue", .kind = FLAG_INT, .min = 0, .max = 1 << 20, .def = "64",
           .help = "requests waiting for a slot before 429"), F(max_queue)},
    {SERVE(.name = "max-body", .kind = FLAG_INT, .min = 1024, .max = 1 << 30, .def = "1048576",
           .help = "request body bytes before 413"), F(max_body)},
    {SERVE(.name = "drain-timeout", .kind = FLAG_INT, .min = 0, .max = 3600, .def = "30",
           .help = "seconds SIGTERM waits for in-flight requests"), F(drain_s)},
    {SERVE(.name = "timeout", .short_flag = "-to", .kind = FLAG_INT, .min = 0, .max = 86400, .def = "600",
           .help = "seconds a request may take before it is cancelled (0: no limit)"), F(timeout_s)},
    {SERVE(.name = "sse-keepalive", .kind = FLAG_INT, .min = 1, .max = 3600, .def = "5",
           .help = "seconds a stream may stay quiet before a keep-alive comment"), F(keepalive_s)},
    {&setting_chat_template, F(chat_template)},
    {&setting_ppd, F(ppd)},
    {&setting_no_ppd, F(no_ppd)},
    {&setting_tree, F(tree)},
    {&setting_tree_budget, F(tree_budget)},
    {SERVE(.name = "calibrate", .kind = FLAG_STR, .choices = "auto|off", .def = "auto",
           .help = "auto: with the auto tree and no --tree-budget, measure this device at start-up (cached) and "
                   "choose the tree per number of sequences; off: the adapter's tuned budget"), F(calibrate)},
    {SERVE(.name = "calib-cache", .kind = FLAG_STR, .meta = "DIR",
           .help = "directory of cached calibration tables (default $XDG_CACHE_HOME/ppd, else ~/.cache/ppd; "
                   "empty: no cache)"), F(calib_cache)},
    {SERVE(.name = "ppd-accept", .kind = FLAG_STR, .choices = "exact|typical", .def = "exact",
           .help = "PPD acceptance: exact (lossless) or typical (Medusa typical acceptance for temperature > 0; "
                   "not lossless)"), F(ppd_accept)},
    {SERVE(.name = "prefix-cache", .kind = FLAG_STR, .choices = "on|off", .def = "on",
           .help = "on: a request reuses the KV entries a finished request left in a free slot for the longest "
                   "common prompt prefix (CPU; off on CUDA); off: every prompt is prefilled in full"), F(prefix_cache)},
    {SERVE(.name = "prefix-cache-size", .kind = FLAG_INT, .min = -1, .max = 1 << 24, .def = "-1", .meta = "MB",
           .help = "megabytes of 32-token KV blocks the prefix cache keeps beyond the slots (copies of the prefixes "
                   "a new request would overwrite in a free slot); -1: a quarter of the KV cache; 0: the slots "
                   "only"), F(prefix_cache_mb)},
    {&setting_verbose, F(verbose)},
    {SERVE(.name = "config", .kind = FLAG_STR, .meta = "FILE",
           .help = "read settings from FILE first (key = value lines)"), F(config)},
};
#define CFG_N (int)(sizeof cfg_opts / sizeof cfg_opts[0])
static const struct flag_table cfg_table = {"ppd serve", cfg_opts, CFG_N};

/* Other names the config file accepts for a key (the PPD settings grouped
 * under "ppd."; the earlier ppd.tree-size too). */
static const struct { const char *alias, *name; } cfg_file_aliases[] = {
    {"ppd.adapter", "ppd"}, {"ppd.tree", "tree"}, {"ppd.tree-budget", "tree-budget"}, {"ppd.accept", "ppd-accept"},
    {"ppd.calibrate", "calibrate"}, {"ppd.tree-size", "tree-budget"},
};
#define CFG_N_ALIAS (int)(sizeof cfg_file_aliases / sizeof cfg_file_aliases[0])

/* The first config-file alias of a setting, for --help. */
static const char *cfg_alias_of(const char *name) {
    for (int i = 0; i < CFG_N_ALIAS; i++)
        if (!strcmp(cfg_file_aliases[i].name, name)) return cfg_file_aliases[i].alias;
    return NULL;
}

/* PPD_<NAME>, upper case, '-' -> '_'. */
static void cfg_env_name(const char *name, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "PPD_%s", name);
    for (size_t i = 4; i < n && i < cap; i++) buf[i] = buf[i] == '-' ? '_' : (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
}

void srv_config_usage(FILE *fp) {
    fprintf(fp, "usage: ppd serve [flags]\n\nEvery flag can also be set by the environment variable shown "
                "(a flag given on the command line wins).\n\n");
    for (int i = 0; i < CFG_N; i++) {
        const struct flag_spec *s = cfg_opts[i].spec;
        char env[64];
        cfg_env_name(s->name, env, sizeof env);
        flag_usage_line(fp, s);
        const char *alias = cfg_alias_of(s->name);
        fprintf(fp, "  %-26s env %s%s%s\n", "", env, alias ? "; config-file key also " : "", alias ? alias : "");
    }
    fprintf(fp, "  %-26s this text\n", "-h, --help");
}

/* A config-file key: the long name, an earlier name or a file alias. */
static const struct flag_opt *cfg_find_key(const char *key) {
    for (int i = 0; i < CFG_N_ALIAS; i++)
        if (!strcmp(cfg_file_aliases[i].alias, key)) key = cfg_file_aliases[i].name;
    return flag_find(&cfg_table, key);
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
        const struct flag_opt *o = cfg_find_key(key);
        snprintf(where, sizeof where, "%s:%d: %s", path, line, key);
        if (!o || o->off == F(config)) {
            fprintf(stderr, "ppd serve: %s: unknown key (see ppd serve --help)\n", where);
            return 2;
        }
        if (flag_set(&cfg_table, o, c, where, val)) return 2;
    }
    return 0;
}

/* PPD_<NAME> for every setting; an earlier name's variable is read first, so
 * the current one wins where both are set. */
static int cfg_read_env(struct srv_config *c) {
    for (int i = 0; i < CFG_N; i++) {
        const struct flag_spec *s = cfg_opts[i].spec;
        for (int k = 0; k < 2; k++) {
            const char *name = k ? s->name : s->old_name;
            if (!name) continue;
            char env[64];
            cfg_env_name(name, env, sizeof env);
            const char *v = getenv(env);
            if (v && *v && flag_set(&cfg_table, &cfg_opts[i], c, env, v)) return 2;
        }
    }
    return 0;
}

int srv_config_load(struct srv_config *c, int argc, char **argv) {
    memset(c, 0, sizeof *c);
    if (flag_defaults(&cfg_table, c)) return 2;
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
    if (cfg_read_env(c)) return 2;
    int rc = flag_parse(&cfg_table, c, argc, argv, NULL);
    if (rc == 1) srv_config_usage(stdout);
    if (rc) return rc;
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
        const struct flag_opt *o = &cfg_opts[i];
        if (o->spec->kind == FLAG_STR) {
            const char *v = *(const char *const *)(base + o->off);
            if (o->off == F(api_key) && v && *v) v = "(set)";
            LOG_INFO("  %-14s %s", o->spec->name, v ? v : "(unset)");
        } else {
            LOG_INFO("  %-14s %ld", o->spec->name, *(const long *)(base + o->off));
        }
    }
}
