/*
 * parallel/dp.c: bucketed, overlapped data-parallel gradient reduction and ZeRO-1 (contracts in
 * dp.h).
 *
 * A step is a list of "ops", fixed at create time: one non-blocking collective each, on a run
 * of adjacent floats of the buffer (adjacent tensors of one bucket merged; for ZeRO-1 only
 * tensors with the same owner), at most INT_MAX floats. Bucket k's ops are ops
 * op_first[k]..op_first[k+1]-1. Requests are kept in op order; since buckets start in order,
 * the started ops are always a prefix 0..started_ops-1, and the ones before first_open are
 * known complete. Progress = MPI_Test on first_open (any MPI_Test drives Open MPI's whole
 * progress engine, so testing the oldest request advances all of them).
 */
#include "parallel/dp.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/mpi_check.h"

typedef struct {
    size_t offset;   /* first float */
    int count;       /* floats, <= INT_MAX */
    int root;        /* ZeRO-1: the owner; -1: allreduce */
    int bucket;
} DpOp;

struct DpReducer {
    MPI_Comm comm;
    int rank, size, zero, n;
    size_t bucket_bytes;
    DpTensor *t;
    int *owner;            /* n; zero=0: all -1 */
    int *bucket_of;        /* n */
    int *ready;            /* n; == epoch when marked ready in this step */
    int epoch;
    DpBucket *b;
    int nb;
    int *pending;          /* nb; tensors of the bucket not ready yet */
    int *op_first;         /* nb + 1 */
    DpOp *ops;
    int n_ops;
    MPI_Request *req;      /* n_ops */
    double *sq;            /* n; per-tensor sums of squares */
    /* step state */
    float *grads;
    int active;            /* between dp_begin and dp_finish */
    int next_bucket;       /* buckets 0..next_bucket-1 are started */
    int started_ops, first_open;
    double t_first_start;
    DpStats st;
    /* communication thread */
    int has_thread, thread_stop;
    double period_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xcalloc_(size_t n, size_t sz, const char *what) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) mpi_fatal("the machine is out of memory", "cannot allocate %zu x %zu bytes for %s", n,
                      sz, what);
    return p;
}

/* ---- planning ---- */

/*
 * Buckets over reverse table order: walk i = n-1 .. 0, add tensor i to the open bucket, close it
 * once it holds >= bucket_bytes. The last bucket may be smaller. Pure; cannot fail.
 */
int dp_plan_buckets(const DpTensor *t, int n, size_t bucket_bytes, DpBucket *buckets,
                    int *bucket_of) {
    if (bucket_bytes == 0) bucket_bytes = DP_DEFAULT_BUCKET_BYTES;
    int nb = 0;
    size_t bytes = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (bytes == 0) { buckets[nb].last = i; buckets[nb].numel = 0; }
        buckets[nb].first = i;
        buckets[nb].numel += t[i].numel;
        if (bucket_of) bucket_of[i] = nb;
        bytes += t[i].numel * sizeof(float);
        if (bytes == 0) bytes = 1;   /* an empty tensor still opens the bucket */
        if (bytes >= bucket_bytes || i == 0) { nb++; bytes = 0; }
    }
    return nb;
}

static const DpTensor *sort_t_;
static int by_size_desc_(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_t_[i].numel != sort_t_[j].numel) return sort_t_[i].numel > sort_t_[j].numel ? -1 : 1;
    return i - j;
}

/* Largest first, each to the least-loaded rank (ties: lowest rank). Pure. */
void dp_plan_owners(const DpTensor *t, int n, int dp_size, int *owner) {
    int *order = xcalloc_((size_t)n, sizeof *order, "owner order");
    size_t *load = xcalloc_((size_t)dp_size, sizeof *load, "owner loads");
    for (int i = 0; i < n; i++) order[i] = i;
    sort_t_ = t;
    qsort(order, (size_t)n, sizeof *order, by_size_desc_);
    for (int k = 0; k < n; k++) {
        int best = 0;
        for (int r = 1; r < dp_size; r++)
            if (load[r] < load[best]) best = r;
        owner[order[k]] = best;
        load[best] += t[order[k]].numel;
    }
    free(order);
    free(load);
}

/* ---- creation ---- */

static uint64_t fnv_(uint64_t h, uint64_t v) {
    for (int k = 0; k < 8; k++) { h ^= (v >> (8 * k)) & 0xff; h *= 1099511628211ULL; }
    return h;
}

