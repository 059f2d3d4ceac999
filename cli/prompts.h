/* prompts.h — prompt sets for the measuring subcommands (`ppd bench`,
 * `ppd tree tune`, `ppd calibrate --validate`): JSON lines with "turns" (the format of
 * ../shared/data), the first turn rendered with the model's chat template.
 *
 * Not here: generation, timing.
 */
#ifndef PPD_CLI_PROMPTS_H
#define PPD_CLI_PROMPTS_H

#include <stdint.h>

#include "engine/engine.h"

struct cli_prompt {
    int32_t *ids;
    int n;
    int line;          /* its line in the file, from 1 (for messages) */
};

/* Up to count prompts after skipping `skip` lines (blank lines are passed
 * over, not counted as prompts); prompts that would not fit
 * the context with n_predict new tokens (and 128 entries of tree room) are
 * left out.  Messages go to stderr prefixed by `who`.  0, or 1 when the file
 * cannot be read, a line is malformed, or no prompt is usable. */
int cli_prompts_load(const struct eng_engine *e, const char *who, const char *file, long skip, long count,
                     long n_predict, struct cli_prompt **out, int *n_out);
void cli_prompts_free(struct cli_prompt *p, int n);   /* accepts NULL */

#endif
