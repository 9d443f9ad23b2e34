/*
 * parallel/scalapack.h: prototypes of the BLACS / PBLAS / ScaLAPACK routines the project calls.
 *
 * Debian's libscalapack-openmpi (2.2) ships only the shared library (-lscalapack-openmpi), no C
 * header, so the prototypes live here, in one place. All of them were checked against the symbols
 * the library exports (nm -D libscalapack-openmpi.so.2.2) and against the reference sources'
 * calling conventions:
 *   - the C BLACS interface (Cblacs_*) takes values;
 *   - the Fortran-callable routines (descinit_, numroc_, psgemm_) take every argument by
 *     pointer; psgemm_ is PBLAS' C implementation of the Fortran entry point, whose character
 *     arguments are plain char pointers (no hidden length arguments).
 *
 * Array descriptor (9 ints, "dense matrix" type 1), indices below. A descriptor whose RSRC (or
 * CSRC) is set to -1 by hand AFTER descinit_ describes a matrix REPLICATED over the process rows
 * (columns): every process holds the whole matrix (PBLAS' replicated-operand convention; psgemm
 * then reduces a replicated C itself).
 *
 * Linking: libscalapack-openmpi NEEDs libblas.so.3 and liblapack.so.3, which Debian's
 * alternatives point at the PTHREAD OpenBLAS, while the project links the OpenMP OpenBLAS. The
 * Makefile therefore links with -Wl,--disable-new-dtags, so the programs carry DT_RPATH (not
 * DT_RUNPATH) = the openblas-openmp directory; DT_RPATH of the executable is also searched for
 * the dependencies of its libraries, so ScaLAPACK's libblas.so.3 / liblapack.so.3 come from
 * openblas-openmp too and bind to the one libopenblas.so.0 already loaded. tp_blas_check
 * (parallel/tp.h) verifies at run time that exactly one OpenBLAS (OpenMP) is mapped.
 */
#ifndef T5_PARALLEL_SCALAPACK_H
#define T5_PARALLEL_SCALAPACK_H

#include <mpi.h>

/* Descriptor fields (0-based C indices of the 9-int array). */
enum { SL_DTYPE = 0, SL_CTXT = 1, SL_M = 2, SL_N = 3, SL_MB = 4, SL_NB = 5, SL_RSRC = 6,
       SL_CSRC = 7, SL_LLD = 8, SL_DLEN = 9 };

/* ---- BLACS (C interface) ---- */
void Cblacs_pinfo(int *mypnum, int *nprocs);
/* A BLACS system handle for an MPI communicator (free with Cfree_blacs_system_handle). */
int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);
/* In: *ictxt = a system handle; out: the context of an nprow x npcol grid ("R"/"C" order). */
void Cblacs_gridinit(int *ictxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int ictxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ictxt);
/* notdone = 1: free BLACS' state but leave MPI running. */
void Cblacs_exit(int notdone);

/* ---- ScaLAPACK tools ---- */
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb,
               const int *irsrc, const int *icsrc, const int *ictxt, const int *lld, int *info);
/* Rows (or columns) of an n-long dimension in blocks of nb owned by process iproc of nprocs. */
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc,
            const int *nprocs);

/* ---- PBLAS ---- */
/* sub(C) = alpha op(sub(A)) op(sub(B)) + beta sub(C); column-major global matrices; ia/ja etc.
 * are 1-based global offsets of the submatrices. */
void psgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
             const float *alpha, const float *a, const int *ia, const int *ja, const int *desca,
             const float *b, const int *ib, const int *jb, const int *descb, const float *beta,
             float *c, const int *ic, const int *jc, const int *descc);

#endif
