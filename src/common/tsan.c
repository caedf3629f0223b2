/*  tsan.c: C11 threads for librdkafka under ThreadSanitizer.

    librdkafka (Debian's 2.0) makes its threads, mutexes and condition
    variables with the C11 <threads.h> calls of glibc (thrd_create,
    mtx_lock, cnd_wait...).  glibc implements those by calling its
    internal pthread functions directly, so ThreadSanitizer, which only
    intercepts the public pthread calls (GCC 12 and clang 14 have no
    thrd_create interceptor), never sees those threads start or those
    locks taken: the first malloc on a librdkafka thread crashes the
    runtime, and every hand-over through a librdkafka lock (a message
    we produce, freed in our delivery callback) would be reported as a
    race.  In a --enable-tsan build (configure adds -u thrd_create to
    the link, so this member is always pulled out of libferry.a) the
    executable defines these calls itself on top of the public pthread
    functions; the dynamic linker binds librdkafka to them before
    glibc's.  In every other build this file compiles to nothing.

    Messages through ZeroMQ are the other hand-over TSan cannot see:
    libzmq (not instrumented either) passes them through lock-free pipes,
    so the thread that receives a message (or a pointer in one, as CZMQ
    actors do) would be reported racing with the thread that built it.
    The executable also defines the zmq send and receive calls: a send
    releases, a successful receive acquires, then the call goes on to
    libzmq's.  One sync object serves every socket (which peer a message
    reaches is libzmq's business), so this orders more than the real
    pipes do: a race is still found between accesses that no message
    separates, which is where ours would be.

    The C11 types are glibc's: mtx_t, cnd_t and once_flag have the layout
    of pthread_mutex_t, pthread_cond_t and pthread_once_t (glibc casts
    them the same way), thrd_t is pthread_t.
*/

#if defined (__SANITIZE_THREAD__)
#   define FERRY_TSAN 1
#elif defined (__has_feature)
#   if __has_feature (thread_sanitizer)
#       define FERRY_TSAN 1
#   endif
#endif

#if defined (FERRY_TSAN)

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sanitizer/tsan_interface.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>
#include <zmq.h>

//  glibc's mapping of pthread errors to C11 results
static int
s_result (int rc)
{
    switch (rc) {
        case 0:         return thrd_success;
        case ENOMEM:    return thrd_nomem;
        case ETIMEDOUT: return thrd_timedout;
        case EBUSY:     return thrd_busy;
        default:        return thrd_error;
    }
}

typedef struct {
    thrd_start_t func;
    void *arg;
} s_start_t;

//  A C11 thread returns an int; carry it in the pthread's void * result
static void *
s_trampoline (void *p)
{
    s_start_t start = *(s_start_t *) p;
    free (p);
    return (void *) (intptr_t) start.func (start.arg);
}

int
thrd_create (thrd_t *thr, thrd_start_t func, void *arg)
{
    s_start_t *start = malloc (sizeof *start);
    if (!start)
        return thrd_nomem;
    start->func = func;
    start->arg = arg;
    int rc = pthread_create (thr, NULL, s_trampoline, start);
    if (rc != 0)
        free (start);
    return s_result (rc);
}

int
thrd_join (thrd_t thr, int *res)
{
    void *ret = NULL;
    int rc = pthread_join (thr, &ret);
    if (rc == 0 && res)
        *res = (int) (intptr_t) ret;
    return s_result (rc);
}

int
thrd_detach (thrd_t thr)
{
    return s_result (pthread_detach (thr));
}

int
mtx_init (mtx_t *mtx, int type)
{
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init (&attr) != 0)
        return thrd_error;
    if (type & mtx_recursive)
        pthread_mutexattr_settype (&attr, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init ((pthread_mutex_t *) mtx, &attr);
    pthread_mutexattr_destroy (&attr);
    return s_result (rc);
}

int
mtx_lock (mtx_t *mtx)
{
    return s_result (pthread_mutex_lock ((pthread_mutex_t *) mtx));
}

int
mtx_trylock (mtx_t *mtx)
{
    return s_result (pthread_mutex_trylock ((pthread_mutex_t *) mtx));
}

int
mtx_timedlock (mtx_t *restrict mtx, const struct timespec *restrict ts)
{
    return s_result (pthread_mutex_timedlock ((pthread_mutex_t *) mtx, ts));
}

