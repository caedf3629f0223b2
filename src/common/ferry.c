/*  ferry.c: the checked allocator, clocks, identifiers and strict number
    parsing that every ferry module uses.

    Thread-safe: the only state is each thread's own buffer of random bytes
    (see s_random).  */

#include "ferry.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
s_oom (size_t size)
{
    fprintf (stderr, "ferry: out of memory allocating %zu bytes\n", size);
    abort ();
}

void *
ferry_malloc (size_t size)
{
    void *p = malloc (size ? size : 1);
    if (!p)
        s_oom (size);
    return p;
}

void *
ferry_calloc (size_t count, size_t size)
{
    void *p = calloc (count ? count : 1, size ? size : 1);
    if (!p)
        s_oom (count * size);
    return p;
}

void *
ferry_realloc (void *ptr, size_t size)
{
    void *p = realloc (ptr, size ? size : 1);
    if (!p)
        s_oom (size);
    return p;
}

char *
ferry_strdup (const char *s)
{
    return ferry_strndup (s, strlen (s));
}

char *
ferry_strndup (const char *s, size_t n)
{
    char *p = ferry_malloc (n + 1);
    memcpy (p, s, n);
    p[n] = '\0';
    return p;
}

uint64_t
ferry_wall_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

int64_t
ferry_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*  Reads len bytes from the kernel's random source; aborts when it fails.  */
static void
s_getrandom (uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = getrandom (p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /*  Without the kernel's random source ids could repeat; that is
                not a state to run in.  */
            fprintf (stderr, "ferry: getrandom failed\n");
            abort ();
        }
        p += n;
        len -= (size_t) n;
    }
}

/*  Ids are drawn on every request (request id, msg_id, trace and span), and
    one getrandom call each cost more than the rest of id work together.
    So each thread keeps a block of the kernel's random bytes and hands them
    out once each: the bytes are exactly as unguessable as before (job ids
    derive from them), there are just fewer system calls.  A used byte is
    wiped so that a later memory disclosure cannot reveal past ids.  A
    forked child would share its parent's unused bytes, hence the atfork
    handler: in the child only the forking thread lives on, and its block
    is emptied.  */
#define S_RANDOM_BLOCK 4096
static _Thread_local uint8_t s_random_block[S_RANDOM_BLOCK];
static _Thread_local size_t s_random_left;
static pthread_once_t s_random_once = PTHREAD_ONCE_INIT;

static void
s_random_forget (void)
{
    s_random_left = 0;
}

static void
s_random_setup (void)
{
    if (pthread_atfork (NULL, NULL, s_random_forget) != 0) {
        fprintf (stderr, "ferry: pthread_atfork failed\n");
        abort ();
    }
}

static void
s_random (void *buf, size_t len)
{
    uint8_t *out = buf;
    pthread_once (&s_random_once, s_random_setup);
    while (len > 0) {
        if (s_random_left == 0) {
            s_getrandom (s_random_block, S_RANDOM_BLOCK);
            s_random_left = S_RANDOM_BLOCK;
        }
        size_t n = len < s_random_left ? len : s_random_left;
        uint8_t *from = s_random_block + S_RANDOM_BLOCK - s_random_left;
        memcpy (out, from, n);
        memset (from, 0, n);
        s_random_left -= n;
        out += n;
        len -= n;
    }
}

static void
s_hex (const uint8_t *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}

void
ferry_id_generate (char out[FERRY_ID_LEN + 1])
{
    uint8_t bytes[FERRY_ID_LEN / 2];
    s_random (bytes, sizeof bytes);
    s_hex (bytes, sizeof bytes, out);
}

bool
ferry_request_id_valid (const char *s)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++)
        if ((unsigned char) s[n] < 0x21 || (unsigned char) s[n] > 0x7e
            || n >= 128)
            return false;
    return n > 0;
}

