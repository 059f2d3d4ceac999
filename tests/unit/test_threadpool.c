/* test_threadpool.c — engine/threadpool: a region runs on every thread and a
 * barrier inside it orders its phases; a worker on the caller's CPU moves off
 * it; eng_split covers [0, n) once in aligned chunks; eng_cpu_count follows
 * the affinity mask. */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/model/threadpool.h"

struct phases {
    struct eng_pool *pool;
    atomic_int first, seen_all;
};

static void two_phases(void *arg, int ith, int nth) {
    struct phases *p = arg;
    (void)ith;
    atomic_fetch_add(&p->first, 1);
    eng_pool_barrier(p->pool);
    if (atomic_load(&p->first) == nth) atomic_fetch_add(&p->seen_all, 1);
}

START_TEST(test_region_and_barrier) {
    struct phases p = {0};
    ck_assert_int_eq(eng_pool_init(&p.pool, 3), 0);
    ck_assert_int_eq(eng_pool_n_threads(p.pool), 3);
    for (int rep = 0; rep < 50; rep++) {
        atomic_store(&p.first, 0);
        atomic_store(&p.seen_all, 0);
        eng_pool_run(p.pool, two_phases, &p);
        ck_assert_int_eq(atomic_load(&p.seen_all), 3);   /* every thread passed the barrier after all arrived */
    }
    eng_pool_free(p.pool);
}
END_TEST

START_TEST(test_split_covers_once) {
    for (long n = 0; n < 70; n++)
        for (int nth = 1; nth <= 5; nth++)
            for (long align = 1; align <= 16; align *= 4) {
                long next = 0;
                for (int i = 0; i < nth; i++) {
                    long b, e;
                    eng_split(n, i, nth, align, &b, &e);
                    ck_assert_int_eq(b, next);
                    ck_assert(e >= b);
                    ck_assert(b % align == 0 || b == n);
                    next = e;
                }
                ck_assert_int_eq(next, n);
            }
}
END_TEST

START_TEST(test_cpu_count_follows_affinity) {
    cpu_set_t saved, one;
    ck_assert_int_eq(sched_getaffinity(0, sizeof saved, &saved), 0);
    const int n = eng_cpu_count();
    ck_assert(n >= 1 && n <= CPU_COUNT(&saved));
    int first = 0;
    while (!CPU_ISSET(first, &saved)) first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ck_assert_int_eq(sched_setaffinity(0, sizeof one, &one), 0);
    ck_assert_int_eq(eng_cpu_count(), 1);
    ck_assert_int_eq(sched_setaffinity(0, sizeof saved, &saved), 0);
    ck_assert_int_eq(eng_cpu_count(), n);
}
END_TEST

/* The collision is made on purpose: the pool starts while its caller may use
 * one CPU only, so the worker starts there too; the worker then widens its
 * own mask (which does not move it), and at the next region after a pause it
 * must leave the caller's CPU (threadpool.c says why it does). */
struct where {
    cpu_set_t wide;
    atomic_int worker_cpu;
};

static void widen_worker(void *arg, int ith, int nth) {
    struct where *w = arg;
    (void)nth;
    if (ith == 1) pthread_setaffinity_np(pthread_self(), sizeof w->wide, &w->wide);
}

static void record_worker(void *arg, int ith, int nth) {
    struct where *w = arg;
    (void)nth;
    if (ith == 1) atomic_store(&w->worker_cpu, sched_getcpu());
}

START_TEST(test_worker_leaves_the_callers_cpu) {
    struct where w;
    atomic_init(&w.worker_cpu, -1);
    ck_assert_int_eq(sched_getaffinity(0, sizeof w.wide, &w.wide), 0);
    if (CPU_COUNT(&w.wide) < 2) {
        printf("threadpool: this process may use one CPU, so a worker has nowhere to move: not checked\n");
        return;
    }
    int first = 0;
    while (!CPU_ISSET(first, &w.wide)) first++;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ck_assert_int_eq(sched_setaffinity(0, sizeof one, &one), 0);
    struct eng_pool *pool;
    ck_assert_int_eq(eng_pool_init(&pool, 2), 0);
    eng_pool_run(pool, widen_worker, &w);
    usleep(20000);   /* a pause, as between two requests */
    eng_pool_run(pool, record_worker, &w);
    const int worker_cpu = atomic_load(&w.worker_cpu);
    ck_assert_int_eq(sched_getcpu(), first);
    ck_assert_int_ge(worker_cpu, 0);
    ck_assert_msg(worker_cpu != first, "the worker stayed on the caller's CPU %d", first);
    eng_pool_free(pool);
    ck_assert_int_eq(sched_setaffinity(0, sizeof w.wide, &w.wide), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("threadpool");
    TCase *tc = tcase_create("threadpool");
    tcase_add_test(tc, test_region_and_barrier);
    tcase_add_test(tc, test_worker_leaves_the_callers_cpu);
    tcase_add_test(tc, test_split_covers_once);
    tcase_add_test(tc, test_cpu_count_follows_affinity);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
