/* settings.h — the settings that `ppd serve` and the command-line programs
 * share, each described once: one name, short flag, range, default and help
 * text, so `ppd serve --help`, `ppd generate --help`, `ppd bench --help`,
 * config/ppd.conf and the PPD_* variables cannot tell different stories.
 * A program lists the ones it takes in its flag table (flags.h):
 *   {&setting_model, offsetof(struct my_opts, model)}
 * Not here: settings only one program has; those stay in its own table. */
#ifndef PPD_SERVER_SETTINGS_H
#define PPD_SERVER_SETTINGS_H

#include "flags.h"

/* the model and where it runs */
extern const struct flag_spec setting_model, setting_threads, setting_device, setting_ctx_size, setting_batch_size,
    setting_chat_template, setting_verbose;
/* PPD: the adapter and the tree */
extern const struct flag_spec setting_ppd, setting_no_ppd, setting_tree, setting_tree_budget;
/* decoding one prompt (generate, bench) */
extern const struct flag_spec setting_temp, setting_top_k, setting_top_p, setting_min_p, setting_seed,
    setting_ignore_eos;

#endif