static bool
s_lower_hex (const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool
s_all_zero (const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

bool
ferry_traceparent_valid (const char *s)
{
    /*  Version 00 is exactly 55 characters; W3C says an unknown higher
        version may be longer, but ferry only continues what it understands. */
    if (!s || strlen (s) != FERRY_TRACEPARENT_LEN)
        return false;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!s_lower_hex (s, 2) || !s_lower_hex (s + 3, 32)
        || !s_lower_hex (s + 36, 16) || !s_lower_hex (s + 53, 2))
        return false;
    if (strncmp (s, "ff", 2) == 0 || strncmp (s, "00", 2) != 0)
        return false;
    return !s_all_zero (s + 3, 32) && !s_all_zero (s + 36, 16);
}

bool
ferry_traceparent_continue (const char *incoming,
                            char out[FERRY_TRACEPARENT_LEN + 1])
{
    uint8_t span[8];
    char span_hex[17];
    do
        s_random (span, sizeof span);
    while (!(span[0] | span[1] | span[2] | span[3] | span[4] | span[5]
             | span[6] | span[7]));
    s_hex (span, sizeof span, span_hex);

    if (ferry_traceparent_valid (incoming)) {
        snprintf (out, FERRY_TRACEPARENT_LEN + 1, "00-%.32s-%s-%.2s",
                  incoming + 3, span_hex, incoming + 53);
        return true;
    }
    uint8_t trace[16];
    char trace_hex[33];
    s_random (trace, sizeof trace);
    trace[0] |= 1; /* never all zero */
    s_hex (trace, sizeof trace, trace_hex);
    snprintf (out, FERRY_TRACEPARENT_LEN + 1, "00-%s-%s-01", trace_hex,
              span_hex);
    return false;
}

int
ferry_parse_int64 (const char *s, int64_t *out)
{
    if (!s || !*s || isspace ((unsigned char) *s))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll (s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int
ferry_parse_uint64 (const char *s, uint64_t *out)
{
    if (!s || !(*s >= '0' && *s <= '9'))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull (s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* ---- tests ---------------------------------------------------------------- */

static int
s_test_ids (bool verbose)
{
    char a[FERRY_ID_LEN + 1], b[FERRY_ID_LEN + 1];
    ferry_id_generate (a);
    ferry_id_generate (b);
    FERRY_CHECK (strlen (a) == FERRY_ID_LEN);
    FERRY_CHECK (strcmp (a, b) != 0);
    FERRY_CHECK (ferry_request_id_valid (a));
    FERRY_CHECK (!ferry_request_id_valid (""));
    FERRY_CHECK (!ferry_request_id_valid ("has space"));
    FERRY_CHECK (!ferry_request_id_valid ("tab\there"));
    char longid[130];
    memset (longid, 'x', 129);
    longid[129] = '\0';
    FERRY_CHECK (!ferry_request_id_valid (longid));
    longid[128] = '\0';
    FERRY_CHECK (ferry_request_id_valid (longid));

    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    char out[FERRY_TRACEPARENT_LEN + 1];
    FERRY_CHECK (ferry_traceparent_valid (tp));
    FERRY_CHECK (ferry_traceparent_continue (tp, out));
    FERRY_CHECK (strncmp (out, tp, 36) == 0);
    FERRY_CHECK (strcmp (out + 52, "-01") == 0);
    FERRY_CHECK (strncmp (out + 36, "00f067aa0ba902b7", 16) != 0);
    FERRY_CHECK (ferry_traceparent_valid (out));
    FERRY_CHECK (!ferry_traceparent_valid (
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
    FERRY_CHECK (!ferry_traceparent_valid (
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    FERRY_CHECK (!ferry_traceparent_continue ("garbage", out));
    FERRY_CHECK (ferry_traceparent_valid (out));
    if (verbose)
        printf ("# new trace %s\n", out);
    return 0;
}

/*  The per-thread block of random bytes: ids stay distinct across a
    refill, and a forked child does not hand out its parent's bytes.  */
static int
s_test_random_block (bool verbose)
{
    enum { N = 2 * S_RANDOM_BLOCK / (FERRY_ID_LEN / 2) + 3 };
    char(*ids)[FERRY_ID_LEN + 1] = ferry_malloc (N * sizeof *ids);
    for (size_t i = 0; i < N; i++)
        ferry_id_generate (ids[i]);
    for (size_t i = 0; i < N; i++)
        for (size_t j = i + 1; j < N; j++)
            FERRY_CHECK (strcmp (ids[i], ids[j]) != 0);
    free (ids);

    int fds[2];
    FERRY_CHECK (pipe (fds) == 0);
    pid_t pid = fork ();
    FERRY_CHECK (pid >= 0);
    if (pid == 0) {
        char child[FERRY_ID_LEN + 1];
        ferry_id_generate (child);
        _exit (write (fds[1], child, FERRY_ID_LEN) == FERRY_ID_LEN ? 0 : 1);
    }
    char mine[FERRY_ID_LEN + 1], child[FERRY_ID_LEN + 1] = {0};
    ferry_id_generate (mine);
    int status = 0;
    FERRY_CHECK (waitpid (pid, &status, 0) == pid && WIFEXITED (status)
                 && WEXITSTATUS (status) == 0);
    FERRY_CHECK (read (fds[0], child, FERRY_ID_LEN) == FERRY_ID_LEN);
    close (fds[0]);
    close (fds[1]);
    if (verbose)
        printf ("# parent %s child %s\n", mine, child);
    FERRY_CHECK (strcmp (mine, child) != 0);
    return 0;
}

static int
s_test_parse (bool verbose)
{
    int64_t i;
    uint64_t u;
    FERRY_CHECK (ferry_parse_int64 ("42", &i) == 0 && i == 42);
    FERRY_CHECK (ferry_parse_int64 ("-7", &i) == 0 && i == -7);
    FERRY_CHECK (ferry_parse_int64 ("", &i) == -1);
    FERRY_CHECK (ferry_parse_int64 (" 1", &i) == -1);
    FERRY_CHECK (ferry_parse_int64 ("1x", &i) == -1);
    FERRY_CHECK (ferry_parse_int64 ("99999999999999999999", &i) == -1);
    FERRY_CHECK (ferry_parse_uint64 ("18446744073709551615", &u) == 0);
    FERRY_CHECK (ferry_parse_uint64 ("-1", &u) == -1);
    FERRY_CHECK (ferry_wall_ms () > 1700000000000ull);
    int64_t t0 = ferry_mono_ms ();
    FERRY_CHECK (ferry_mono_ms () >= t0);
    (void) verbose;
    return 0;
}

int ferry_ids_test (bool verbose);
int ferry_parse_test (bool verbose);
int
ferry_ids_test (bool verbose)
{
    return s_test_ids (verbose) || s_test_random_block (verbose);
}
int
ferry_parse_test (bool verbose)
{
    return s_test_parse (verbose);
}
