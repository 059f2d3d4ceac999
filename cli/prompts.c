/* prompts.c — prompt sets for the measuring subcommands (see prompts.h). */
#include "prompts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/load/chat.h"

int cli_prompts_load(const struct eng_engine *e, const char *who, const char *file, long skip, long count,
                     long n_predict, struct cli_prompt **out, int *n_out) {
    FILE *fp = fopen(file, "r");
    if (!fp) { fprintf(stderr, "%s: cannot open %s\n", who, file); return 1; }
    struct cli_prompt *p = calloc((size_t)count, sizeof *p);
    char *line = NULL, err[512];
    size_t cap = 0;
    int n = 0, lineno = 0, status = 1;
    if (!p) goto done;
    while (n < count && getline(&line, &cap, fp) > 0) {
        if (lineno++ < skip || line[strspn(line, " \t\r\n")] == 0) continue;
        json_t *o = json_loads(line, 0, NULL);
        const char *text = json_string_value(json_array_get(json_object_get(o, "turns"), 0));
        if (!text) {
            fprintf(stderr, "%s: %s:%d: no \"turns\"[0] string\n", who, file, lineno);
            json_decref(o);
            goto done;
        }
        struct chat_msg msg = {"user", text};
        int rc = eng_engine_chat_tokens(e, &msg, 1, &p[n].ids, &p[n].n, err, sizeof err);
        json_decref(o);
        if (rc) { fprintf(stderr, "%s: %s\n", who, err); goto done; }
        if (p[n].n + n_predict + 128 >= e->kv.max_seq) { free(p[n].ids); p[n].ids = NULL; continue; }
        p[n++].line = lineno;
    }
    status = n > 0 ? 0 : 1;
    if (!n) fprintf(stderr, "%s: %s: no usable prompts\n", who, file);
done:
    free(line);
    fclose(fp);
    *out = p;
    *n_out = n;
    return status;
}

void cli_prompts_free(struct cli_prompt *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) free(p[i].ids);
    free(p);
}
