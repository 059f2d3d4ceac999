/* distill.c — `ppd distill`: the self-distillation corpus for `ppd train`.
 *
 * Reads a prompt JSONL (one {"id": str, "turns": [str, ...]} per line; only
 * turns[0] is used, as one user message), picks a seeded shuffle of it,
 * renders each prompt with the model's chat template (generation prompt
 * added, as `ppd generate --chat` does) and lets the base model answer
 * greedily.  Many prompts run at once through the continuous-batching
 * scheduler (engine/decode/sched.h); every batch row is computed independently of
 * the others, so each answer is exactly what `ppd generate --chat -p PROMPT
 * -n MAX_TOKENS` prints for that prompt alone.
 *
 * Output (JSONL, the format `ppd train` reads):
 *   line 1: {"ppd_distill": 1, "model": NAME, "fingerprint": "0x%016x",
 *            "prompts": PATH, "prompts_sha256": HEX, "seed": S, "count": N,
 *            "max_tokens": M, "max_prompt": X[, "skip": K]}
 *   then per answered prompt, in selection order:
 *           {"id": ID, "prompt": [ids], "answer": [ids], "finish": "eog"|"length"|"context"}
 *   "answer" includes the end-of-generation token when the model emitted one.
 * Each line is flushed as soon as it and all lines before it are complete, so
 * an interrupted run leaves a valid prefix (and at most one partial line).
 *
 * Selection: the file's non-blank lines in file order, permuted by a
 * Fisher-Yates shuffle driven by splitmix64 seeded with --seed (for i from
 * n-1 down to 1: j = splitmix64() % (i + 1), swap i and j), then the first
 * --count of them, after the first --skip (0 by default).  The first N of a
 * selection do not depend on --count, so a larger --count extends an earlier
 * run; --skip K --count M picks prompts that a run of --count K never saw
 * (held-out data for measuring the prompt tokens: `make adapter` does this).
 *
 * Resume: when OUT exists with a header equal to the new one on every field
 * except "count", the records that match the selection (same id, same prompt
 * tokens, in order) are kept, the header is rewritten with the new count, and
 * only the rest is generated.  A different header is refused, naming the
 * first differing field, unless --force.
 *
 * The model, threads and verbose flags are the settings every program shares
 * (server/settings.h); -np reads as serve's --parallel; --seed is the
 * shuffle's, not a sampling seed.
 *
 * Not here: training (train.c), sampling (distillation is greedy by
 * design: the trainer's teacher is the model's own argmax continuation), PPD
 * (the answers are the base model's plain output; PPD would give the same
 * tokens).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "server/settings.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/decode/sched.h"
#include "engine/load/sha256.h"
#include "engine/load/tokenizer.h"

#define DIST_FORMAT_VERSION 1
#define DIST_MAX_ROWS 64            /* rows per step: all decode rows plus prefill chunks */
#define DIST_LOG_EVERY_S 10.0       /* progress line period when stderr is not a terminal */

struct dist_opts {
    const char *prompts, *out, *model;
    long count;                     /* 0: all */
    long skip;                      /* leading prompts of the shuffled order left out */
    long seed, max_tokens, max_prompt, parallel, n_threads, force, verbose;
};

#define O(field) offsetof(struct dist_opts, field)
#define DIST(...) FLAG_OWN(__VA_ARGS__)