/* Append the ops of bucket k (backward order inside it: highest tensor first). */
static void plan_ops_(DpReducer *r, int k, int *cap) {
    const DpBucket *b = &r->b[k];
    for (int i = b->last; i >= b->first; ) {
        /* A run: tensors j..i adjacent in memory (tensor j ends where j+1 begins), same root. */
        int j = i;
        int root = r->zero ? r->owner[i] : -1;
        while (j - 1 >= b->first && r->t[j - 1].offset + r->t[j - 1].numel == r->t[j].offset &&
               (r->zero ? r->owner[j - 1] : -1) == root)
            j--;
        size_t off = r->t[j].offset, len = r->t[i].offset + r->t[i].numel - off;
        while (len > 0) {
            size_t c = len > (size_t)INT_MAX ? (size_t)INT_MAX : len;
            if (r->n_ops == *cap) {
                *cap *= 2;
                r->ops = realloc(r->ops, (size_t)*cap * sizeof *r->ops);
                if (!r->ops) mpi_fatal("the machine is out of memory", "cannot grow dp op list");
            }
            r->ops[r->n_ops++] = (DpOp){off, (int)c, root, k};
            off += c;
            len -= c;
        }
        i = j - 1;
    }
}

DpReducer *dp_reducer_create(MPI_Comm dp, const DpTensor *tensors, int n_tensors, int zero,
                             size_t bucket_bytes) {
    if (n_tensors < 1 || (zero != 0 && zero != 1))
        mpi_fatal("a bug in the caller", "dp_reducer_create: n_tensors %d, zero %d", n_tensors,
                  zero);
    DpReducer *r = xcalloc_(1, sizeof *r, "dp reducer");
    MPI_CHECK(MPI_Comm_dup(dp, &r->comm));
    mpi_check_comm(r->comm);
    MPI_CHECK(MPI_Comm_rank(r->comm, &r->rank));
    MPI_CHECK(MPI_Comm_size(r->comm, &r->size));
    r->zero = zero;
    r->n = n_tensors;
    r->bucket_bytes = bucket_bytes ? bucket_bytes : DP_DEFAULT_BUCKET_BYTES;
    size_t n = (size_t)n_tensors;
    r->t = xcalloc_(n, sizeof *r->t, "dp tensor table");
    memcpy(r->t, tensors, n * sizeof *r->t);
    r->owner = xcalloc_(n, sizeof *r->owner, "dp owners");
    r->bucket_of = xcalloc_(n, sizeof *r->bucket_of, "dp bucket index");
    r->ready = xcalloc_(n, sizeof *r->ready, "dp ready marks");
    r->sq = xcalloc_(n, sizeof *r->sq, "dp sums of squares");
    r->b = xcalloc_(n, sizeof *r->b, "dp buckets");
    if (zero) dp_plan_owners(r->t, n_tensors, r->size, r->owner);
    else for (int i = 0; i < n_tensors; i++) r->owner[i] = -1;
    r->nb = dp_plan_buckets(r->t, n_tensors, r->bucket_bytes, r->b, r->bucket_of);
    r->pending = xcalloc_((size_t)r->nb, sizeof *r->pending, "dp bucket counters");
    r->op_first = xcalloc_((size_t)r->nb + 1, sizeof *r->op_first, "dp bucket ops");
    int cap = n_tensors + 8;
    r->ops = xcalloc_((size_t)cap, sizeof *r->ops, "dp ops");
    for (int k = 0; k < r->nb; k++) {
        r->op_first[k] = r->n_ops;
        plan_ops_(r, k, &cap);
    }
    r->op_first[r->nb] = r->n_ops;
    r->req = xcalloc_((size_t)r->n_ops, sizeof *r->req, "dp requests");
    for (int k = 0; k < r->n_ops; k++) r->req[k] = MPI_REQUEST_NULL;

    /* Every rank must have cut the same ops: compare a hash of the inputs (h, ~h under MAX). */
    uint64_t h = 14695981039346656037ULL;
    h = fnv_(h, (uint64_t)n_tensors);
    h = fnv_(h, (uint64_t)zero);
    h = fnv_(h, (uint64_t)r->bucket_bytes);
    for (int i = 0; i < n_tensors; i++) h = fnv_(fnv_(h, r->t[i].offset), r->t[i].numel);
    uint64_t hh[2] = {h, ~h};
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, hh, 2, MPI_UINT64_T, MPI_MAX, r->comm));
    if (hh[0] != ~hh[1])
        mpi_fatal("every rank must pass the same tensor table, --zero and bucket size (same "
                  "model, same configuration)",
                  "dp_reducer_create: the ranks' tensor tables, zero or bucket_bytes differ");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    return r;
}

