/*
 * pretrain/t5pretrain_main.c: t5pretrain, the training program (pretrain/trainer.h does the work).
 *
 *   t5pretrain --variant NAME --data GLOB --spm MODEL --run-dir DIR [options]
 *   t5pretrain --resume --run-dir DIR [options to change]
 *
 * One process per MPI rank. Exit codes: see T5_EXIT_* in options.h.
 */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "common/blas_runtime.h"
#include "parallel/mpi_check.h"
#include "parallel/tp.h"
#include "pretrain/options.h"
#include "pretrain/t5_config.h"
#include "pretrain/trainer.h"

static int finish_(int code) {
    tp_blacs_finalize();   /* BLACS' global state, when --tp-reduce pblas made a grid */
    MPI_Finalize();
    return code;
}

int main(int argc, char **argv) {
    /* Before anything else: OpenBLAS picks its kernel when it loads, so a wrong choice is fixed
     * by re-executing this program with the right OPENBLAS_CORETYPE (see blas_runtime.h). */
    blas_runtime_setup(argc, argv, 0, 0);
    int provided = 0, rank = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));

    TrainOptions o;
    options_defaults(&o);
    char err[4096];
    int rc = options_parse(&o, argc, argv, NULL, rank == 0 ? stdout : NULL, err, sizeof err);
    if (rc == 1) return finish_(T5_EXIT_DONE);
    if (rc == 0 && o.resume) rc = trainer_options_for_resume(&o, argc, argv, err, sizeof err);
    if (rc < 0) {
        if (rank == 0) fprintf(stderr, "t5pretrain: error: %s\n", err);
        return finish_(T5_EXIT_CONFIG);
    }
    if (o.list_variants) {
        if (rank == 0) t5_variants_print_tsv(stdout);
        return finish_(T5_EXIT_DONE);
    }
    if (provided < MPI_THREAD_MULTIPLE && rank == 0)
        fprintf(stderr, "t5pretrain: warning: MPI gives thread level %d, not MPI_THREAD_MULTIPLE: "
                "checkpoints are written in the foreground (a training stall per save)\n", provided);

    Trainer *t = NULL;
    int code = trainer_open(&t, &o, MPI_COMM_WORLD);
    if (code == T5_EXIT_DONE && t) {
        trainer_install_signal_handlers();
        code = trainer_run(t);
    }
    trainer_close(t);
    return finish_(code);
}
