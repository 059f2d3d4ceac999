/* train.c — `ppd train`: train the PPD prompt tokens on a `ppd distill`
 * file and write the adapter (engine/train.h does the work).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine/err.h"
#include "engine/ppd_adapter.h"
#include "engine/train.h"

static void train_usage(FILE *fp) {
    fprintf(fp,
            "usage: ppd train -d DISTILL.jsonl [flags]\n"
            "  -d, --data FILE        sequences from `ppd distill`\n"
            "  -m, --model FILE       base model (default %s)\n"
            "  -o, --output FILE      adapter to write (default: MODEL with .ppd.gguf)\n"
            "      --init FILE        start from this adapter (default: the paper's text initialisation)\n"
            "      --n-prompt N       prompt tokens (default 3)\n"
            "      --topk K           guesses per prompt token measured and stored (default 10)\n"
            "      --epochs E         passes over the training sequences (default 1)\n"
            "      --steps S          stop after S optimiser steps (the schedule spans them)\n"
            "      --max-seqs N       use only the first N records of the data\n"
            "      --batch B          sequences per optimiser step (default 4)\n"
            "      --cuts C           cut points per sequence per step (default 16)\n"
            "      --lr LR            AdamW learning rate, cosine schedule (default 1e-2)\n"
            "      --deep             deep prompts: also train a vector per layer and prompt token, added to\n"
            "                         the prompt rows at every layer (n_layer x the parameters; not in the paper)\n"
            "      --loss kl|ce       KL(teacher || student) over the vocabulary (default, the paper's),\n"
            "                         or cross-entropy on the teacher's top token\n"
            "      --weight-decay W   (default 0)\n"
            "      --val FRACTION     held-out share of the sequences (default 0.05, at most --val-max;\n"
            "                         1, all of them, with --measure-only)\n"
            "      --val-max N        held-out sequences at most (default 64)\n"
            "      --eval-every S     steps between held-out evaluations (default: only at the end)\n"
            "      --checkpoint FILE  save optimiser state here (every --save-every steps and at the end)\n"
            "      --save-every S     (default: only at the end)\n"
            "      --resume           continue from --checkpoint when it exists\n"
            "      --stop-after S     stop after S steps of the schedule (with --checkpoint: resume later)\n"
            "      --seed S           (default 1): same seed, data and settings give the same adapter\n"
            "  -t, --threads N        CPU threads (default: PPD_THREADS or the CPUs, at most 8)\n"
            "      --measure-only     no training: measure the --init adapter's hit rates and rank joint\n"
            "                         on the held-out split and write it with them (-o)\n"
            "      --force            overwrite an existing output file\n",
            PPD_DEFAULT_MODEL);
}

int cmd_train(int argc, char **argv) {
    struct eng_train_params p;
    eng_train_params_default(&p);
    p.model_path = PPD_DEFAULT_MODEL;
    p.n_threads = flag_default_threads();
    p.progress = isatty(2);
    int force = 0;
    char out_default[4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long l;
        double d;
#define VAL() do { if (!(v = flag_value(argc, argv, &i))) return 2; } while (0)
#define INT(lo, hi, dst) do { VAL(); if (flag_int(a, v, lo, hi, &l)) return 2; dst = l; } while (0)
#define DBL(lo, hi, dst) do { VAL(); if (flag_float(a, v, lo, hi, &d)) return 2; dst = d; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { train_usage(stdout); return 0; }
        else if (!strcmp(a, "-d") || !strcmp(a, "--data")) { VAL(); p.data_path = v; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); p.model_path = v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { VAL(); p.out_path = v; }
        else if (!strcmp(a, "--init")) { VAL(); p.init_path = v; }
        else if (!strcmp(a, "--n-prompt")) INT(1, 16, p.n_prompt);
        else if (!strcmp(a, "--topk")) INT(1, 64, p.topk);
        else if (!strcmp(a, "--epochs")) INT(1, 1000, p.epochs);
        else if (!strcmp(a, "--steps")) INT(1, 100000000, p.max_steps);
        else if (!strcmp(a, "--stop-after")) INT(1, 100000000, p.stop_after);
        else if (!strcmp(a, "--max-seqs")) INT(2, 100000000, p.max_seqs);
        else if (!strcmp(a, "--batch")) INT(1, 64, p.batch_seqs);
        else if (!strcmp(a, "--cuts")) INT(1, 1024, p.cuts_per_seq);
        else if (!strcmp(a, "--lr")) DBL(1e-9, 10, p.lr);
        else if (!strcmp(a, "--weight-decay")) DBL(0, 10, p.weight_decay);
        else if (!strcmp(a, "--val")) DBL(0, 1, p.val_frac);   /* 1: all held out (--measure-only) */
        else if (!strcmp(a, "--val-max")) INT(0, 100000000, p.val_max_seqs);
        else if (!strcmp(a, "--eval-every")) INT(0, 100000000, p.eval_every);
        else if (!strcmp(a, "--save-every")) INT(0, 100000000, p.save_every);
        else if (!strcmp(a, "--checkpoint")) { VAL(); p.checkpoint_path = v; }
        else if (!strcmp(a, "--resume")) p.resume = 1;
        else if (!strcmp(a, "--seed")) { INT(0, 0x7fffffffffffffffL, l); p.seed = (uint64_t)l; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) INT(1, 1024, p.n_threads);
        else if (!strcmp(a, "--force")) force = 1;
        else if (!strcmp(a, "--measure-only")) p.eval_only = 1;
        else if (!strcmp(a, "--deep")) p.deep = 1;
        else if (!strcmp(a, "--loss")) {
            VAL();
            if (strcmp(v, "kl") && strcmp(v, "ce")) { fprintf(stderr, "ppd train: --loss: '%s' is not kl or ce\n", v); return 2; }
            p.loss_ce = !strcmp(v, "ce");
        }
        else { fprintf(stderr, "ppd train: unknown flag '%s' (see --help)\n", a); return 2; }
#undef VAL
#undef INT
#undef DBL
    }
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
    int rc = eng_train_run(&p, &r, err, sizeof err);
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
