/* parallel/pipeline.c: see pipeline.h. */
#include "pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "mpi_check.h"

/* ---------------------------------------------------------------------------------------------
 * Cost model: FLOPs per row of one training step (t5-spec.md section 8; the constant factor
 * does not matter for the split). */

double pp_cost_enc_block(const T5Config *c, int Le, int Ld) {
    (void)Ld;
    double d = c->d_model, f = c->d_ff, HK = (double)c->n_heads * c->d_kv, le = Le;
    double ff = c->ffn == T5_FFN_GATED_GELU ? 6.0 * d * f : 4.0 * d * f;
    return le * (8.0 * d * HK + ff) + 4.0 * le * le * HK;
}

double pp_cost_dec_block(const T5Config *c, int Le, int Ld) {
    double d = c->d_model, f = c->d_ff, HK = (double)c->n_heads * c->d_kv, le = Le, ld = Ld;
    double ff = c->ffn == T5_FFN_GATED_GELU ? 6.0 * d * f : 4.0 * d * f;
    return ld * 8.0 * d * HK + 4.0 * ld * ld * HK + ld * 4.0 * d * HK + le * 4.0 * d * HK +
           4.0 * ld * le * HK + ld * ff;
}

double pp_cost_head(const T5Config *c, int Le, int Ld) {
    (void)Le;
    /* the LM-head product plus the softmax over V, which costs like a few more products */
    return 2.0 * Ld * (double)c->d_model * c->vocab_size + 10.0 * Ld * (double)c->vocab_size;
}

/* Ranges from the first block of every stage (first[P] = el + dl). */
static void ranges_from_bounds_(const T5Config *c, int P, const int *first, T5StageRange *r) {
    int el = c->n_enc_layers;
    for (int s = 0; s < P; s++) {
        int u0 = first[s], u1 = first[s + 1];
        T5StageRange *x = &r[s];
        memset(x, 0, sizeof *x);
        x->embed = s == 0;
        x->enc_begin = u0 < el ? u0 : el;
        x->enc_end = u1 < el ? u1 : el;
        x->enc_norm = u0 < el && u1 >= el;
        x->dec_begin = (u0 > el ? u0 : el) - el;
        x->dec_end = (u1 > el ? u1 : el) - el;
        x->head = s == P - 1;
    }
}

int pp_split(const T5Config *c, int P, const char *spec, int Le, int Ld, T5StageRange *ranges,
             double *cost, char *err, size_t errlen) {
    int el = c->n_enc_layers, dl = c->n_dec_layers, n = el + dl;
    if (P < 1 || P > n) {
        set_error(err, errlen, "--pp %d: %s has %d blocks (%d encoder + %d decoder), so 1 to %d stages",
                  P, c->name, n, el, dl, n);
        return -1;
    }
    double *u = xcalloc((size_t)n, sizeof(double));
    for (int i = 0; i < n; i++) u[i] = i < el ? pp_cost_enc_block(c, Le, Ld) : pp_cost_dec_block(c, Le, Ld);
    u[n - 1] += pp_cost_head(c, Le, Ld);
    int *first = xcalloc((size_t)P + 1, sizeof(int));
    first[P] = n;
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        /* best[k][i]: the smallest largest-stage cost splitting blocks [0, i) into k stages */
        double *pre = xcalloc((size_t)n + 1, sizeof(double));
        for (int i = 0; i < n; i++) pre[i + 1] = pre[i] + u[i];
        double *best = xcalloc((size_t)(P + 1) * (n + 1), sizeof(double));
        int *arg = xcalloc((size_t)(P + 1) * (n + 1), sizeof(int));
        for (int i = 0; i <= n; i++) best[i] = i == 0 ? 0 : 1e300;
        for (int k = 1; k <= P; k++)
            for (int i = 0; i <= n; i++) {
                double b = 1e300;
                int a = -1;
                for (int j = k - 1; j < i; j++) {
                    double prev = best[(size_t)(k - 1) * (n + 1) + j], here = pre[i] - pre[j];
                    double v = prev > here ? prev : here;
                    if (v < b) { b = v; a = j; }
                }
                best[(size_t)k * (n + 1) + i] = b;
                arg[(size_t)k * (n + 1) + i] = a;
            }
        int i = n;
        for (int k = P; k >= 1; k--) {
            first[k] = i;
            i = arg[(size_t)k * (n + 1) + i];
        }
        first[0] = 0;
        free(pre);
        free(best);
        free(arg);
    } else {
        const char *p = spec;
        int total = 0;
        for (int s = 0; s < P; s++) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || (s < P - 1 && *end != ',') || (s == P - 1 && *end)) {
                set_error(err, errlen, "--pp-split '%s': give %d positive block counts separated by commas "
                          "(encoder then decoder blocks, %d in all), or auto", spec, P, n);
                free(u); free(first);
                return -1;
            }
            first[s] = total;
            total += (int)v;
            p = end + 1;
        }
        if (total != n) {
            set_error(err, errlen, "--pp-split '%s' counts %d blocks but %s has %d (%d encoder + %d decoder)",
                      spec, total, c->name, n, el, dl);
            free(u); free(first);
            return -1;
        }
    }
    ranges_from_bounds_(c, P, first, ranges);
    if (cost) {
        double tot = 0;
        for (int i = 0; i < n; i++) tot += u[i];
        for (int s = 0; s < P; s++) {
            double x = 0;
            for (int i = first[s]; i < first[s + 1]; i++) x += u[i];
            cost[s] = x / tot;
        }
    }
    free(u);
    free(first);
    return 0;
}

