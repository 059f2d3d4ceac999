/* queue.c — the mutex-and-list queue of queue.h. */
#include "queue.h"

#include <string.h>

int srv_queue_init(struct srv_queue *q) {
    memset(q, 0, sizeof *q);
    if (pthread_mutex_init(&q->mu, NULL)) return -1;
    if (pthread_cond_init(&q->cv, NULL)) { pthread_mutex_destroy(&q->mu); return -1; }
    return 0;
}

void srv_queue_free(struct srv_queue *q) {
    if (!q) return;
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

void srv_queue_push_list(struct srv_queue *q, struct srv_qnode *first, struct srv_qnode *last) {
    if (!first) return;
    last->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = first;
    else q->head = first;
    q->tail = last;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void srv_queue_push(struct srv_queue *q, struct srv_qnode *n) { srv_queue_push_list(q, n, n); }

struct srv_qnode *srv_queue_take(struct srv_queue *q) {
    pthread_mutex_lock(&q->mu);
    struct srv_qnode *h = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    return h;
}

struct srv_qnode *srv_queue_wait(struct srv_queue *q, bool busy, bool *closed) {
    pthread_mutex_lock(&q->mu);
    while (!busy && !q->head && !q->closed) pthread_cond_wait(&q->cv, &q->mu);
    struct srv_qnode *h = q->head;
    q->head = q->tail = NULL;
    *closed = q->closed;
    pthread_mutex_unlock(&q->mu);
    return h;
}

void srv_queue_close(struct srv_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}
