/* settings.c — the shared settings of settings.h. */
#include "settings.h"

#include <limits.h>

#include "engine/ppd/ppd_setup.h"

#define STR_(x) #x
#define STR(x) STR_(x)

const struct flag_spec setting_model = {
    .name = "model", .short_flag = "-m", .kind = FLAG_STR, .def = PPD_DEFAULT_MODEL, .meta = "FILE",
    .help = "GGUF model file"};
const struct flag_spec setting_threads = {
    .name = "threads", .short_flag = "-t", .kind = FLAG_INT, .min = 1, .max = 1024, .def_fn = flag_default_threads,
    .help = "CPU threads (default: PPD_THREADS, else the CPUs this process may use, at most 8)"};
const struct flag_spec setting_device = {
    .name = "device", .kind = FLAG_STR, .choices = "auto|cpu|cuda", .def = "auto", .meta = "D",
    .help = "auto, cpu or cuda (auto: CUDA when a GPU is usable, else the CPU)"};
const struct flag_spec setting_ctx_size = {
    .name = "ctx-size", .short_flag = "-c", .kind = FLAG_INT, .min = 16, .max = 1 << 20, .def = "4096",
    .help = "KV entries per sequence (prompt + generated tokens)"};
const struct flag_spec setting_batch_size = {
    .name = "batch-size", .short_flag = "-b", .kind = FLAG_INT, .min = 1, .max = 4096, .def = "256",
    .help = "rows per forward step (the auto tree's budget is lowered until every sequence's tree fits)"};
const struct flag_spec setting_chat_template = {
    .name = "chat-template", .kind = FLAG_STR, .meta = "NAME",
    .help = "chatml, vicuna, llama2, llama3, zephyr (default: from the model)"};
const struct flag_spec setting_verbose = {
    .name = "verbose", .short_flag = "-v", .kind = FLAG_BOOL, .def = "0", .help = "debug logging"};

const struct flag_spec setting_ppd = {
    .name = "ppd", .kind = FLAG_STR, .def = "auto", .meta = "FILE",
    .help = "PPD adapter FILE; auto: MODEL.ppd.gguf next to the model when it exists; none: plain decoding"};
const struct flag_spec setting_no_ppd = {
    .name = "no-ppd", .kind = FLAG_BOOL, .def = "0", .help = "plain decoding (the same as --ppd none)"};
const struct flag_spec setting_tree = {
    .name = "tree", .kind = FLAG_STR, .def = "auto", .meta = "FILE",
    .help = "PPD tree family: auto (built from the adapter's accuracy table) or a JSON file"};
const struct flag_spec setting_tree_budget = {
    .name = "tree-budget", .old_name = "tree-size", .kind = FLAG_INT, .min = 0, .max = 4096, .def = "0", .meta = "L",
    .help = "budget L of the auto tree; 0: the one this device's calibration chooses (cached), else the adapter's "
            "tuned one (ppd tree tune), else " STR(ENG_PPD_TREE_BUDGET_DEFAULT)};

const struct flag_spec setting_temp = {
    .name = "temp", .kind = FLAG_FLOAT, .fmin = 0, .fmax = 100, .def = "0", .meta = "T",
    .help = "sampling temperature (0: greedy)"};
const struct flag_spec setting_top_k = {
    .name = "top-k", .kind = FLAG_INT, .min = 0, .max = 1 << 24, .def = "0", .meta = "K",
    .help = "sample from the K most likely tokens (0: all)"};
const struct flag_spec setting_top_p = {
    .name = "top-p", .kind = FLAG_FLOAT, .fmin = 0, .fmax = 1, .def = "1", .meta = "P",
    .help = "sample from the most likely tokens holding probability P (1: all)"};
const struct flag_spec setting_min_p = {
    .name = "min-p", .kind = FLAG_FLOAT, .fmin = 0, .fmax = 1, .def = "0", .meta = "P",
    .help = "drop tokens less likely than P times the most likely one (0: none)"};
const struct flag_spec setting_seed = {
    .name = "seed", .kind = FLAG_INT, .min = 0, .max = LONG_MAX, .def = "0", .meta = "S", .help = "sampling seed"};
const struct flag_spec setting_ignore_eos = {
    .name = "ignore-eos", .kind = FLAG_BOOL, .def = "0", .help = "keep generating past end-of-turn tokens"};