void pp_split_describe(const T5StageRange *r, int P, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    for (int s = 0; s < P && used < n; s++) {
        char part[160] = "";
        size_t k = 0;
        if (r[s].enc_end > r[s].enc_begin)
            k += (size_t)snprintf(part + k, sizeof part - k, "enc %d-%d", r[s].enc_begin, r[s].enc_end - 1);
        if (r[s].enc_norm) k += (size_t)snprintf(part + k, sizeof part - k, "%snorm", k ? " + " : "");
        if (r[s].dec_end > r[s].dec_begin)
            k += (size_t)snprintf(part + k, sizeof part - k, "%sdec %d-%d", k ? ", " : "", r[s].dec_begin, r[s].dec_end - 1);
        if (r[s].head) snprintf(part + k, sizeof part - k, "%shead", k ? " + " : "");
        used += (size_t)snprintf(buf + used, n - used, "%s%s", s ? " | " : "", part);
    }
}

/* ---------------------------------------------------------------------------------------------
 * The executor. */

enum { TAG_ENC_X = 1, TAG_DEC_X, TAG_ENC_OUT, TAG_D_ENC_X, TAG_D_DEC_X, TAG_D_ENC_OUT };
#define TAG_(kind, micro) ((kind) * 100000 + (micro))

static int has_enc_part_(const T5StageRange *r) { return r->embed || r->enc_end > r->enc_begin || r->enc_norm; }
static int has_dec_part_(const T5StageRange *r) { return r->dec_end > r->dec_begin || r->head; }
static int dec_blocks_(const T5StageRange *r) { return r->dec_end > r->dec_begin; }

#define MAX_SHARED 3

struct Pipeline {
    MPI_Comm pp;
    int P, s;
    T5Model *m;
    T5StageRange *ranges;
    int B, Le, Ld;
    size_t N, M;                     /* floats of an encoder / decoder hidden state */
    int norm_stage;                  /* the stage with the encoder's final norm */
    int in_enc_x, in_dec_x, in_enc_out, out_enc_x, out_dec_x;
    int n_dest, *dest;               /* norm stage: later stages with decoder blocks */
    int nslots;
    T5Acts **acts;
    MPI_Request *fwd_req;            /* [nslots][2 + n_dest] */
    MPI_Request *bwd_req;            /* [nslots][3] */
    float **g_enc_x_in, **g_dec_x_in, **g_enc_out_part;   /* per slot */
    float *recv_enc_x, *recv_dec_x, *recv_enc_out, *recv_d_enc_x, *recv_d_dec_x, *recv_part, *d_enc_out_sum;
    int n_shared;
    int shared_tensor[MAX_SHARED];   /* index in this stage's table */
    MPI_Comm shared_comm[MAX_SHARED];
    int *secondary;                  /* per tensor of the table */
    PpStats stats;
};

