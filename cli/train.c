/* train.c — `ppd train`: train the PPD prompt tokens on a `ppd distill`
 * file and write the adapter (engine/train/train.h does the work).  The model,
 * threads and verbose flags are the settings every program shares
 * (server/settings.h); the training flags are described here.
 */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "server/settings.h"
#include "engine/err.h"
#include "engine/log.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/train/train.h"

/* The flags as they read; cmd_train copies them into eng_train_params. */
struct train_opts {
    const char *data, *model, *output, *init, *checkpoint, *loss;
    long n_prompt, topk, epochs, steps, stop_after, max_seqs, batch, cuts, val_max, eval_every, save_every, seed,
        threads, resume, force, measure_only, deep, verbose;
    double lr, weight_decay, val;
};

#define O(field) offsetof(struct train_opts, field)
#define TRAIN(...) FLAG_OWN(__VA_ARGS__)

/* Defaults are eng_train_params_default's; a count left at 0 means "no limit". */
static const struct flag_opt train_flags[] = {
    {TRAIN(.name = "data", .short_flag = "-d", .kind = FLAG_STR, .meta = "FILE", .help = "sequences from `ppd distill`"),
     O(data)},
    {&setting_model, O(model)},
    {TRAIN(.name = "output", .short_flag = "-o", .kind = FLAG_STR, .meta = "FILE",
           .help = "adapter to write (default: MODEL with .ppd.gguf)"), O(output)},
    {TRAIN(.name = "init", .kind = FLAG_STR, .meta = "FILE",
           .help = "start from this adapter (default: the paper's text initialisation)"), O(init)},
    {TRAIN(.name = "n-prompt", .kind = FLAG_INT, .min = 1, .max = ENG_PPD_MAX_PROMPT, .def = "3",
           .help = "prompt tokens"), O(n_prompt)},
    {TRAIN(.name = "topk", .kind = FLAG_INT, .min = 1, .max = ENG_PPD_MAX_TOPK, .def = "10", .meta = "K",
           .help = "guesses per prompt token measured and stored"), O(topk)},
    {TRAIN(.name = "epochs", .kind = FLAG_INT, .min = 1, .max = 1000, .def = "1", .meta = "E",
           .help = "passes over the training sequences"), O(epochs)},
    {TRAIN(.name = "steps", .kind = FLAG_INT, .min = 1, .max = 100000000, .meta = "S",
           .help = "stop after S optimiser steps (the schedule spans them; default: the epochs')"), O(steps)},
    {TRAIN(.name = "max-seqs", .kind = FLAG_INT, .min = 2, .max = 100000000,
           .help = "use only the first N records of the data (default: all)"), O(max_seqs)},
    {TRAIN(.name = "batch", .kind = FLAG_INT, .min = 1, .max = 64, .def = "4", .meta = "B",
           .help = "sequences per optimiser step"), O(batch)},
    {TRAIN(.name = "cuts", .kind = FLAG_INT, .min = 1, .max = 1024, .def = "16", .meta = "C",
           .help = "cut points per sequence per step"), O(cuts)},
    {TRAIN(.name = "lr", .kind = FLAG_FLOAT, .fmin = 1e-9, .fmax = 10, .def = "1e-2", .meta = "LR",
           .help = "AdamW learning rate, cosine schedule"), O(lr)},
    {TRAIN(.name = "deep", .kind = FLAG_BOOL,
           .help = "deep prompts: also train a vector per layer and prompt token, added to the prompt rows at "
                   "every layer (n_layer x the parameters; not in the paper)"), O(deep)},
    {TRAIN(.name = "loss", .kind = FLAG_STR, .choices = "kl|ce", .def = "kl", .meta = "kl|ce",
           .help = "KL(teacher || student) over the vocabulary (the paper's), or cross-entropy on the teacher's "
                   "top token"), O(loss)},
    {TRAIN(.name = "weight-decay", .kind = FLAG_FLOAT, .fmin = 0, .fmax = 10, .def = "0", .meta = "W",
           .help = "AdamW weight decay"), O(weight_decay)},
    {TRAIN(.name = "val", .kind = FLAG_FLOAT, .fmin = 0, .fmax = 1, .def = "0.05", .meta = "FRACTION",
           .help = "held-out share of the sequences, at most --val-max (1, all of them, with --measure-only)"),
     O(val)},
    {TRAIN(.name = "val-max", .kind = FLAG_INT, .min = 0, .max = 100000000, .def = "64",
           .help = "held-out sequences at most (0: no cap)"), O(val_max)},
    {TRAIN(.name = "eval-every", .kind = FLAG_INT, .min = 0, .max = 100000000, .def = "0", .meta = "S",
           .help = "steps between held-out evaluations (0: only at the end)"), O(eval_every)},
    {TRAIN(.name = "checkpoint", .kind = FLAG_STR, .meta = "FILE",
           .help = "save optimiser state here (every --save-every steps and at the end)"), O(checkpoint)},
    {TRAIN(.name = "save-every", .kind = FLAG_INT, .min = 0, .max = 100000000, .def = "0", .meta = "S",
           .help = "steps between checkpoints (0: only at the end)"), O(save_every)},
    {TRAIN(.name = "resume", .kind = FLAG_BOOL, .help = "continue from --checkpoint when it exists"), O(resume)},
    {TRAIN(.name = "stop-after", .kind = FLAG_INT, .min = 1, .max = 100000000, .meta = "S",
           .help = "stop after S steps of the schedule (with --checkpoint: resume later)"), O(stop_after)},
    /* not the sampling seed of generate and bench: it orders the data and draws the cut points */
    {TRAIN(.name = "seed", .kind = FLAG_INT, .min = 0, .max = LONG_MAX, .def = "1", .meta = "S",
           .help = "training seed (data order, cut points): the same seed, data and settings give the same "
                   "adapter"), O(seed)},
    {&setting_threads, O(threads)},
    {TRAIN(.name = "measure-only", .kind = FLAG_BOOL,
           .help = "no training: measure the --init adapter's hit rates and rank joint on the held-out split and "
                   "write it with them (-o)"), O(measure_only)},
    {TRAIN(.name = "force", .kind = FLAG_BOOL, .help = "overwrite an existing output file"), O(force)},
    {&setting_verbose, O(verbose)},
};

