/* queue.h — the outbox: the engine thread's events on their way to the loop thread.
 *
 * Design note: the queue is a mutex-protected singly linked list of nodes
 * that the producer owns until it pushes them (intrusive: pushing never
 * allocates).  The consumer takes the whole list at once, so the lock is held
 * for a few pointer moves, never while work is done.  Its user pairs it with
 * a uv_async_t; because uv_async_send wake-ups coalesce, the loop drains the
 * whole list per wake-up.  (The other direction, submissions to the engine
 * thread, is engine/decode/runner.h's inbox.)
 *
 * Not here: what the nodes carry (server/serve.h) or any other shared state.
 */
#ifndef PPD_SERVER_QUEUE_H
#define PPD_SERVER_QUEUE_H

#include <pthread.h>

struct srv_qnode {
    struct srv_qnode *next;
};

struct srv_queue {
    pthread_mutex_t mu;
    struct srv_qnode *head, *tail;
};

int srv_queue_init(struct srv_queue *q);
void srv_queue_free(struct srv_queue *q);   /* accepts NULL; nodes still inside are not freed */

/* Append a list (first..last linked through next). */
void srv_queue_push_list(struct srv_queue *q, struct srv_qnode *first, struct srv_qnode *last);
/* Take everything (NULL when empty), in push order. */
struct srv_qnode *srv_queue_take(struct srv_queue *q);

#endif