/* Does stage range r hold shared tensor k (0 shared.weight, 1 encoder bias, 2 decoder bias)? */
static int holds_shared_(const T5Config *c, const T5StageRange *r, int k) {
    if (k == 0) return r->embed || (r->dec_begin == 0 && dec_blocks_(r)) || (r->head && c->tied_embedding);
    if (k == 1) return r->enc_end > r->enc_begin;
    return dec_blocks_(r);
}

static const char *SHARED_NAMES[MAX_SHARED] = {
    "shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"};

Pipeline *pp_create(MPI_Comm pp, T5Model *m, const T5StageRange *ranges, int P, int B, int Le, int Ld) {
    Pipeline *p = xcalloc(1, sizeof *p);
    p->pp = pp;
    p->P = P;
    MPI_CHECK(MPI_Comm_rank(pp, &p->s));
    p->m = m;
    p->ranges = xcalloc((size_t)P, sizeof *p->ranges);
    memcpy(p->ranges, ranges, (size_t)P * sizeof *ranges);
    p->B = B; p->Le = Le; p->Ld = Ld;
    size_t d = (size_t)m->cfg.d_model;
    p->N = (size_t)B * Le * d;
    p->M = (size_t)B * Ld * d;
    const T5StageRange *r = &ranges[p->s];
    for (int s = 0; s < P; s++) if (ranges[s].enc_norm) p->norm_stage = s;
    p->in_enc_x = p->s > 0 && has_enc_part_(r);
    p->in_dec_x = has_dec_part_(r) && !(r->dec_begin == 0 && dec_blocks_(r));
    p->in_enc_out = dec_blocks_(r) && !r->enc_norm;
    p->out_enc_x = has_enc_part_(r) && !r->enc_norm;
    p->out_dec_x = has_dec_part_(r) && !r->head;
    p->dest = xcalloc((size_t)P, sizeof(int));
    if (p->s == p->norm_stage)
        for (int s = p->s + 1; s < P; s++) if (dec_blocks_(&ranges[s])) p->dest[p->n_dest++] = s;
    int warm = P - p->s - 1;
    p->nslots = warm + 1;
    p->acts = xcalloc((size_t)p->nslots, sizeof(T5Acts *));
    p->fwd_req = xcalloc((size_t)p->nslots * (2 + p->n_dest), sizeof(MPI_Request));
    p->bwd_req = xcalloc((size_t)p->nslots * 3, sizeof(MPI_Request));
    for (int i = 0; i < p->nslots * (2 + p->n_dest); i++) p->fwd_req[i] = MPI_REQUEST_NULL;
    for (int i = 0; i < p->nslots * 3; i++) p->bwd_req[i] = MPI_REQUEST_NULL;
    p->g_enc_x_in = xcalloc((size_t)p->nslots, sizeof(float *));
    p->g_dec_x_in = xcalloc((size_t)p->nslots, sizeof(float *));
    p->g_enc_out_part = xcalloc((size_t)p->nslots, sizeof(float *));
    for (int k = 0; k < p->nslots; k++) {
        if (p->in_enc_x) p->g_enc_x_in[k] = xmalloc_aligned(p->N * sizeof(float));
        if (p->in_dec_x) p->g_dec_x_in[k] = xmalloc_aligned(p->M * sizeof(float));
        if (p->in_enc_out) p->g_enc_out_part[k] = xmalloc_aligned(p->N * sizeof(float));
    }
    if (p->in_enc_x) p->recv_enc_x = xmalloc_aligned(p->N * sizeof(float));
    if (p->in_dec_x) p->recv_dec_x = xmalloc_aligned(p->M * sizeof(float));
    if (p->in_enc_out) p->recv_enc_out = xmalloc_aligned(p->N * sizeof(float));
    if (p->out_enc_x) p->recv_d_enc_x = xmalloc_aligned(p->N * sizeof(float));
    if (p->out_dec_x) p->recv_d_dec_x = xmalloc_aligned(p->M * sizeof(float));
    if (p->n_dest) {
        p->recv_part = xmalloc_aligned(p->N * sizeof(float));
        p->d_enc_out_sum = xmalloc_aligned(p->N * sizeof(float));
    }
    /* shared tensors: one communicator per tensor over the stages holding it */
    p->secondary = xcalloc((size_t)m->num_tensors, sizeof(int));
    for (int k = 0; k < MAX_SHARED; k++) {
        int holders = 0, firsth = -1;
        for (int s = 0; s < P; s++)
            if (holds_shared_(&m->cfg, &ranges[s], k)) { holders++; if (firsth < 0) firsth = s; }
        int mine = holds_shared_(&m->cfg, r, k);
        MPI_Comm comm = MPI_COMM_NULL;
        MPI_CHECK(MPI_Comm_split(pp, mine && holders > 1 ? 0 : MPI_UNDEFINED, p->s, &comm));
        if (mine && holders > 1) {
            int ti = t5_model_find_tensor(m, SHARED_NAMES[k]);
            if (ti < 0) mpi_fatal("this is a bug in the stage tables", "stage %d lacks %s", p->s, SHARED_NAMES[k]);
            p->shared_tensor[p->n_shared] = ti;
            p->shared_comm[p->n_shared++] = comm;
            if (p->s != firsth) p->secondary[ti] = 1;
        }
    }
    return p;
}

