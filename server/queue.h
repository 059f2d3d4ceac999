/* queue.h — the two queues between the loop thread and the engine thread.
 *
 * Design note: a queue is a mutex-protected singly linked list of nodes that
 * the producer owns until it pushes them (intrusive: pushing never
 * allocates).  The consumer takes the whole list at once, so the lock is held
 * for a few pointer moves, never while work is done.  The inbox (loop ->
 * engine) has a condition variable the engine thread sleeps on; the outbox
 * (engine -> loop) is paired with a uv_async_t by its user, and because
 * uv_async_send wake-ups coalesce, the loop drains the whole list per wake-up.
 *
 * Not here: what the nodes carry (server/serve.h) or any other shared state.
 */
#ifndef PPD_SERVER_QUEUE_H
#define PPD_SERVER_QUEUE_H

#include <pthread.h>
#include <stdbool.h>

struct srv_qnode {
    struct srv_qnode *next;
};

struct srv_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct srv_qnode *head, *tail;
    bool closed;             /* set by srv_queue_close: the consumer should finish */
};

int srv_queue_init(struct srv_queue *q);
void srv_queue_free(struct srv_queue *q);   /* accepts NULL; nodes still inside are not freed */

/* Append one node or a list (first..last linked through next), and wake a waiter. */
void srv_queue_push(struct srv_queue *q, struct srv_qnode *n);
void srv_queue_push_list(struct srv_queue *q, struct srv_qnode *first, struct srv_qnode *last);
/* Take everything (NULL when empty), in push order. */
struct srv_qnode *srv_queue_take(struct srv_queue *q);
/* Take everything, sleeping while the queue is empty, unless `busy` (the
 * caller has other work) or the queue is closed.  *closed reports closure. */
struct srv_qnode *srv_queue_wait(struct srv_queue *q, bool busy, bool *closed);
void srv_queue_close(struct srv_queue *q);

#endif
