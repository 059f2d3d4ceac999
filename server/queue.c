/* queue.c — the mutex-and-list queue of queue.h. */
#include "queue.h"

#include <string.h>

int srv_queue_init(struct srv_queue *q) {
    memset(q, 0, sizeof *q);
    return pthread_mutex_init(&q->mu, NULL) ? -1 : 0;
}

void srv_queue_free(struct srv_queue *q) {
    if (q) pthread_mutex_destroy(&q->mu);
}

void srv_queue_push_list(struct srv_queue *q, struct srv_qnode *first, struct srv_qnode *last) {
    if (!first) return;
    last->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = first;
    else q->head = first;
    q->tail = last;
    pthread_mutex_unlock(&q->mu);
}

struct srv_qnode *srv_queue_take(struct srv_queue *q) {
    pthread_mutex_lock(&q->mu);
    struct srv_qnode *h = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    return h;
}
