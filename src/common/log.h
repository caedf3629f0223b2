/*  log.h: one line per event, "component: event key=value ...", to stderr.

    The level is checked before anything is formatted, so debug lines cost
    nothing when off.  Under systemd stderr goes to the journal; with
    FERRY_LOG_JSON set (or ferry_log_init json=true) each line is a JSON
    object instead, for log shippers.  */

#ifndef FERRY_LOG_H_INCLUDED
#define FERRY_LOG_H_INCLUDED

#include <stdbool.h>

typedef enum {
    FERRY_LOG_ERROR = 0,
    FERRY_LOG_WARN = 1,
    FERRY_LOG_INFO = 2,
    FERRY_LOG_DEBUG = 3
} ferry_log_level_t;

extern int ferry_log_level;

/*  component is copied; level is one of FERRY_LOG_*.  */
void ferry_log_init (const char *component, int level, bool json);
/*  Parses "error", "warn", "info" or "debug"; returns -1 otherwise.  */
int ferry_log_level_parse (const char *name);
void ferry_log_write (int level, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));

#define ferry_log(level, ...)                                                 \
    do {                                                                      \
        if ((level) <= ferry_log_level)                                       \
            ferry_log_write ((level), __VA_ARGS__);                           \
    } while (0)
#define log_error(...) ferry_log (FERRY_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) ferry_log (FERRY_LOG_WARN, __VA_ARGS__)
#define log_info(...) ferry_log (FERRY_LOG_INFO, __VA_ARGS__)
#define log_debug(...) ferry_log (FERRY_LOG_DEBUG, __VA_ARGS__)

#endif
