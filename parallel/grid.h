/*
 * parallel/grid.h: the process grid pp x dp x tp.
 *
 * World rank r = (pp_rank * dp_size + dp_rank) * tp_size + tp_rank, i.e. tensor-parallel peers are
 * adjacent ranks (same node when ranks fill nodes in order), then data-parallel replicas, then
 * pipeline stages. Each axis has its own communicator from MPI_Comm_split; no work uses
 * MPI_COMM_WORLD directly. All communicators have MPI_ERRORS_RETURN (mpi_check.h).
 */
#ifndef T5_PARALLEL_GRID_H
#define T5_PARALLEL_GRID_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    MPI_Comm world;       /* a duplicate of the communicator given to grid_init */
    MPI_Comm pp, dp, tp;  /* ranks that differ only in that axis' coordinate */
    MPI_Comm node;        /* ranks on this node (MPI_COMM_TYPE_SHARED) */
    int rank, size;
    int pp_rank, pp_size, dp_rank, dp_size, tp_rank, tp_size;
    int node_rank, node_size;
} Grid;

/* Collective. 0, or -1 with a message when size is not divisible by pp * tp (nothing created). */
int grid_init(Grid *g, MPI_Comm world, int pp, int tp, char *err, size_t errlen);
void grid_free(Grid *g);

#endif