int
mtx_unlock (mtx_t *mtx)
{
    return s_result (pthread_mutex_unlock ((pthread_mutex_t *) mtx));
}

void
mtx_destroy (mtx_t *mtx)
{
    pthread_mutex_destroy ((pthread_mutex_t *) mtx);
}

int
cnd_init (cnd_t *cond)
{
    return s_result (pthread_cond_init ((pthread_cond_t *) cond, NULL));
}

int
cnd_signal (cnd_t *cond)
{
    return s_result (pthread_cond_signal ((pthread_cond_t *) cond));
}

int
cnd_broadcast (cnd_t *cond)
{
    return s_result (pthread_cond_broadcast ((pthread_cond_t *) cond));
}

int
cnd_wait (cnd_t *cond, mtx_t *mtx)
{
    return s_result (pthread_cond_wait ((pthread_cond_t *) cond,
                                        (pthread_mutex_t *) mtx));
}

int
cnd_timedwait (cnd_t *restrict cond, mtx_t *restrict mtx,
               const struct timespec *restrict ts)
{
    return s_result (pthread_cond_timedwait ((pthread_cond_t *) cond,
                                             (pthread_mutex_t *) mtx, ts));
}

void
cnd_destroy (cnd_t *cond)
{
    pthread_cond_destroy ((pthread_cond_t *) cond);
}

void
call_once (once_flag *flag, void (*func) (void))
{
    pthread_once ((pthread_once_t *) flag, func);
}

//  ---- ZeroMQ's hand-overs ----------------------------------------------

static char s_zmq_sync;

typedef int (s_msg_fn) (zmq_msg_t *, void *, int);
typedef int (s_buf_fn) (void *, void *, size_t, int);
typedef int (s_const_fn) (void *, const void *, size_t, int);
static s_msg_fn *s_msg_send, *s_msg_recv;
static s_buf_fn *s_recv;
static s_const_fn *s_send, *s_send_const;

//  Runs before main, so before any thread: the pointers are then only read
__attribute__ ((constructor)) static void
s_zmq_resolve (void)
{
    s_msg_send = (s_msg_fn *) dlsym (RTLD_NEXT, "zmq_msg_send");
    s_msg_recv = (s_msg_fn *) dlsym (RTLD_NEXT, "zmq_msg_recv");
    s_send = (s_const_fn *) dlsym (RTLD_NEXT, "zmq_send");
    s_send_const = (s_const_fn *) dlsym (RTLD_NEXT, "zmq_send_const");
    s_recv = (s_buf_fn *) dlsym (RTLD_NEXT, "zmq_recv");
    if (!s_msg_send || !s_msg_recv || !s_send || !s_send_const || !s_recv)
        abort ();               //  a TSan build without libzmq: cannot be
}

int
zmq_msg_send (zmq_msg_t *msg, void *socket, int flags)
{
    __tsan_release (&s_zmq_sync);
    return s_msg_send (msg, socket, flags);
}

int
zmq_sendmsg (void *socket, zmq_msg_t *msg, int flags)
{
    __tsan_release (&s_zmq_sync);
    return s_msg_send (msg, socket, flags);
}

int
zmq_send (void *socket, const void *buf, size_t len, int flags)
{
    __tsan_release (&s_zmq_sync);
    return s_send (socket, buf, len, flags);
}

int
zmq_send_const (void *socket, const void *buf, size_t len, int flags)
{
    __tsan_release (&s_zmq_sync);
    return s_send_const (socket, buf, len, flags);
}

int
zmq_msg_recv (zmq_msg_t *msg, void *socket, int flags)
{
    int rc = s_msg_recv (msg, socket, flags);
    if (rc >= 0)
        __tsan_acquire (&s_zmq_sync);
    return rc;
}

int
zmq_recvmsg (void *socket, zmq_msg_t *msg, int flags)
{
    int rc = s_msg_recv (msg, socket, flags);
    if (rc >= 0)
        __tsan_acquire (&s_zmq_sync);
    return rc;
}

int
zmq_recv (void *socket, void *buf, size_t len, int flags)
{
    int rc = s_recv (socket, buf, len, flags);
    if (rc >= 0)
        __tsan_acquire (&s_zmq_sync);
    return rc;
}

#endif
