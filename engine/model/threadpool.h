/* threadpool.h — a fixed pool of worker threads that run one parallel region at a time.
 *
 * The forward pass runs hundreds of short parallel regions per token (each
 * matmul, attention), so waking workers must cost microseconds, not the tens
 * of microseconds a condition variable costs: workers spin briefly on an atomic
 * generation counter, then fall back to sleeping on a condition variable when
 * idle for long (between requests).  The calling thread is worker 0.
 * A region function may call eng_pool_barrier() to split its work into phases
 * (e.g. quantize the input rows, then multiply) without leaving the region.
 * Not a general task queue: one region at a time, from one caller thread.
 */
#ifndef PPD_THREADPOOL_H
#define PPD_THREADPOOL_H

struct eng_pool;

/* fn(arg, ith, nth): thread ith of nth does its share of the region. */
typedef void (*eng_pool_fn)(void *arg, int ith, int nth);

int eng_pool_init(struct eng_pool **out, int n_threads);
void eng_pool_free(struct eng_pool *p);     /* accepts NULL */
int eng_pool_n_threads(const struct eng_pool *p);
/* Run fn on all threads and return when every thread has finished. */
void eng_pool_run(struct eng_pool *p, eng_pool_fn fn, void *arg);
/* Inside a region: wait until all nth threads reach this point. */
void eng_pool_barrier(struct eng_pool *p);

/* The CPUs this process may use: its affinity mask, capped by a cgroup CPU
 * quota (a container given 2.5 CPUs counts 3); at least 1. */
int eng_cpu_count(void);

/* [begin, end) share of n items for thread ith of nth, in chunks of `align` items. */
void eng_split(long n, int ith, int nth, long align, long *begin, long *end);

#endif