void pp_free(Pipeline *p) {
    if (!p) return;
    for (int i = 0; i < p->nslots * (2 + p->n_dest); i++)
        if (p->fwd_req[i] != MPI_REQUEST_NULL) mpi_wait_timeout(&p->fwd_req[i], "pipeline send (forward)");
    for (int i = 0; i < p->nslots * 3; i++)
        if (p->bwd_req[i] != MPI_REQUEST_NULL) mpi_wait_timeout(&p->bwd_req[i], "pipeline send (backward)");
    for (int k = 0; k < p->nslots; k++) {
        t5_acts_free(p->acts[k]);
        free(p->g_enc_x_in[k]);
        free(p->g_dec_x_in[k]);
        free(p->g_enc_out_part[k]);
    }
    for (int k = 0; k < p->n_shared; k++) MPI_Comm_free(&p->shared_comm[k]);
    free(p->acts); free(p->fwd_req); free(p->bwd_req);
    free(p->g_enc_x_in); free(p->g_dec_x_in); free(p->g_enc_out_part);
    free(p->recv_enc_x); free(p->recv_dec_x); free(p->recv_enc_out);
    free(p->recv_d_enc_x); free(p->recv_d_dec_x); free(p->recv_part); free(p->d_enc_out_sum);
    free(p->dest); free(p->ranges); free(p->secondary);
    free(p);
}

int pp_is_secondary_copy(const Pipeline *p, int tensor) { return p->secondary[tensor]; }

void pp_last_stats(const Pipeline *p, PpStats *st) { *st = p->stats; }

/* Receive n floats from `from` with a deadline (the time counts as waiting). */
static void recv_(Pipeline *p, float *buf, size_t n, int from, int tag, const char *what) {
    double t0 = now_seconds();
    MPI_Request req;
    MPI_CHECK(MPI_Irecv(buf, (int)n, MPI_FLOAT, from, tag, p->pp, &req));
    char label[128];
    snprintf(label, sizeof label, "pipeline receive of %s from stage %d (micro-batch %d)", what, from, tag % 100000);
    mpi_wait_timeout(&req, label);
    p->stats.wait_s += now_seconds() - t0;
}