static const struct flag_table train_table = FLAG_TABLE("ppd train", train_flags);

static void train_usage(FILE *fp) {
    fprintf(fp, "usage: ppd train -d DISTILL.jsonl [flags]\n");
    flag_usage(fp, &train_table);
}

/* The flags into p and *force; 0, 1 after --help, 2 after a message. */
static int train_parse(int argc, char **argv, struct eng_train_params *p, int *force) {
    struct train_opts o;
    memset(&o, 0, sizeof o);
    int rc = flag_defaults(&train_table, &o);
    if (!rc) rc = flag_parse(&train_table, &o, argc, argv, NULL);
    if (rc == 1) train_usage(stdout);
    if (rc) return rc;
    eng_train_params_default(p);
    p->data_path = o.data, p->model_path = o.model, p->out_path = o.output, p->init_path = o.init;
    p->checkpoint_path = o.checkpoint, p->resume = (int)o.resume;
    p->n_prompt = (int)o.n_prompt, p->topk = (int)o.topk, p->epochs = (int)o.epochs;
    p->max_steps = o.steps, p->stop_after = o.stop_after, p->max_seqs = o.max_seqs;
    p->batch_seqs = (int)o.batch, p->cuts_per_seq = (int)o.cuts;
    p->lr = o.lr, p->weight_decay = o.weight_decay, p->loss_ce = !strcmp(o.loss, "ce");
    p->val_frac = o.val, p->val_max_seqs = (int)o.val_max, p->eval_every = (int)o.eval_every;
    p->save_every = (int)o.save_every, p->seed = (uint64_t)o.seed, p->n_threads = (int)o.threads;
    p->deep = (int)o.deep, p->eval_only = (int)o.measure_only;
    p->progress = isatty(2);
    *force = (int)o.force;
    if (o.verbose) eng_log_set_level(ENG_LOG_DEBUG);
    return 0;
}

int cmd_train(int argc, char **argv) {
    struct eng_train_params p;
    int force;
    int rc = train_parse(argc, argv, &p, &force);
    if (rc) return rc == 1 ? 0 : rc;
    char out_default[4096];
    if (!p.data_path) { fprintf(stderr, "ppd train: -d DISTILL.jsonl is required (make one with `ppd distill`)\n"); return 2; }
    if (p.eval_only && !p.init_path) { fprintf(stderr, "ppd train: --measure-only needs --init ADAPTER\n"); return 2; }
    if (p.resume && !p.checkpoint_path) { fprintf(stderr, "ppd train: --resume needs --checkpoint FILE\n"); return 2; }
    if (!p.out_path) {
        if (eng_ppd_adapter_default_path(p.model_path, out_default, sizeof out_default)) {
            fprintf(stderr, "ppd train: model path too long\n");
            return 2;
        }
        p.out_path = out_default;
    }
    if (!force && !p.resume && access(p.out_path, F_OK) == 0) {
        fprintf(stderr, "ppd train: %s exists (use --force to overwrite, or -o)\n", p.out_path);
        return 1;
    }
    struct eng_train_report r;
    char err[1024];
    rc = eng_train_run(&p, &r, err, sizeof err);
    if (rc) { fprintf(stderr, "ppd train: %s\n", err); return 1; }
    printf("{\"adapter\":\"%s\",\"steps\":%ld,\"cuts\":%ld,\"train_seqs\":%d,\"val_seqs\":%d,\"tokens\":%ld,"
           "\"train_loss\":%.6f,\"val_loss_init\":%.6f,\"val_loss\":%.6f,\"seconds\":%.1f,\"teacher_s\":%.1f,"
           "\"student_s\":%.1f,\"top1_init\":[",
           p.out_path, r.steps, r.cuts, r.n_train, r.n_val, r.tokens, r.train_loss, r.val_loss_init, r.val_loss,
           r.seconds, r.teacher_s, r.student_s);
    for (int i = 0; i < p.n_prompt; i++) printf("%s%.4f", i ? "," : "", r.acc_init[i]);
    printf("],\"accuracy\":[");
    for (int i = 0; i < p.n_prompt; i++) {
        printf("%s[", i ? "," : "");
        for (int k = 0; k < p.topk; k++) printf("%s%.4f", k ? "," : "", r.acc[i][k]);
        printf("]");
    }
    printf("]}\n");
    return 0;
}