static const struct flag_opt dist_flags[] = {
    {DIST(.name = "file", .short_flag = "-f", .kind = FLAG_STR, .meta = "FILE",
          .help = "prompt JSONL: one {\"id\": ..., \"turns\": [TEXT, ...]} per line; turns[0] is rendered as one "
                  "user message with the chat template"), O(prompts)},
    {DIST(.name = "output", .short_flag = "-o", .kind = FLAG_STR, .meta = "FILE",
          .help = "output JSONL (header line, then one record per answered prompt)"), O(out)},
    {&setting_model, O(model)},
    {DIST(.name = "count", .kind = FLAG_INT, .min = 1, .max = 1L << 40,
          .help = "answer the first N prompts of the shuffled file (default: all)"), O(count)},
    /* not the sampling seed of generate and bench: distillation is greedy, this orders the prompts */
    {DIST(.name = "seed", .kind = FLAG_INT, .min = 0, .max = LONG_MAX, .def = "1", .meta = "S",
          .help = "shuffle seed"), O(seed)},
    {DIST(.name = "skip", .kind = FLAG_INT, .min = 0, .max = 1L << 40, .def = "0",
          .help = "leave out the first N prompts of the shuffled file: --skip N picks prompts a run with --count N "
                  "never answered"), O(skip)},
    {DIST(.name = "n-predict", .short_flag = "-n", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "256",
          .help = "answer tokens at most"), O(max_tokens)},
    {DIST(.name = "max-prompt", .kind = FLAG_INT, .min = 1, .max = 1 << 20, .def = "768",
          .help = "skip (and count) prompts longer than N tokens"), O(max_prompt)},
    /* serve's --parallel: the same range and meaning, more sequences by default */
    {DIST(.name = "parallel", .short_flag = "-np", .kind = FLAG_INT, .min = 1, .max = 256, .def = "8",
          .help = "sequences decoded at once (KV slots)"), O(parallel)},
    {&setting_threads, O(n_threads)},
    {DIST(.name = "force", .kind = FLAG_BOOL, .help = "overwrite OUT even when it holds another run's output"),
     O(force)},
    {&setting_verbose, O(verbose)},
};

static const struct flag_table dist_table = FLAG_TABLE("ppd distill", dist_flags);

static void dist_usage(FILE *fp) {
    fprintf(fp, "usage: ppd distill -f PROMPTS.jsonl -o OUT.jsonl [flags]\n"
                "Lets the base model answer a prompt set greedily and writes the token sequences\n"
                "(the training data of `ppd train`).\n");
    flag_usage(fp, &dist_table);
    fprintf(fp, "An existing OUT with the same model, prompts, seed, -n and --max-prompt is resumed:\n"
                "its complete records are kept and only the missing ones are generated.\n");
}

static int dist_parse(int argc, char **argv, struct dist_opts *o) {
    memset(o, 0, sizeof *o);
    int rc = flag_defaults(&dist_table, o);
    if (!rc) rc = flag_parse(&dist_table, o, argc, argv, NULL);
    if (rc == 1) dist_usage(stdout);
    if (rc) return rc;
    if (o->verbose) eng_log_set_level(ENG_LOG_DEBUG);
    if (!o->prompts || !o->out) {
        fprintf(stderr, "ppd distill: give the prompts (-f FILE) and the output (-o FILE)\n");
        return 2;
    }
    return 0;
}

/* ---- the prompt file ---- */

struct dist_prompt {
    char *id, *text;                /* turns[0] */
    long line;                      /* 1-based line in the file, for messages */
};

struct dist_prompts {
    struct dist_prompt *p;
    long n;
    char sha256[ENG_SHA256_HEX];
};