void dp_reducer_free(DpReducer *r) {
    if (!r) return;
    if (r->has_thread) {
        pthread_mutex_lock(&r->mu);
        r->thread_stop = 1;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    for (int k = 0; k < r->n_ops; k++)
        if (r->req[k] != MPI_REQUEST_NULL) mpi_wait_timeout(&r->req[k], "dp request at free");
    MPI_CHECK(MPI_Comm_free(&r->comm));
    free(r->t); free(r->owner); free(r->bucket_of); free(r->ready); free(r->sq); free(r->b);
    free(r->pending); free(r->op_first); free(r->ops); free(r->req);
    free(r);
}

int dp_owner(const DpReducer *r, int tensor) { return r->zero ? r->owner[tensor] : -1; }
int dp_n_buckets(const DpReducer *r) { return r->nb; }
int dp_size(const DpReducer *r) { return r->size; }
int dp_rank(const DpReducer *r) { return r->rank; }

int dp_owned_tensors(const DpReducer *r, int *idx) {
    int c = 0;
    for (int i = 0; i < r->n; i++)
        if (!r->zero || r->owner[i] == r->rank) { if (idx) idx[c] = i; c++; }
    return c;
}

/* ---- one step ---- */

/* Test started requests oldest first until one is still open. Caller holds the lock (thread) or
 * is the only user. */
static void test_open_(DpReducer *r) {
    while (r->first_open < r->started_ops) {
        int done = 0;
        MPI_CHECK(MPI_Test(&r->req[r->first_open], &done, MPI_STATUS_IGNORE));
        r->st.progress_tests++;
        if (!done) break;
        r->first_open++;
    }
}

static void *progress_main_(void *arg) {
    DpReducer *r = arg;
    struct timespec ts = {0, (long)(r->period_ms * 1e6)};
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec = ts.tv_nsec / 1000000000L; ts.tv_nsec %= 1000000000L; }
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->thread_stop && !(r->active && r->first_open < r->started_ops))
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->thread_stop) break;
        test_open_(r);
        pthread_mutex_unlock(&r->mu);
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int dp_reducer_progress_thread(DpReducer *r, double period_ms) {
    if (r->size == 1 || r->has_thread) return 0;
    int level = MPI_THREAD_SINGLE;
    MPI_CHECK(MPI_Query_thread(&level));
    if (level < MPI_THREAD_MULTIPLE) return -1;
    r->period_ms = period_ms > 0 ? period_ms : 1.0;
    if (pthread_create(&r->thread, NULL, progress_main_, r) != 0)
        mpi_fatal("the system refused a thread (ulimit -u?)", "cannot start the dp progress thread");
    r->has_thread = 1;
    return 0;
}

static void lock_(DpReducer *r) { if (r->has_thread) pthread_mutex_lock(&r->mu); }
static void unlock_(DpReducer *r) { if (r->has_thread) pthread_mutex_unlock(&r->mu); }

static void start_bucket_(DpReducer *r, int k) {
    if (r->started_ops == 0) r->t_first_start = now_();
    for (int o = r->op_first[k]; o < r->op_first[k + 1]; o++) {
        const DpOp *op = &r->ops[o];
        float *p = r->grads + op->offset;
        MPI_Request *q = &r->req[o];
        if (op->root < 0)
            MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, p, op->count, MPI_FLOAT, MPI_SUM, r->comm, q));
        else if (op->root == r->rank)
            MPI_CHECK(MPI_Ireduce(MPI_IN_PLACE, p, op->count, MPI_FLOAT, MPI_SUM, op->root,
                                  r->comm, q));
        else
            MPI_CHECK(MPI_Ireduce(p, NULL, op->count, MPI_FLOAT, MPI_SUM, op->root, r->comm, q));
        r->st.bytes += 4.0 * op->count;
    }
    r->started_ops = r->op_first[k + 1];
    r->st.buckets++;
}

void dp_begin(DpReducer *r, float *grads) {
    if (r->active) mpi_fatal("call dp_finish once per step", "dp_begin called twice without dp_finish");
    double ag = r->st.allgather_s;
    memset(&r->st, 0, sizeof r->st);
    r->st.allgather_s = ag;
    r->grads = grads;
    if (r->size == 1) return;
    lock_(r);
    r->epoch++;
    for (int k = 0; k < r->nb; k++) r->pending[k] = r->b[k].last - r->b[k].first + 1;
    r->next_bucket = 0;
    r->started_ops = r->first_open = 0;
    r->active = 1;
    unlock_(r);
}

