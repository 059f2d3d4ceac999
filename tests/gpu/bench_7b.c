/* bench_7b.c — the CUDA backend's step latency on a Llama-2-7B-shaped model
 * (32 layers, 4096 wide, 11008 FFN, 32000 vocabulary) with random f16
 * weights, built in memory (13.5 GB on the device, no file).  Prints markdown:
 * the measured device-to-device copy bandwidth (bytes read + written), then
 * per row count the median step time of one forward pass whose rows all see a
 * committed prefix (the shape of a PPD tree step; logits of every row come back
 * to the host, as PPD needs them), the same with only one row's logits, and the
 * weight bytes over the step time.  Last, the two targets of the CUDA step:
 * the 1-row step against weight bytes / copy bandwidth (<= 1.3) and the 64-row
 * step against the 1-row step (<= 1.3).  Then calibration on the GPU: the
 * calibration sweep (calibrate.c, the same code `ppd serve` runs) on this
 * model for 1..8 sequences, and the budget L it chooses from the paper's
 * Vicuna-7B accuracy table, to set beside the paper's 105 (A100).  Exit 0
 * when both targets hold, 1 when not, 77 without a GPU, 2 on an
 * error.
 *   bench_7b [--rows 1,2,4,...] [--prefix 256] [--repeat 20]
 *            [--no-calib] [--no-profile] [--smollm2: the default model's shape instead]
 *            [--cpu --layers N]   (--cpu: a dry run on the CPU backend)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/backend.h"
#include "engine/model/batch.h"
#include "engine/calib/calibrate.h"
#include "engine/err.h"
#include "engine/model/forward.h"
#include "engine/decode/generate.h"
#include "engine/model/kv_cache.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/calib/stats.h"
#include "common/qtypes.h"
#include "tests/gpu/random_model.h"


/* Device-to-device copy of `bytes`, median of `repeat`: bytes read + written per second. */
static double copy_bandwidth(struct eng_backend *be, size_t bytes, int repeat) {
    void *a = be->iface->buf_alloc(be->ctx, bytes), *b = be->iface->buf_alloc(be->ctx, bytes);
    if (!a || !b) return 0;
    double t[64];
    if (repeat > 64) repeat = 64;
    be->iface->buf_copy(be->ctx, b, a, bytes);
    be->iface->sync(be->ctx);
    for (int i = 0; i < repeat; i++) {
        double t0 = eng_now_s();
        be->iface->buf_copy(be->ctx, i % 2 ? a : b, i % 2 ? b : a, bytes);
        be->iface->sync(be->ctx);
        t[i] = eng_now_s() - t0;
    }
    be->iface->buf_free(be->ctx, a);
    be->iface->buf_free(be->ctx, b);
    return 2.0 * (double)bytes / eng_median(t, repeat);
}

/* Median step time of `rows` rows after `prefix` committed entries; all_logits:
 * every row's logits come back, else the last row's only. */
static double step_time(struct eng_forward *f, struct eng_kv *kv, struct eng_batch *b, const int32_t *ids, int prefix,
                        int rows, int all_logits, int repeat) {
    double t[256];
    if (repeat > 256) repeat = 256;
    eng_batch_clear(b);
    eng_batch_add_causal(b, 0, prefix, ids, rows, false);
    for (int r = 0; r < rows; r++) b->want_logits[r] = all_logits || r == rows - 1;
    for (int i = 0; i < 3; i++)
        if (eng_forward_run(f, b, kv, NULL, 0)) return -1;
    for (int i = 0; i < repeat; i++) {
        double t0 = eng_now_s();
        if (eng_forward_run(f, b, kv, NULL, 0)) return -1;
        t[i] = eng_now_s() - t0;
    }
    return eng_median(t, repeat);
}

enum { N_SLOT = 8, L_MAX = 256 };

/* Each op of one layer on its own, `rows` rows after the prefix, timed over
 * 50 back-to-back launches (one sync at the end): where a step's time goes,
 * against the whole step (the difference is launch gaps and host work). */