static void dist_prompts_free(struct dist_prompts *ps) {
    for (long i = 0; i < ps->n; i++) {
        free(ps->p[i].id);
        free(ps->p[i].text);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

/* Whole file into memory with its length (the hash covers every byte, NULs
 * included).  NULL with a message on error. */
static char *dist_read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) { fprintf(stderr, "ppd distill: cannot open %s: %s\n", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, fp);
        if (n < cap - 1) break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (!buf) { fprintf(stderr, "ppd distill: %s: out of memory\n", path); return NULL; }
    if (bad) { free(buf); fprintf(stderr, "ppd distill: error reading %s\n", path); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int dist_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* Every non-blank line must be a JSON object with an "id" string and a
 * "turns" array whose first element is a string; the first line that is not
 * is an error naming FILE:LINE (a malformed file is better refused whole
 * than half-used). */
static int dist_prompts_load(struct dist_prompts *ps, const char *path) {
    memset(ps, 0, sizeof *ps);
    size_t len;
    char *buf = dist_read_all(path, &len);
    if (!buf) return -1;
    eng_sha256_hex(buf, len, ps->sha256);
    long cap = 0, line = 0;
    int rc = -1;
    for (size_t off = 0; off < len;) {
        const char *s = buf + off, *nl = memchr(s, '\n', len - off);
        size_t n = nl ? (size_t)(nl - s) : len - off;
        off += n + (nl != NULL);
        line++;
        if (dist_blank(s, n)) continue;
        json_error_t je;
        json_t *j = json_loadb(s, n, 0, &je);
        const char *why = NULL;
        json_t *id = json_object_get(j, "id"), *turns = json_object_get(j, "turns");
        json_t *t0 = json_array_get(turns, 0);
        if (!j) why = je.text;
        else if (!json_is_object(j)) why = "not a JSON object";
        else if (!json_is_string(id)) why = "no \"id\" string";
        else if (!json_is_array(turns)) why = "no \"turns\" array";
        else if (!json_is_string(t0)) why = "\"turns\"[0] is not a string";
        if (why) {
            fprintf(stderr, "ppd distill: %s:%ld: %s\n", path, line, why);
            json_decref(j);
            goto out;
        }
        if (ps->n == cap) {
            cap = cap ? cap * 2 : 1024;
            struct dist_prompt *np = realloc(ps->p, sizeof *np * (size_t)cap);
            if (!np) { json_decref(j); goto nomem; }
            ps->p = np;
        }
        struct dist_prompt *p = &ps->p[ps->n];
        p->id = strdup(json_string_value(id));
        p->text = strdup(json_string_value(t0));
        p->line = line;
        json_decref(j);
        ps->n++;
        if (!p->id || !p->text) goto nomem;
    }
    if (ps->n == 0) { fprintf(stderr, "ppd distill: %s: no prompts\n", path); goto out; }
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "ppd distill: %s: out of memory\n", path);
out:
    free(buf);
    if (rc) dist_prompts_free(ps);
    return rc;
}

/* splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed PRNG whose whole
 * definition is these lines, so other tools can reproduce the selection. */
static uint64_t dist_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The selection order: a permutation of 0..n-1 (see the file comment). */
static long *dist_shuffle(long n, uint64_t seed) {
    long *order = malloc(sizeof *order * (size_t)n);
    if (!order) return NULL;
    for (long i = 0; i < n; i++) order[i] = i;
    uint64_t st = seed;
    for (long i = n - 1; i > 0; i--) {
        long j = (long)(dist_splitmix64(&st) % (uint64_t)(i + 1));
        long t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    return order;
}

/* ---- the run ---- */

struct dist_buf {
    char *s;
    size_t n, cap;
};

enum dist_state { DIST_TODO = 0, DIST_SKIPPED, DIST_RESUMED, DIST_RUNNING, DIST_DONE };

struct dist_item {
    const struct dist_prompt *p;
    enum dist_state state;
    int32_t *ids;                   /* rendered prompt while preparing; the request keeps its own copy */
    int n_ids;
    struct eng_sched_req *req;      /* from submit until its record is written */
    enum eng_sched_finish finish;
    int err;
};

struct dist_run {
    const struct dist_opts *o;
    struct eng_engine *e;
    struct dist_item *items;        /* [n] in selection order */
    long n;
    long next;                      /* first item not yet prepared */
    long written;                   /* items [0, written) are on disk, resumed or skipped */
    long n_inflight;
    long n_skipped, n_resumed, n_answered;
    long n_finish[3];               /* eog, length, context */
    long long n_tokens;             /* generated this run */
    long long n_tokens_fin;         /* of which by the answers finished */
    long n_fin;                     /* answers finished this run */
    double t0, t_last_log;
    int tty;
    FILE *fp;
    const char *fp_path;            /* what fp writes (OUT, or OUT.tmp while resuming) */
    struct dist_buf line;           /* the record being written */
};

/* Render and tokenize the item's prompt; a prompt over --max-prompt tokens
 * (or with no room left in the context) becomes SKIPPED. */
static int dist_item_prepare(struct dist_run *r, struct dist_item *it) {
    char err[512];
    struct chat_msg msg = {"user", it->p->text};
    if (eng_engine_chat_tokens(r->e, &msg, 1, &it->ids, &it->n_ids, err, sizeof err)) {
        fprintf(stderr, "ppd distill: %s:%ld (id %s): %s\n", r->o->prompts, it->p->line, it->p->id, err);
        return -1;
    }
    if (it->n_ids < 1 || it->n_ids > r->o->max_prompt || it->n_ids >= r->e->kv.max_seq) {
        free(it->ids);
        it->ids = NULL;
        it->state = DIST_SKIPPED;
        r->n_skipped++;
    }
    return 0;
}

static const char *dist_finish_name(enum eng_sched_finish f) {
    switch (f) {
    case ENG_SCHED_FINISH_EOG: return "eog";
    case ENG_SCHED_FINISH_LENGTH: return "length";
    case ENG_SCHED_FINISH_CONTEXT: return "context";
    default: return NULL;
    }
}

/* The header as a JSON object, fields in their documented order. */
static json_t *dist_header_new(const struct dist_opts *o, const struct eng_engine *e, const struct dist_prompts *ps,
                               long count) {
    char fp[24];
    snprintf(fp, sizeof fp, "0x%016" PRIx64, e->model->fingerprint);
    json_t *h = json_object();
    json_object_set_new(h, "ppd_distill", json_integer(DIST_FORMAT_VERSION));
    json_object_set_new(h, "model", json_string(e->model->name));
    json_object_set_new(h, "fingerprint", json_string(fp));
    json_object_set_new(h, "prompts", json_string(o->prompts));
    json_object_set_new(h, "prompts_sha256", json_string(ps->sha256));
    json_object_set_new(h, "seed", json_integer(o->seed));
    json_object_set_new(h, "count", json_integer(count));
    json_object_set_new(h, "max_tokens", json_integer(o->max_tokens));
    json_object_set_new(h, "max_prompt", json_integer(o->max_prompt));
    if (o->skip) json_object_set_new(h, "skip", json_integer(o->skip));   /* absent when 0: older files still resume */
    return h;
}

/* The first field (in header order) where old and new differ, NULL when
 * they agree.  "count" is left out: a selection's first N records do not
 * depend on it, so a run can be extended (or cut) with another --count. */
static const char *dist_header_diff(const json_t *old, const json_t *new) {
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)new, key, v) {
        if (!strcmp(key, "count")) continue;
        json_t *ov = json_object_get(old, key);
        if (!ov || !json_equal(ov, v)) return key;
    }
    json_object_foreach((json_t *)old, key, v)   /* a field only the old run had ("skip") */
        if (strcmp(key, "count") && !json_object_get(new, key)) return key;
    return NULL;
}

/* Append one line and flush it; -1 with a message on a write error. */
static int dist_write_line(struct dist_run *r, const char *s, size_t n) {
    if (fwrite(s, 1, n, r->fp) != n || fflush(r->fp)) {
        fprintf(stderr, "ppd distill: cannot write %s: %s\n", r->fp_path, strerror(errno));
        return -1;
    }
    return 0;
}

static int dist_buf_printf(struct dist_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int dist_buf_printf(struct dist_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return -1;
        if (b->s && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return 0; }
        size_t nc = (b->cap + (size_t)k + 1) * 2;
        char *ns = realloc(b->s, nc);
        if (!ns) return -1;
        b->s = ns;
        b->cap = nc;
    }
}

static int dist_buf_ids(struct dist_buf *b, const int32_t *ids, int n) {
    int rc = dist_buf_printf(b, "[");
    for (int i = 0; i < n && !rc; i++) rc = dist_buf_printf(b, i ? ",%" PRId32 : "%" PRId32, ids[i]);
    return rc ? rc : dist_buf_printf(b, "]");
}

/* One record: {"id": ..., "prompt": [...], "answer": [...], "finish": ...}. */
static int dist_write_record(struct dist_run *r, const struct dist_item *it) {
    struct dist_buf *b = &r->line;
    const struct eng_sched_req *q = it->req;
    json_t *jid = json_string(it->p->id);
    char *id = jid ? json_dumps(jid, JSON_ENCODE_ANY) : NULL;
    json_decref(jid);
    b->n = 0;
    int rc = !id || dist_buf_printf(b, "{\"id\": %s, \"prompt\": ", id) || dist_buf_ids(b, q->prompt, q->n_prompt) ||
             dist_buf_printf(b, ", \"answer\": ") || dist_buf_ids(b, q->out_ids, q->n_gen) ||
             dist_buf_printf(b, ", \"finish\": \"%s\"}\n", dist_finish_name(it->finish));
    free(id);
    if (rc) { fprintf(stderr, "ppd distill: out of memory\n"); return -1; }
    return dist_write_line(r, b->s, b->n);
}

/* A kept record of an earlier run: the same id and the same rendered prompt
 * as the selection's item, a well-formed answer and finish. */
static int dist_record_matches(const char *line, size_t n, const struct dist_item *it) {
    json_t *j = json_loadb(line, n, 0, NULL);
    json_t *id = json_object_get(j, "id"), *prompt = json_object_get(j, "prompt"), *ans = json_object_get(j, "answer");
    const char *fin = json_string_value(json_object_get(j, "finish"));
    int ok = json_is_string(id) && !strcmp(json_string_value(id), it->p->id) && json_is_array(prompt) &&
             (long)json_array_size(prompt) == it->n_ids && json_is_array(ans) && fin &&
             (!strcmp(fin, "eog") || !strcmp(fin, "length") || !strcmp(fin, "context"));
    for (int i = 0; ok && i < it->n_ids; i++) {
        json_t *v = json_array_get(prompt, (size_t)i);
        ok = json_is_integer(v) && json_integer_value(v) == it->ids[i];
    }
    for (size_t i = 0; ok && i < json_array_size(ans); i++) ok = json_is_integer(json_array_get(ans, i));
    json_decref(j);
    return ok;
}

/* Open OUT: fresh (it does not exist, is empty, or --force), or resumed from
 * an earlier run with the same header (see the file comment).  Resuming
 * writes the new header and the kept records to OUT.tmp and renames it over
 * OUT, so an interruption here never loses the old file.  Returns 0, or -1
 * after printing why. */
static int dist_out_open(struct dist_run *r, json_t *hdr) {
    const struct dist_opts *o = r->o;
    char *old = NULL, *tmp = NULL, *hs = NULL;
    size_t old_len = 0;
    json_t *oh = NULL;
    int rc = -1;
    if (!(hs = json_dumps(hdr, JSON_PRESERVE_ORDER))) goto nomem;
    if (!o->force && access(o->out, F_OK) == 0) {
        if (!(old = dist_read_all(o->out, &old_len))) goto out;
    }
    if (old_len == 0) {
        r->fp_path = o->out;
        if (!(r->fp = fopen(o->out, "wb"))) {
            fprintf(stderr, "ppd distill: cannot create %s: %s\n", o->out, strerror(errno));
            goto out;
        }
        if (dist_write_line(r, hs, strlen(hs)) || dist_write_line(r, "\n", 1)) goto out;
        rc = 0;
        goto out;
    }
    const char *nl = memchr(old, '\n', old_len);
    json_t *ver = NULL;
    if (nl) oh = json_loadb(old, (size_t)(nl - old), 0, NULL);
    if (oh) ver = json_object_get(oh, "ppd_distill");
    if (!json_is_object(oh) || !ver) {
        fprintf(stderr, "ppd distill: %s exists and is not a ppd distill output; use --force to overwrite it\n", o->out);
        goto out;
    }
    const char *diff = dist_header_diff(oh, hdr);
    if (diff) {
        char *was = json_dumps(json_object_get(oh, diff), JSON_ENCODE_ANY);
        char *now = json_dumps(json_object_get(hdr, diff), JSON_ENCODE_ANY);
        fprintf(stderr, "ppd distill: %s was made with a different %s (%s there, %s now); "
                        "use --force to overwrite it, or another -o\n", o->out, diff, was ? was : "missing",
                now ? now : "?");
        free(was);
        free(now);
        goto out;
    }
    /* Walk the selection and the old records together: skipped prompts have
     * no record; every other prompt must find its record next. */
    const char *rec = nl + 1, *end = old + old_len;
    long n_old = 0, kept = 0;
    for (const char *p = rec; p < end; p++) n_old += *p == '\n';
    size_t keep_bytes = 0;
    while (kept < n_old && r->next < r->n) {
        struct dist_item *it = &r->items[r->next];
        if (dist_item_prepare(r, it)) goto out;
        if (it->state == DIST_SKIPPED) { r->next++; continue; }
        const char *q = rec + keep_bytes, *qe = memchr(q, '\n', (size_t)(end - q));
        int ok = dist_record_matches(q, (size_t)(qe - q), it);
        free(it->ids);
        it->ids = NULL;
        if (!ok) {
            /* undo the preparation: this item is generated again */
            it->n_ids = 0;
            break;
        }
        it->state = DIST_RESUMED;
        keep_bytes += (size_t)(qe - q) + 1;
        kept++;
        r->next++;
    }
    r->n_resumed = kept;
    if (kept < n_old)
        fprintf(stderr, "ppd distill: %s: dropping %ld record(s) that %s\n", o->out, n_old - kept,
                r->next >= r->n ? "lie beyond --count" : "do not match the prompt selection");
    if (end > rec && end[-1] != '\n') fprintf(stderr, "ppd distill: %s: dropping an incomplete last line\n", o->out);
    size_t tl = strlen(o->out) + 5;
    if (!(tmp = malloc(tl))) goto nomem;
    snprintf(tmp, tl, "%s.tmp", o->out);
    r->fp_path = tmp;
    if (!(r->fp = fopen(tmp, "wb"))) {
        fprintf(stderr, "ppd distill: cannot create %s: %s\n", tmp, strerror(errno));
        goto out;
    }
    if (dist_write_line(r, hs, strlen(hs)) || dist_write_line(r, "\n", 1) || dist_write_line(r, rec, keep_bytes)) {
        unlink(tmp);
        goto out;
    }
    if (fsync(fileno(r->fp))) {   /* the kept records must be on disk before the old file goes */
        fprintf(stderr, "ppd distill: cannot write %s: %s\n", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, o->out)) {
        fprintf(stderr, "ppd distill: cannot rename %s to %s: %s\n", tmp, o->out, strerror(errno));
        unlink(tmp);
        goto out;
    }
    r->fp_path = o->out;
    fprintf(stderr, "ppd distill: resuming %s: %ld record(s) kept, %ld prompt(s) skipped so far\n", o->out, kept,
            r->n_skipped);
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "ppd distill: out of memory\n");
out:
    if (rc && r->fp) {
        fclose(r->fp);
        r->fp = NULL;
    }
    json_decref(oh);
    free(hs);
    free(tmp);
    free(old);
    return rc;
}