static void send_(Pipeline *p, const float *buf, size_t n, int to, int tag, MPI_Request *req) {
    if (*req != MPI_REQUEST_NULL) mpi_wait_timeout(req, "pipeline send");
    MPI_CHECK(MPI_Isend(buf, (int)n, MPI_FLOAT, to, tag, p->pp, req));
    p->stats.bytes_sent += (double)n * sizeof(float);
}

/* Forward of micro-batch mi (rows mi*B ..) in activation slot k. */
static void forward_(Pipeline *p, const T5Batch *local, int mi, float zc, T5LossStats *loss) {
    int k = mi % p->nslots;
    MPI_Request *fr = p->fwd_req + (size_t)k * (2 + p->n_dest);
    /* the slot's outputs may still be in flight from its previous micro-batch */
    for (int i = 0; i < 2 + p->n_dest; i++)
        if (fr[i] != MPI_REQUEST_NULL) mpi_wait_timeout(&fr[i], "pipeline send (forward)");
    if (!p->acts[k]) p->acts[k] = t5_acts_new(p->m, p->B, p->Le, p->Ld);
    T5StageIn in = {NULL, NULL, NULL};
    if (p->in_enc_x) { recv_(p, p->recv_enc_x, p->N, p->s - 1, TAG_(TAG_ENC_X, mi), "the encoder hidden state"); in.enc_x = p->recv_enc_x; }
    if (p->in_dec_x) { recv_(p, p->recv_dec_x, p->M, p->s - 1, TAG_(TAG_DEC_X, mi), "the decoder hidden state"); in.dec_x = p->recv_dec_x; }
    if (p->in_enc_out) { recv_(p, p->recv_enc_out, p->N, p->norm_stage, TAG_(TAG_ENC_OUT, mi), "the encoder output"); in.enc_out = p->recv_enc_out; }
    T5Batch mb = t5_batch_slice(local, mi * p->B, p->B);
    T5LossStats ls;
    double t0 = now_seconds();
    t5_stage_forward(p->m, p->acts[k], &mb, &in, zc, &ls);
    p->stats.compute_s += now_seconds() - t0;
    loss->ce_sum += ls.ce_sum;
    loss->z_sum += ls.z_sum;
    loss->tokens += ls.tokens;
    if (p->out_enc_x) send_(p, t5_acts_enc_x_out(p->acts[k]), p->N, p->s + 1, TAG_(TAG_ENC_X, mi), &fr[0]);
    if (p->out_dec_x) send_(p, t5_acts_dec_x_out(p->acts[k]), p->M, p->s + 1, TAG_(TAG_DEC_X, mi), &fr[1]);
    for (int i = 0; i < p->n_dest; i++)
        send_(p, t5_acts_enc_out(p->acts[k]), p->N, p->dest[i], TAG_(TAG_ENC_OUT, mi), &fr[2 + i]);
}

static void backward_(Pipeline *p, int mi, float loss_scale, void (*ready)(void *, int), void *ctx) {
    int k = mi % p->nslots;
    MPI_Request *br = p->bwd_req + (size_t)k * 3;
    for (int i = 0; i < 3; i++)
        if (br[i] != MPI_REQUEST_NULL) mpi_wait_timeout(&br[i], "pipeline send (backward)");
    T5StageGrad g;
    memset(&g, 0, sizeof g);
    if (p->out_enc_x) { recv_(p, p->recv_d_enc_x, p->N, p->s + 1, TAG_(TAG_D_ENC_X, mi), "the encoder hidden state's gradient"); g.d_enc_x = p->recv_d_enc_x; }
    if (p->out_dec_x) { recv_(p, p->recv_d_dec_x, p->M, p->s + 1, TAG_(TAG_D_DEC_X, mi), "the decoder hidden state's gradient"); g.d_dec_x = p->recv_d_dec_x; }
    if (p->n_dest) {
        /* later decoder stages' parts of the encoder output's gradient, summed in stage order */
        for (int i = 0; i < p->n_dest; i++) {
            recv_(p, i == 0 ? p->d_enc_out_sum : p->recv_part, p->N, p->dest[i], TAG_(TAG_D_ENC_OUT, mi),
                  "the encoder output's gradient");
            if (i > 0) {
                float *dst = p->d_enc_out_sum;
                const float *src = p->recv_part;
                size_t n = p->N;
#pragma omp parallel for simd schedule(static)
                for (size_t j = 0; j < n; j++) dst[j] += src[j];
            }
        }
        g.d_enc_out = p->d_enc_out_sum;
    }
    g.d_enc_x_in = p->g_enc_x_in[k];
    g.d_dec_x_in = p->g_dec_x_in[k];
    g.d_enc_out_part = p->g_enc_out_part[k];
    g.ready = ready;
    g.ready_ctx = ctx;
    double t0 = now_seconds();
    t5_stage_backward(p->m, p->acts[k], &g, loss_scale);
    p->stats.compute_s += now_seconds() - t0;
    if (p->in_enc_x) send_(p, g.d_enc_x_in, p->N, p->s - 1, TAG_(TAG_D_ENC_X, mi), &br[0]);
    if (p->in_dec_x) send_(p, g.d_dec_x_in, p->M, p->s - 1, TAG_(TAG_D_DEC_X, mi), &br[1]);
    if (p->in_enc_out) send_(p, g.d_enc_out_part, p->N, p->norm_stage, TAG_(TAG_D_ENC_OUT, mi), &br[2]);
}

