/* ppd_open.c — PPD for `ppd generate` and `ppd bench` (see ppd_open.h). */
#include "ppd_open.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/calib/calib_setup.h"
#include "engine/err.h"

static int open_or_say(struct eng_ppd_setup *s, const struct eng_ppd_setup_opts *o, struct eng_engine *e,
                       const char *who) {
    char err[1024];
    if (!eng_ppd_setup_open(s, o, e, err, sizeof err)) return 0;
    fprintf(stderr, "%s: %s\n", who, err);
    return 1;
}

int cli_ppd_open(struct eng_ppd_setup *s, struct eng_ppd_setup_opts *o, struct eng_engine *e, int n_threads,
                 bool keep_tree, const char *who) {
    if (open_or_say(s, o, e, "ppd")) return 1;
    const char *env = getenv("PPD_CALIBRATE");
    if (s->src != ENG_PPD_FILE || o->adapter || o->tree_file || o->tree_budget > 0 || (env && !strcmp(env, "off")))
        return 0;
    int L = -1;
    double gain = 0;
    bool cached = false;
    char path[4096] = "";
    int rc = eng_calib_setup_budget_one(e, s, o->model_path, n_threads, &L, &gain, &cached, path, sizeof path);
    if (rc) {
        fprintf(stderr, "%s: calibrating this device failed: %s\n", who, eng_err_msg(rc));
        return 1;
    }
    char from[4200];
    snprintf(from, sizeof from, "%s %s", cached ? "cached in" : "measured now,", path[0] ? path : "not cached");
    if (L == 0) {
        if (keep_tree) {
            fprintf(stderr, "%s: calibration (%s) predicts no tree faster than plain decoding on this device; "
                    "measuring the adapter's tree (L=%d) all the same\n", who, from, s->tree_budget);
            return 0;
        }
        fprintf(stderr, "%s: PPD off: calibration (%s) predicts no tree faster than plain decoding on this device; "
                "--ppd %s turns it on\n", who, from, s->path);
        eng_ppd_setup_close(s);
        return 0;
    }
    fprintf(stderr, "%s: calibration (%s) chose the tree of L=%d: %.2fx plain decoding predicted\n", who, from, L,
            gain);
    if (L == s->tree_budget) return 0;
    o->tree_budget = L;
    char err[1024];
    if (!eng_ppd_setup_rebuild(s, L, err, sizeof err)) return 0;
    fprintf(stderr, "ppd: %s\n", err);
    return 1;
}
