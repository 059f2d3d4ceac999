/* err.c — names, messages and HTTP statuses for the codes of err.h. */
#include "engine/err.h"

#include <stdarg.h>
#include <stdio.h>

struct err_row { int code; const char *name, *msg; int http; };

static const struct err_row err_rows[] = {
    {ENG_OK, "ENG_OK", "ok", 200},
#define ENG_ERR_ROW_(name, msg, http) {ENG_E_##name, "ENG_E_" #name, msg, http},
    ENG_ERR_LIST(ENG_ERR_ROW_)
#undef ENG_ERR_ROW_
};

static const struct err_row *err_find(int code) {
    for (unsigned i = 0; i < sizeof err_rows / sizeof err_rows[0]; i++)
        if (err_rows[i].code == code) return &err_rows[i];
    return 0;
}

const char *eng_err_name(int code) { const struct err_row *r = err_find(code); return r ? r->name : "ENG_E_UNKNOWN"; }
const char *eng_err_msg(int code)  { const struct err_row *r = err_find(code); return r ? r->msg : "unknown error"; }
int eng_err_http_status(int code)  { const struct err_row *r = err_find(code); return r ? r->http : 500; }

int eng_err_set(char *err, size_t cap, int code, const char *fmt, ...) {
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return code;
}