/* Announce tensors as ready, except the shared ones (pp_reduce_shared does). */
typedef struct { Pipeline *p; void (*ready)(void *, int); void *ctx; } ReadyFilter;
static void ready_filter_(void *c, int tensor) {
    ReadyFilter *f = c;
    for (int k = 0; k < f->p->n_shared; k++) if (f->p->shared_tensor[k] == tensor) return;
    f->ready(f->ctx, tensor);
}

void pp_train_step(Pipeline *p, const T5Batch *local, float zc, float loss_scale, T5LossStats *loss,
                   void (*ready)(void *ctx, int tensor), void *ctx) {
    int m = local->B / p->B;
    memset(&p->stats, 0, sizeof p->stats);
    p->stats.micro_batches = m;
    loss->ce_sum = 0; loss->z_sum = 0; loss->tokens = 0;
    ReadyFilter f = {p, ready, ctx};
    int warm = p->P - p->s - 1;
    if (warm > m) warm = m;
    for (int i = 0; i < warm; i++) forward_(p, local, i, zc, loss);
    for (int i = 0; i < m - warm; i++) {
        forward_(p, local, warm + i, zc, loss);
        int last = i == m - 1;
        backward_(p, i, loss_scale, last && ready ? ready_filter_ : NULL, &f);
    }
    for (int i = m - warm; i < m; i++) backward_(p, i, loss_scale, i == m - 1 && ready ? ready_filter_ : NULL, &f);
}

void pp_forward(Pipeline *p, const T5Batch *local, T5LossStats *loss) {
    int m = local->B / p->B;
    loss->ce_sum = 0; loss->z_sum = 0; loss->tokens = 0;
    for (int i = 0; i < m; i++) forward_(p, local, i, 0.0f, loss);
    for (int i = 0; i < p->nslots * (2 + p->n_dest); i++)
        if (p->fwd_req[i] != MPI_REQUEST_NULL) mpi_wait_timeout(&p->fwd_req[i], "pipeline send (forward)");
}

void pp_reduce_shared(Pipeline *p, void (*ready)(void *ctx, int tensor), void *ctx) {
    for (int k = 0; k < p->n_shared; k++) {
        const T5Tensor *t = &p->m->tensors[p->shared_tensor[k]];
        float *g = p->m->grads + t->offset;
        const size_t piece = (size_t)1 << 28;
        for (size_t off = 0; off < t->numel; off += piece) {
            size_t len = t->numel - off < piece ? t->numel - off : piece;
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, g + off, (int)len, MPI_FLOAT, MPI_SUM, p->shared_comm[k]));
        }
    }
    if (ready)
        for (int k = 0; k < p->n_shared; k++) ready(ctx, p->shared_tensor[k]);
    (void)ready;
}
