/*
 * parallel/grid.c: the pp x dp x tp process grid (layout in grid.h).
 */
#include "parallel/grid.h"

#include <stdio.h>
#include <string.h>

#include "parallel/mpi_check.h"

/*
 * Collective over world. Duplicates world, splits it into the three axis communicators and the
 * node communicator, and sets MPI_ERRORS_RETURN on all of them. Returns 0; or -1 with a message
 * in err when pp or tp is < 1 or the size is not divisible by pp * tp, in which case nothing is
 * created (every rank takes the same decision, so no rank is left in a collective). MPI failures
 * abort the job (mpi_check.h).
 */
int grid_init(Grid *g, MPI_Comm world, int pp, int tp, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    g->world = g->pp = g->dp = g->tp = g->node = MPI_COMM_NULL;
    int rank, size;
    MPI_CHECK(MPI_Comm_rank(world, &rank));
    MPI_CHECK(MPI_Comm_size(world, &size));
    if (pp < 1 || tp < 1) {
        snprintf(err, errlen, "--pp %d and --tp %d must both be >= 1", pp, tp);
        return -1;
    }
    if (size % (pp * tp) != 0) {
        snprintf(err, errlen,
                 "%d ranks cannot form a grid with --pp %d and --tp %d: the number of ranks must "
                 "be a multiple of pp * tp = %d", size, pp, tp, pp * tp);
        return -1;
    }
    MPI_CHECK(MPI_Comm_dup(world, &g->world));
    mpi_check_comm(g->world);
    g->rank = rank;
    g->size = size;
    g->pp_size = pp;
    g->tp_size = tp;
    g->dp_size = size / (pp * tp);
    /* r = (pp_rank * dp_size + dp_rank) * tp_size + tp_rank */
    g->tp_rank = rank % tp;
    g->dp_rank = (rank / tp) % g->dp_size;
    g->pp_rank = rank / (tp * g->dp_size);
    /* Each axis: the color is the pair of the other two coordinates, the key the own one. */
    MPI_CHECK(MPI_Comm_split(g->world, g->dp_rank * tp + g->tp_rank, g->pp_rank, &g->pp));
    MPI_CHECK(MPI_Comm_split(g->world, g->pp_rank * tp + g->tp_rank, g->dp_rank, &g->dp));
    MPI_CHECK(MPI_Comm_split(g->world, g->pp_rank * g->dp_size + g->dp_rank, g->tp_rank, &g->tp));
    MPI_CHECK(MPI_Comm_split_type(g->world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &g->node));
    mpi_check_comm(g->pp);
    mpi_check_comm(g->dp);
    mpi_check_comm(g->tp);
    mpi_check_comm(g->node);
    MPI_CHECK(MPI_Comm_rank(g->node, &g->node_rank));
    MPI_CHECK(MPI_Comm_size(g->node, &g->node_size));
    return 0;
}

/* Frees every communicator grid_init made; safe on a zeroed or already freed Grid. */
void grid_free(Grid *g) {
    MPI_Comm *c[] = {&g->pp, &g->dp, &g->tp, &g->node, &g->world};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        if (*c[i] != MPI_COMM_NULL && *c[i] != 0) MPI_CHECK(MPI_Comm_free(c[i]));
}