static void dist_on_event(void *user, const struct eng_sched_event *ev) {
    struct dist_run *r = user;
    struct dist_item *it = ev->req->user;
    r->n_tokens += ev->n_ids;
    if (ev->finish == ENG_SCHED_RUNNING) return;
    it->finish = ev->finish;
    it->err = ev->err;
    it->state = DIST_DONE;
    r->n_inflight--;
    r->n_fin++;
    r->n_tokens_fin += ev->n_gen;
}

/* Write every finished item at the head of the selection (records stay in
 * selection order whatever order the sequences finish in). */
static int dist_flush_ready(struct dist_run *r) {
    while (r->written < r->n) {
        struct dist_item *it = &r->items[r->written];
        if (it->state == DIST_DONE) {
            const char *f = dist_finish_name(it->finish);
            if (!f) {
                fprintf(stderr, "ppd distill: %s (id %s): generation failed: %s\n", r->o->prompts, it->p->id,
                        it->err ? eng_err_msg(it->err) : "unexpected finish");
                return -1;
            }
            if (dist_write_record(r, it)) return -1;
            r->n_finish[it->finish == ENG_SCHED_FINISH_EOG ? 0 : it->finish == ENG_SCHED_FINISH_LENGTH ? 1 : 2]++;
            r->n_answered++;
            eng_sched_req_free(it->req);
            it->req = NULL;
        } else if (it->state != DIST_SKIPPED && it->state != DIST_RESUMED) {
            break;
        }
        r->written++;
    }
    return 0;
}

