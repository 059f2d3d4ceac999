/* log.h — one level-checked logging macro for the engine.
 *
 * The engine never writes to a stream itself: it calls a sink that the front
 * end installs (the CLI writes to stderr, the server adds timestamps).  The
 * level check happens before the arguments are formatted, so debug logging in
 * a hot path costs one comparison when disabled.
 */
#ifndef PPD_LOG_H
#define PPD_LOG_H

enum eng_log_level { ENG_LOG_DEBUG = 0, ENG_LOG_INFO, ENG_LOG_WARN, ENG_LOG_ERROR, ENG_LOG_NONE };

typedef void (*eng_log_sink_fn)(enum eng_log_level level, const char *msg, void *user);

extern enum eng_log_level eng_log_min_level;

/* Install a sink (NULL restores the default: stderr). */
void eng_log_set_sink(eng_log_sink_fn sink, void *user);
void eng_log_set_level(enum eng_log_level level);
void eng_log_write(enum eng_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define ENG_LOG(level, ...) \
    do { if ((level) >= eng_log_min_level) eng_log_write((level), __VA_ARGS__); } while (0)
#define LOG_DEBUG(...) ENG_LOG(ENG_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...)  ENG_LOG(ENG_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...)  ENG_LOG(ENG_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) ENG_LOG(ENG_LOG_ERROR, __VA_ARGS__)

#endif
