/*  log.c: line-oriented logging to stderr.

    Shared by every thread of a process: each line is formatted into a local
    buffer and written with one write(2), so lines from different actors do
    not interleave.  */

#include "log.h"
#include "ferry.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int ferry_log_level = FERRY_LOG_INFO;
static char s_component[64] = "ferry";
static bool s_json;

static const char *s_level_names[] = {"error", "warn", "info", "debug"};

void
ferry_log_init (const char *component, int level, bool json)
{
    snprintf (s_component, sizeof s_component, "%s", component);
    if (level >= FERRY_LOG_ERROR && level <= FERRY_LOG_DEBUG)
        ferry_log_level = level;
    const char *env = getenv ("FERRY_LOG_JSON");
    s_json = json || (env && *env && strcmp (env, "0") != 0);
}

int
ferry_log_level_parse (const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp (name, s_level_names[i]) == 0)
            return i;
    return -1;
}

/*  Appends s to buf as JSON string content (quotes and controls escaped). */
static size_t
s_json_escape (char *buf, size_t at, size_t cap, const char *s)
{
    for (; *s && at + 7 < cap; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') {
            buf[at++] = '\\';
            buf[at++] = (char) c;
        }
        else if (c < 0x20)
            at += (size_t) snprintf (buf + at, cap - at, "\\u%04x", c);
        else
            buf[at++] = (char) c;
    }
    return at;
}

void
ferry_log_write (int level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (msg, sizeof msg, fmt, ap);
    va_end (ap);
    if (level < 0 || level > FERRY_LOG_DEBUG)
        level = FERRY_LOG_ERROR;

    char line[4600];
    size_t n;
    if (s_json) {
        struct timespec ts;
        clock_gettime (CLOCK_REALTIME, &ts);
        n = (size_t) snprintf (line, sizeof line,
                               "{\"ts\":%lld.%03ld,\"level\":\"%s\","
                               "\"component\":\"",
                               (long long) ts.tv_sec, ts.tv_nsec / 1000000,
                               s_level_names[level]);
        n = s_json_escape (line, n, sizeof line, s_component);
        n += (size_t) snprintf (line + n, sizeof line - n, "\",\"msg\":\"");
        n = s_json_escape (line, n, sizeof line, msg);
        n += (size_t) snprintf (line + n, sizeof line - n, "\"}\n");
    }
    else
        n = (size_t) snprintf (line, sizeof line, "%s: %s %s\n", s_component,
                               s_level_names[level], msg);
    if (n >= sizeof line)
        n = sizeof line - 1;
    ssize_t rc = write (STDERR_FILENO, line, n);
    (void) rc; /* nowhere to report a failed log write */
}
