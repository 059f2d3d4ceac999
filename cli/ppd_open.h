/* ppd_open.h — PPD for `ppd generate` and `ppd bench`: opened by the engine
 * (engine/ppd/ppd_setup.h) from their flags and, when the adapter was found next
 * to the model and no tree or budget was named, with the budget this device's
 * calibration chooses for one sequence (engine/calib/calib_setup.h).  Here only
 * the choice of what to ask and the lines that say what happened. */
#ifndef PPD_CLI_PPD_OPEN_H
#define PPD_CLI_PPD_OPEN_H

#include <stdbool.h>

#include "engine/engine.h"
#include "engine/ppd/ppd_setup.h"

/* Plain decoding chosen by the calibration: with keep_tree (bench, which
 * compares the two) the adapter's own tree stays, else PPD is turned off
 * (s->src == ENG_PPD_OFF) with a line saying why.  PPD_CALIBRATE=off skips
 * the measurement and keeps the adapter's tree.  who prefixes the messages.
 * 0, or 1 after printing why; s must then still be closed. */
int cli_ppd_open(struct eng_ppd_setup *s, struct eng_ppd_setup_opts *o, struct eng_engine *e, int n_threads,
                 bool keep_tree, const char *who);

#endif