static void op_profile(struct eng_forward *f, struct eng_kv *kv, struct eng_batch *b, const int32_t *ids, int prefix,
                       int rows, double step_s) {
    const struct eng_model *m = f->m;
    const struct eng_hparams *hp = &m->hp;
    const struct kq_rope rope = eng_hparams_rope(hp);
    const struct eng_backend_i *be = f->be->iface;
    void *ctx = f->be->ctx;
    const struct eng_layer *L = &m->layers[0];
    const int E = hp->n_embd, n = rows, R = 50;
    eng_batch_clear(b);
    eng_batch_add_causal(b, 0, prefix, ids, rows, false);
    const struct eng_weight *qkv[3] = {&L->wq, &L->wk, &L->wv}, *wo[1] = {&L->wo}, *gu[2] = {&L->w_gate, &L->w_up},
                            *dn[1] = {&L->w_down}, *out[1] = {&m->output};
    float *qkv_o[3] = {f->q, f->k, f->v}, *p_o[1] = {f->proj}, *gu_o[2] = {f->gate, f->up}, *lg_o[1] = {f->logits_dev};
    const char *names[] = {"rmsnorm", "matmul q,k,v", "rope + KV store", "attention", "matmul o", "add",
                           "matmul gate,up", "swiglu", "matmul down", "matmul output (once per step)"};
    double us[10];
    for (int op = 0; op < 10; op++) {
        for (int pass = 0; pass < 2; pass++) {   /* pass 0 warms up */
            be->sync(ctx);
            double t0 = eng_now_s();
            for (int i = 0; i < R; i++) {
                switch (op) {
                case 0: be->rmsnorm(ctx, f->x, L->attn_norm, n, E, hp->rms_eps, f->xn); break;
                case 1: be->matmul(ctx, qkv, qkv_o, 3, f->xn, n); break;
                case 2: be->rope_kv_store(ctx, f->q, f->k, f->v, b, kv, 0, hp->n_head, hp->n_head_kv, hp->head_dim,
                                          &rope); break;
                case 3: be->attention(ctx, f->q, b, kv, 0, hp->n_head, hp->n_head_kv, hp->head_dim,
                                      1.0f / sqrtf((float)hp->head_dim), hp->n_swa, f->attn); break;
                case 4: be->matmul(ctx, wo, p_o, 1, f->attn, n); break;
                case 5: be->add(ctx, f->x, f->proj, n, E); break;
                case 6: be->matmul(ctx, gu, gu_o, 2, f->xn, n); break;
                case 7: be->swiglu(ctx, f->gate, f->up, n, hp->n_ff, f->gate); break;
                case 8: be->matmul(ctx, dn, p_o, 1, f->gate, n); break;
                case 9: be->matmul(ctx, out, lg_o, 1, f->xn, n); break;
                }
            }
            be->sync(ctx);
            us[op] = (eng_now_s() - t0) / R * 1e6;
        }
    }
    double layer = 0;
    for (int op = 0; op < 9; op++) layer += us[op];
    printf("\nOne layer's ops alone, %d row(s), prefix %d (mean of %d back-to-back launches, us):\n\n| op | us | x %d layers, ms |\n|---|---|---|\n",
           rows, prefix, R, hp->n_layer);
    for (int op = 0; op < 10; op++)
        printf("| %s | %.1f | %.3f |\n", names[op], us[op], us[op] * (op < 9 ? hp->n_layer : 1) / 1e3);
    printf("| **sum** (layers + output) | | %.3f |\n| **measured step** | | %.3f |\n", (layer * hp->n_layer + us[9]) / 1e3,
           step_s * 1e3);
}


/* Calibrate as `ppd serve` would, with the paper's Vicuna-7B accuracies. */
static void calibrate_7b(struct eng_forward *f, struct eng_kv *kv, int prefix) {
    struct eng_calib_table t;
    struct eng_calib_choice c;
    int rc = eng_calib_measure(&t, f, kv, N_SLOT, prefix, 0, NULL, NULL);
    if (!rc) rc = eng_calib_choose(&c, &t, eng_ppd_acc_vicuna7b, NULL, 3, 10, N_SLOT, L_MAX);
    if (rc) { printf("\n- calibration failed: %s\n", eng_err_msg(rc)); return; }
    printf("\nCalibration (calibrate.c, prefix %d, measured in %.1f s), Vicuna-7B accuracy table, L <= %d:\n\n",
           t.prefix, t.seconds, L_MAX);
    printf("| sequences | chosen L | rows/step | predicted tokens/step | predicted step ms | predicted tokens/s | plain tokens/s |\n"
           "|---|---|---|---|---|---|---|\n");
    for (int b = 1; b <= N_SLOT; b *= 2) {
        const struct eng_calib_pick *p = &c.by_batch[b];
        printf("| %d | %d | %.1f | %.3f | %.3f | %.0f | %.0f |\n", b, p->L, p->rows, p->tokens_per_step, p->step_ms,
               p->tokens_per_s, c.plain_tokens_per_s[b]);
    }
    printf("\n(the paper: L = 105 for Vicuna-7B on an A100)\n");
}