static void dist_fmt_time(char *s, size_t cap, double sec) {
    if (sec < 0 || sec > 1e7) { snprintf(s, cap, "--:--"); return; }
    long t = (long)(sec + 0.5);
    if (t >= 3600) snprintf(s, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(s, cap, "%02ld:%02ld", t / 60, t % 60);
}

/* Progress on stderr: a redrawn bar on a terminal, else a line every
 * DIST_LOG_EVERY_S.  The ETA counts tokens: each unfinished prompt is assumed
 * to need the mean answer length so far (max_tokens before any has finished),
 * less what the running ones already have, at the tokens/s so far. */
static void dist_progress(struct dist_run *r, int final) {
    double now = eng_now_s(), el = now - r->t0;
    if (!final && now - r->t_last_log < (r->tty ? 0.25 : DIST_LOG_EVERY_S)) return;
    r->t_last_log = now;
    long done = r->written;
    for (long i = r->written; i < r->next; i++) done += r->items[i].state == DIST_DONE;
    double tps = el > 0 ? (double)r->n_tokens / el : 0;
    double mean = r->n_fin ? (double)r->n_tokens_fin / (double)r->n_fin : (double)r->o->max_tokens;
    double left = (double)(r->n - done) * mean - (double)(r->n_tokens - r->n_tokens_fin);
    char eta[32], els[32];
    dist_fmt_time(eta, sizeof eta, tps > 0 ? (left > 0 ? left : 0) / tps : -1);
    dist_fmt_time(els, sizeof els, el);
    if (r->tty) {
        char bar[31];
        int w = (int)(30 * done / (r->n ? r->n : 1));
        for (int i = 0; i < 30; i++) bar[i] = i < w ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r[%s] %ld/%ld  %.1f tok/s  %s  ETA %s\033[K%s", bar, done, r->n, tps, els, final ? "00:00" : eta,
                final ? "\n" : "");
    } else if (!final) {
        fprintf(stderr, "ppd distill: %ld/%ld prompts, %.1f tok/s, elapsed %s, ETA %s\n", done, r->n, tps, els, eta);
    }
}

/* Feed prompts to the scheduler (keeping every slot busy with a few more
 * waiting), step it, write finished records, until everything is written. */
static int dist_generate(struct dist_run *r) {
    const struct dist_opts *o = r->o;
    struct eng_sched s;
    int max_rows = o->parallel > DIST_MAX_ROWS ? (int)o->parallel : DIST_MAX_ROWS;
    struct eng_sched_params sp = {.n_slot = (int)o->parallel, .max_rows = max_rows, .emit = dist_on_event, .user = r};
    struct eng_sampler_params greedy = {.temperature = 0.0f, .top_p = 1.0f};
    int rc = eng_sched_init(&s, &r->e->fwd, &r->e->kv, r->e->tok, &sp);
    if (rc) {
        fprintf(stderr, "ppd distill: cannot start the scheduler: %s\n", eng_err_msg(rc));
        return -1;
    }
    int status = -1;
    while (r->written < r->n) {
        while (r->next < r->n && r->n_inflight < 2 * o->parallel) {
            struct dist_item *it = &r->items[r->next];
            if (dist_item_prepare(r, it)) goto out;
            if (it->state != DIST_SKIPPED) {
                rc = eng_sched_req_init(&it->req, r->e->tok, it->ids, it->n_ids, (int)o->max_tokens, &greedy, NULL, 0);
                free(it->ids);
                it->ids = NULL;
                if (rc) { fprintf(stderr, "ppd distill: %s\n", eng_err_msg(rc)); goto out; }
                it->req->user = it;
                it->state = DIST_RUNNING;
                eng_sched_submit(&s, it->req);
                r->n_inflight++;
            }
            r->next++;
        }
        if (r->n_inflight > 0 && (rc = eng_sched_step(&s)) < 0) {
            if (dist_flush_ready(r) == 0)
                fprintf(stderr, "ppd distill: the forward pass failed: %s\n", eng_err_msg(rc));
            goto out;
        }
        if (dist_flush_ready(r)) goto out;
        if (r->n_inflight == 0 && r->next >= r->n && r->written < r->n) {
            fprintf(stderr, "ppd distill: internal error: nothing running and %ld record(s) unwritten\n",
                    r->n - r->written);
            goto out;
        }
        dist_progress(r, 0);
    }
    status = 0;
out:
    /* requests still inside are abandoned with the scheduler, then freed */
    eng_sched_free(&s);
    for (long i = r->written; i < r->n; i++) {
        eng_sched_req_free(r->items[i].req);
        r->items[i].req = NULL;
    }
    return status;
}

int cmd_distill(int argc, char **argv) {
    struct dist_opts o;
    int rc = dist_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    struct dist_prompts ps;
    if (dist_prompts_load(&ps, o.prompts)) return 1;

    struct dist_run r = {.o = &o};
    long *order = NULL;
    json_t *hdr = NULL;
    int status = 1;
    char err[512];
    if (o.skip >= ps.n) {
        fprintf(stderr, "ppd distill: --skip %ld leaves none of the %ld prompts of %s\n", o.skip, ps.n, o.prompts);
        goto done;
    }
    const long avail = ps.n - o.skip;
    r.n = o.count > 0 && o.count < avail ? o.count : avail;
    if (!(order = dist_shuffle(ps.n, (uint64_t)o.seed)) || !(r.items = calloc((size_t)r.n, sizeof *r.items))) {
        fprintf(stderr, "ppd distill: out of memory\n");
        goto done;
    }
    for (long i = 0; i < r.n; i++) r.items[i].p = &ps.p[order[o.skip + i]];

    /* The context holds the longest prompt kept plus the longest answer; a
     * model trained on less gets its own limit (answers then end "context"). */
    struct eng_engine_params ep = {.model_path = o.model, .n_threads = (int)o.n_threads, .n_slot = (int)o.parallel,
                                   .n_ctx = (int)(o.max_prompt + o.max_tokens),
                                   .max_rows = o.parallel > DIST_MAX_ROWS ? (int)o.parallel : DIST_MAX_ROWS};
    if (eng_engine_open(&r.e, &ep, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); goto done; }
    if (r.e->model->hp.n_ctx_train > 0 && ep.n_ctx > r.e->model->hp.n_ctx_train) {
        eng_engine_close(r.e);
        r.e = NULL;
        ep.n_ctx = 0;   /* the engine's default: min(trained context, 4096) */
        if (eng_engine_open(&r.e, &ep, err, sizeof err)) { fprintf(stderr, "ppd: %s\n", err); goto done; }
    }
    if (!r.e->chat_ok) {
        fprintf(stderr, "ppd distill: %s has no chat template ppd can render\n", o.model);
        goto done;
    }
    if (!(hdr = dist_header_new(&o, r.e, &ps, r.n))) goto done;
    if (dist_out_open(&r, hdr)) goto done;
    fprintf(stderr, "ppd distill: %ld of %ld prompts (seed %ld), %ld to generate, %ld at a time, %ld threads\n", r.n,
            ps.n, o.seed, r.n - r.next, o.parallel, o.n_threads);
    r.tty = isatty(2);
    r.t0 = r.t_last_log = eng_now_s();
    if (dist_generate(&r)) {
        if (r.tty) fputc('\n', stderr);
        goto done;
    }
    dist_progress(&r, 1);
    double el = eng_now_s() - r.t0;
    fprintf(stderr, "ppd distill: wrote %s: %ld answered, %ld resumed, %ld skipped (prompt over %ld tokens); "
                    "%lld tokens in %.1f s (%.1f tok/s); finish: eog %ld, length %ld, context %ld\n",
            o.out, r.n_answered, r.n_resumed, r.n_skipped, o.max_prompt, r.n_tokens, el,
            el > 0 ? (double)r.n_tokens / el : 0.0, r.n_finish[0], r.n_finish[1], r.n_finish[2]);
    status = 0;
done:
    if (r.fp && fclose(r.fp) && status == 0) {
        fprintf(stderr, "ppd distill: cannot write %s: %s\n", o.out, strerror(errno));
        status = 1;
    }
    json_decref(hdr);
    if (r.items)
        for (long i = 0; i < r.n; i++) free(r.items[i].ids);
    free(r.items);
    free(r.line.s);
    free(order);
    eng_engine_close(r.e);
    dist_prompts_free(&ps);
    return status;
}
