/* config.h — the server's settings: one table feeds the config file, the
 * flags, the PPD_* environment variables, `ppd serve --help` and the start-up
 * log.
 *
 * Precedence: built-in default < config file (--config FILE or PPD_CONFIG;
 * lines `key = value`, keys are the long flag names, `#` starts a comment) <
 * environment variable < command-line flag (the flag a user typed wins, as
 * with llama.cpp's LLAMA_ARG_*).  Unknown keys and flags and out-of-range
 * values stop start-up naming the key (and file:line) and the allowed range.
 * config/ppd.conf is the documented example.  In the file, the PPD keys may
 * also be written ppd.adapter, ppd.tree, ppd.tree-size and ppd.accept.
 */
#ifndef PPD_SERVER_CONFIG_H
#define PPD_SERVER_CONFIG_H

#include <stdio.h>

struct srv_config {
    const char *model;        /* GGUF path */
    const char *alias;        /* model id in the API; NULL: the model file's name */
    const char *host;
    long port;
    const char *api_key;      /* NULL/empty: no authentication */
    long n_ctx;               /* KV entries per slot */
    long n_predict;           /* default max_tokens; -1: until the context is full */
    long n_threads;
    const char *device;       /* "auto", "cpu" or "cuda" (eng_device_parse) */
    long n_parallel;          /* slots */
    long batch;               /* rows per forward step */
    long prefill_chunk;       /* prompt rows per sequence per step */
    long max_queue;           /* requests waiting beyond the slots before 429 */
    long max_body;            /* request body bytes before 413 */
    long drain_s;             /* seconds SIGTERM waits for in-flight requests */
    long keepalive_s;         /* SSE comment after this many quiet seconds */
    long timeout_s;           /* per-request deadline; 0: none */
    const char *chat_template;
    const char *ppd;          /* PPD adapter: FILE, "auto" (MODEL.ppd.gguf when it exists) or "none" */
    long no_ppd;              /* the same as ppd = none */
    const char *tree;         /* PPD tree family: "auto" (built from the adapter) or a JSON file */
    long tree_budget;         /* budget of the auto tree (lowered when the slots' trees do not fit a step) */
    const char *calibrate;    /* "auto" or "off" */
    const char *calib_cache;  /* NULL: the default directory; "": none */
    const char *prefix_cache; /* "on" or "off" */
    long prefix_cache_mb;     /* megabytes of the prefix cache's block store; -1: a quarter of the KV cache */
    const char *ppd_accept;   /* "exact" (lossless) or "typical" (Medusa typical acceptance, sampling only) */
    long verbose;
    const char *config;       /* the config file read, if any */
    char *file_text;          /* its contents; string settings may point into it */
};

/* Fill from defaults, then PPD_* variables, then argv (argv[0] is the
 * subcommand).  Returns 0, 1 when --help was printed, 2 on a usage error
 * (message on stderr). */
int srv_config_load(struct srv_config *c, int argc, char **argv);
void srv_config_free(struct srv_config *c);   /* accepts NULL */
void srv_config_usage(FILE *fp);
/* The effective configuration as one log block (the API key is masked). */
void srv_config_log(const struct srv_config *c);

#endif