int main(int argc, char **argv) {
    const char *rows_list = "1,2,4,8,16,32,48,64,96,128,192,256,384,512";
    int prefix = 256, repeat = 20, on_cpu = 0, layers = 0, calib = 1, profile = 1, smollm2 = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows_list = argv[++i];
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc) prefix = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cpu")) on_cpu = 1;
        else if (!strcmp(argv[i], "--no-calib")) calib = 0;
        else if (!strcmp(argv[i], "--no-profile")) profile = 0;
        else if (!strcmp(argv[i], "--smollm2")) smollm2 = 1;
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else { fprintf(stderr, "usage: bench_7b [--rows LIST] [--prefix N] [--repeat N]\n"); return 2; }
    }
    if (prefix < 0 || prefix > 4096 || repeat < 1) { fprintf(stderr, "bench_7b: bad --prefix or --repeat\n"); return 2; }
    struct eng_backend gpu;
    char err[256] = "";
    if (on_cpu ? eng_backend_cpu_init(&gpu, 2) : eng_backend_cuda_init(&gpu, 0, err, sizeof err)) {
        printf("no usable CUDA GPU: %s\n", err);
        return 77;
    }

    const double bw = copy_bandwidth(&gpu, on_cpu ? (size_t)1 << 28 : (size_t)2 << 30, 20);
    printf("- device-to-device copy: %.0f GB/s (bytes read + written)\n", bw / 1e9);

    struct eng_hparams hp = smollm2 ? rm_shape_smollm2_135m() : rm_shape_llama2_7b();
    if (layers > 0 && layers < hp.n_layer) hp.n_layer = layers;
    struct rm_model rm;
    double t0 = eng_now_s();
    int rc = rm_build(&rm, &gpu, &hp, KQ_F16, 0, 7, 0);
    if (rc) { fprintf(stderr, "bench_7b: building the model: %s\n", eng_err_msg(rc)); return 2; }
    const int max_rows = 512;
    struct eng_forward f;
    struct eng_kv kv;
    struct eng_batch b;
    if ((rc = eng_forward_init(&f, rm.m, max_rows)) ||
        (rc = eng_kv_init(&kv, &gpu, hp.n_layer, N_SLOT, prefix + max_rows + 8, hp.n_head_kv * hp.head_dim)) ||
        (rc = eng_batch_init(&b, max_rows, max_rows))) {
        fprintf(stderr, "bench_7b: %s\n", eng_err_msg(rc));
        return 2;
    }
    const double floor_s = (double)rm.gpu_f16_bytes / bw;
    printf("- model: %s shape (%d layers), random f16 weights, %.2f GB of matrices per 1-row pass, built in %.1f s\n",
           smollm2 ? "SmolLM2-135M" : "Llama-2-7B", hp.n_layer, (double)rm.gpu_f16_bytes / 1e9, eng_now_s() - t0);
    printf("- floor at 1 row: weight bytes / copy bandwidth = %.3f ms\n", floor_s * 1e3);

    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(prefix > max_rows ? prefix : max_rows));
    if (!ids) return 2;
    for (int i = 0; i < (prefix > max_rows ? prefix : max_rows); i++) ids[i] = (int32_t)(1000 + (i * 7919) % 30000);
    kv.len[0] = 0;
    for (int i = 0; i < prefix; i += max_rows) {
        const int n = prefix - i < max_rows ? prefix - i : max_rows;
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, 0, i, ids + i, n, false);
        if ((rc = eng_forward_run(&f, &b, &kv, NULL, 0))) { fprintf(stderr, "bench_7b: prefill: %s\n", eng_err_msg(rc)); return 2; }
    }
    kv.len[0] = prefix;

    printf("\n| rows | step ms (all rows' logits) | x 1-row | step ms (1 row's logits) | weight GB/s |\n|---|---|---|---|---|\n");
    double t1 = 0, t64 = 0, t1_only = 0, t64_only = 0;
    for (const char *p = rows_list; *p;) {
        char *end;
        long rows = strtol(p, &end, 10);
        if (end == p || rows < 1 || rows > max_rows) { fprintf(stderr, "bench_7b: bad --rows at '%s'\n", p); return 2; }
        p = *end == ',' ? end + 1 : end;
        double ta = step_time(&f, &kv, &b, ids, prefix, (int)rows, 1, repeat);
        double to = step_time(&f, &kv, &b, ids, prefix, (int)rows, 0, repeat);
        if (ta < 0 || to < 0) { fprintf(stderr, "bench_7b: a forward pass failed\n"); return 2; }
        if (rows == 1) t1 = ta, t1_only = to;
        if (rows == 64) t64 = ta, t64_only = to;
        printf("| %ld | %.3f | %.2f | %.3f | %.0f |\n", rows, ta * 1e3, t1 > 0 ? ta / t1 : 0, to * 1e3,
               (double)rm.gpu_f16_bytes / ta / 1e9);
        fflush(stdout);
    }
    int ok = 1;
    if (t1 > 0) {
        const double r = t1 / floor_s;
        printf("\n- 1-row step / floor: %.2f (target <= 1.3: %s)\n", r, r <= 1.3 ? "ok" : "NOT MET");
        ok &= r <= 1.3;
    }
    if (t1 > 0 && t64 > 0) {
        const double r = t64 / t1;
        printf("- 64-row step / 1-row step: %.2f (target <= 1.3: %s)\n", r, r <= 1.3 ? "ok" : "NOT MET");
        ok &= r <= 1.3;
    }
    if (profile && t1 > 0) op_profile(&f, &kv, &b, ids, prefix, 1, t1_only);
    if (profile && t64 > 0) op_profile(&f, &kv, &b, ids, prefix, 64, t64_only);
    if (calib) calibrate_7b(&f, &kv, prefix);
    free(ids);
    eng_batch_free(&b);
    eng_kv_free(&kv);
    eng_forward_free(&f);
    rm_free(&rm);
    eng_backend_free(&gpu);
    return ok ? 0 : 1;
}