void dp_tensor_ready(DpReducer *r, int tensor) {
    if (tensor < 0 || tensor >= r->n)
        mpi_fatal("a bug in the caller", "dp_tensor_ready: tensor %d outside 0..%d", tensor, r->n - 1);
    if (r->size == 1) return;
    if (!r->active) mpi_fatal("a bug in the caller", "dp_tensor_ready(%d) outside dp_begin/dp_finish", tensor);
    if (r->ready[tensor] == r->epoch)
        mpi_fatal("a bug in the caller", "dp_tensor_ready: tensor %d marked ready twice in one step", tensor);
    r->ready[tensor] = r->epoch;
    r->pending[r->bucket_of[tensor]]--;
    if (r->next_bucket < r->nb && r->pending[r->next_bucket] == 0) {
        lock_(r);
        while (r->next_bucket < r->nb && r->pending[r->next_bucket] == 0) {
            start_bucket_(r, r->next_bucket++);
            r->st.started_early++;
        }
        if (r->has_thread) pthread_cond_signal(&r->cv);
        unlock_(r);
    }
}

void dp_progress(DpReducer *r) {
    if (r->size == 1 || !r->active || r->has_thread) return;
    test_open_(r);
}

void dp_finish(DpReducer *r) {
    if (r->size == 1) return;
    if (!r->active) mpi_fatal("a bug in the caller", "dp_finish without dp_begin");
    double t0 = now_();
    lock_(r);
    while (r->next_bucket < r->nb) start_bucket_(r, r->next_bucket++);
    r->active = 0;   /* the thread stops touching requests */
    unlock_(r);
    for (int o = r->first_open; o < r->n_ops; o++) {
        if (r->req[o] == MPI_REQUEST_NULL) continue;
        const DpOp *op = &r->ops[o];
        const DpBucket *b = &r->b[op->bucket];
        char label[160];
        snprintf(label, sizeof label, "dp bucket %d/%d %s of %d floats (tensors %d..%d)",
                 op->bucket, r->nb, op->root < 0 ? "MPI_Iallreduce" : "MPI_Ireduce", op->count,
                 b->first, b->last);
        mpi_wait_timeout(&r->req[o], label);
    }
    r->first_open = r->n_ops;
    double t1 = now_();
    r->st.wait_s = t1 - t0;
    r->st.reduce_s = t1 - r->t_first_start;
}

void dp_allgather_params(DpReducer *r, float *params) {
    if (r->size == 1 || !r->zero) return;
    if (r->active) mpi_fatal("a bug in the caller", "dp_allgather_params before dp_finish");
    double t0 = now_();
    for (int o = 0; o < r->n_ops; o++) {
        const DpOp *op = &r->ops[o];
        MPI_CHECK(MPI_Ibcast(params + op->offset, op->count, MPI_FLOAT, op->root, r->comm,
                             &r->req[o]));
    }
    for (int o = 0; o < r->n_ops; o++) {
        if (r->req[o] == MPI_REQUEST_NULL) continue;
        char label[128];
        snprintf(label, sizeof label, "dp_allgather_params MPI_Ibcast of %d floats from rank %d",
                 r->ops[o].count, r->ops[o].root);
        mpi_wait_timeout(&r->req[o], label);
    }
    r->st.allgather_s = now_() - t0;
}

/* Sum of squares of n floats in double, 8 partial sums combined in a fixed order. */
static double sumsq_(const float *x, size_t n) {
    double a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)x[i + k] * (double)x[i + k];
    for (; i < n; i++) a[0] += (double)x[i] * (double)x[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

double dp_sum_squares_owned(DpReducer *r, const float *grads, int *finite) {
    int n = r->n;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++)
        r->sq[i] = (!r->zero || r->owner[i] == r->rank) ? sumsq_(grads + r->t[i].offset, r->t[i].numel)
                                                        : 0.0;
    if (r->zero && r->size > 1)
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, r->sq, n, MPI_DOUBLE, MPI_SUM, r->comm));
    double s = 0;
    for (int i = 0; i < n; i++) s += r->sq[i];
    if (finite) *finite = isfinite(s) ? 1 : 0;
    return s;
}

void dp_last_stats(const DpReducer *r, DpStats *st) { *st = r->st; }
