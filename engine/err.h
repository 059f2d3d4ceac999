/* err.h — the one table of error codes used by engine/ and server/.
 *
 * Fallible functions return 0 on success or a negative ENG_E_* code.  Each code
 * has a name, a human message and the HTTP status the server maps it to, all
 * from one X-macro list so they can never drift apart.  Detailed context (file
 * name, field name) goes into the caller-provided message buffer, not here.
 */
#ifndef PPD_ERR_H
#define PPD_ERR_H

#include <stddef.h>

/*        name           message                                 http */
#define ENG_ERR_LIST(X)                                                      \
    X(NOMEM,      "out of memory",                               500)        \
    X(IO,         "input/output error",                          500)        \
    X(FORMAT,     "malformed file",                              400)        \
    X(UNSUPPORTED,"unsupported feature",                         400)        \
    X(INVALID,    "invalid argument",                            400)        \
    X(RANGE,      "value out of range",                          400)        \
    X(NOT_FOUND,  "not found",                                   404)        \
    X(TOO_LONG,   "input too long",                              400)        \
    X(FULL,       "queue full",                                  429)        \
    X(BUSY,       "not ready",                                   503)        \
    X(CANCELLED,  "cancelled",                                   499)        \
    X(INTERNAL,   "internal error",                              500)        \
    X(UNAUTHORIZED,"missing or wrong API key",                   401)        \
    X(TOO_LARGE,  "request body too large",                      413)

enum eng_err {
    ENG_OK = 0,
#define ENG_ERR_ENUM_(name, msg, http) ENG_E_##name,
    ENG_E_FIRST_ = -1000,
    ENG_ERR_LIST(ENG_ERR_ENUM_)
#undef ENG_ERR_ENUM_
};

/* Name ("ENG_E_FORMAT"), message and HTTP status of a code; unknown codes
 * give "ENG_E_UNKNOWN", "unknown error", 500. */
const char *eng_err_name(int code);
const char *eng_err_msg(int code);
int eng_err_http_status(int code);

/* Format a message into err (when err and cap are non-zero) and return code:
 * `return eng_err_set(err, cap, ENG_E_FORMAT, "%s: ...", path);` */
int eng_err_set(char *err, size_t cap, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
