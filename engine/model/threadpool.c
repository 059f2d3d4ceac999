/* threadpool.c — spin-then-sleep worker pool; see threadpool.h for why. */
#include "engine/model/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_PAUSE() _mm_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif

/* Spins before a worker goes to sleep: ~100 µs, long enough to cover the gap
 * between two regions of one forward pass, short enough not to burn a core
 * while the server is idle. */
#define POOL_SPIN_LIMIT 20000
/* Spins before a thread that waits for its peers inside a region yields the
 * core: when the machine is oversubscribed the peer we wait for may be the
 * one that needs our core, and pure spinning then costs a whole time slice. */
#define POOL_YIELD_AFTER 2000

static inline void pool_wait_step(int *spins) {
    if (++*spins < POOL_YIELD_AFTER) POOL_PAUSE();
    else { *spins = 0; sched_yield(); }
}

struct eng_pool {
    int n_threads;
    pthread_t *threads;
    _Atomic unsigned generation;   /* bumped to start a region */
    _Atomic int n_done;            /* workers finished with the current region */
    _Atomic int stop;
    eng_pool_fn fn;
    void *arg;
    /* barrier */
    _Atomic int barrier_count;
    _Atomic unsigned barrier_phase;
    /* sleeping */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic int n_sleeping;
    /* the CPU the calling thread started the current region on, when it
     * follows a pause (-1: no pause, or unknown) */
    _Atomic int caller_cpu;
    long long last_end_ns;   /* when the previous region ended (the caller's clock) */
};

/* A region that follows a pause (POOL_PAUSE_NS: between requests, not
 * between the regions or steps of a busy engine) checks where its threads
 * landed: a worker that finds itself on the calling thread's CPU moves to
 * another CPU it may use.  Why: after a pause the scheduler places the woken
 * threads, and when another core is busy for a moment (an HTTP client reading
 * its first bytes) it often puts both on one core; once both spin there, each
 * yields to the other so often that the kernel counts both as cache-hot and
 * leaves them sharing that core for tens of milliseconds while another idles:
 * a forward pass then takes up to twice as long.  Narrowing the affinity mask
 * to exclude that CPU migrates the worker at once; restoring the mask (the
 * user's or container's own) keeps it where it landed.  Checking every
 * region instead costs a busy server's streaming ~9%: the worker is then
 * pushed onto the cores where the HTTP thread and clients run. */
#define POOL_PAUSE_NS 1000000LL

static long long pool_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void pool_leave_caller_cpu(struct eng_pool *p) {
    const int here = sched_getcpu(), caller = atomic_load_explicit(&p->caller_cpu, memory_order_relaxed);
    if (here < 0 || here != caller) return;
    cpu_set_t allowed, others;
    if (pthread_getaffinity_np(pthread_self(), sizeof allowed, &allowed) != 0) return;
    others = allowed;
    CPU_CLR(here, &others);
    if (CPU_COUNT(&others) < p->n_threads - 1) return;   /* too few CPUs for a core each: sharing is expected */
    if (pthread_setaffinity_np(pthread_self(), sizeof others, &others) == 0)
        pthread_setaffinity_np(pthread_self(), sizeof allowed, &allowed);
}

struct pool_worker_arg { struct eng_pool *p; int ith; };

static void *pool_worker_main(void *varg) {
    struct pool_worker_arg *wa = varg;
    struct eng_pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            if (++spins < POOL_SPIN_LIMIT) {
                if (spins % POOL_YIELD_AFTER == 0) sched_yield();
                else POOL_PAUSE();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        seen = gen;
        pool_leave_caller_cpu(p);
        p->fn(p->arg, ith, p->n_threads);
        atomic_fetch_add_explicit(&p->n_done, 1, memory_order_acq_rel);
    }
}

int eng_pool_init(struct eng_pool **out, int n_threads) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024) return ENG_E_RANGE;
    struct eng_pool *p = calloc(1, sizeof *p);
    if (!p) return ENG_E_NOMEM;
    p->n_threads = n_threads;
    atomic_init(&p->caller_cpu, -1);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) goto err;
    for (int i = 1; i < n_threads; i++) {
        struct pool_worker_arg *wa = malloc(sizeof *wa);
        if (!wa) goto err;
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, pool_worker_main, wa) != 0) {
            free(wa);
            p->n_threads = i; /* join only the ones that started */
            goto err;
        }
    }
    *out = p;
    return 0;
err:
    eng_pool_free(p);
    return ENG_E_NOMEM;
}

void eng_pool_free(struct eng_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        if (p->threads && p->threads[i]) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int eng_pool_n_threads(const struct eng_pool *p) { return p->n_threads; }

void eng_pool_run(struct eng_pool *p, eng_pool_fn fn, void *arg) {
    if (p->n_threads == 1) { fn(arg, 0, 1); return; }
    p->fn = fn;
    p->arg = arg;
    const bool after_pause = pool_now_ns() - p->last_end_ns > POOL_PAUSE_NS;
    atomic_store_explicit(&p->caller_cpu, after_pause ? sched_getcpu() : -1, memory_order_relaxed);
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_acq_rel);
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n_threads);
    int spins = 0;
    while (atomic_load_explicit(&p->n_done, memory_order_acquire) < p->n_threads - 1) pool_wait_step(&spins);
    p->last_end_ns = pool_now_ns();
}

void eng_pool_barrier(struct eng_pool *p) {
    if (p->n_threads == 1) return;
    unsigned phase = atomic_load_explicit(&p->barrier_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->barrier_count, 1, memory_order_acq_rel) == p->n_threads - 1) {
        atomic_store_explicit(&p->barrier_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->barrier_phase, 1, memory_order_acq_rel);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&p->barrier_phase, memory_order_acquire) == phase) pool_wait_step(&spins);
}

void eng_split(long n, int ith, int nth, long align, long *begin, long *end) {
    if (align < 1) align = 1;
    long chunks = (n + align - 1) / align;
    long per = chunks / nth, extra = chunks % nth;
    long c0 = ith * per + (ith < extra ? ith : extra);
    long c1 = c0 + per + (ith < extra ? 1 : 0);
    *begin = c0 * align < n ? c0 * align : n;
    *end = c1 * align < n ? c1 * align : n;
}

/* cgroup v2 "cpu.max" ("max 100000" or "QUOTA PERIOD"), else v1's two files:
 * the CPUs' worth of time a container may use, rounded up; 0 when unlimited
 * or unknown. */
static int cgroup_cpu_limit(void) {
    long long quota = -1, period = 0;
    FILE *fp = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (fp) {
        char q[32] = "";
        if (fscanf(fp, "%31s %lld", q, &period) == 2 && strcmp(q, "max") != 0) quota = atoll(q);
        fclose(fp);
    } else if ((fp = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r"))) {
        if (fscanf(fp, "%lld", &quota) != 1) quota = -1;
        fclose(fp);
        if ((fp = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r"))) {
            if (fscanf(fp, "%lld", &period) != 1) period = 0;
            fclose(fp);
        }
    }
    if (quota <= 0 || period <= 0) return 0;
    return (int)((quota + period - 1) / period);
}

int eng_cpu_count(void) {
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n < 1) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online < 1 ? 1 : (int)online;
    }
    const int limit = cgroup_cpu_limit();
    return limit > 0 && limit < n ? limit : n;
}
