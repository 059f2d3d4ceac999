/* log.c — the sink behind log.h; default sink writes one line to stderr. */
#include "engine/log.h"

#include <stdarg.h>
#include <stdio.h>

enum eng_log_level eng_log_min_level = ENG_LOG_INFO;

static void log_default_sink(enum eng_log_level level, const char *msg, void *user) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    (void)user;
    fprintf(stderr, "ppd %s: %s\n", names[level < ENG_LOG_NONE ? level : ENG_LOG_ERROR], msg);
}

static eng_log_sink_fn log_sink = log_default_sink;
static void *log_sink_user;

void eng_log_set_sink(eng_log_sink_fn sink, void *user) {
    log_sink = sink ? sink : log_default_sink;
    log_sink_user = user;
}

void eng_log_set_level(enum eng_log_level level) { eng_log_min_level = level; }

void eng_log_write(enum eng_log_level level, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_sink(level, buf, log_sink_user);
}
