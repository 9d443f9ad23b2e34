/*
 * pretrain/trainer.h: the training loop as a module: a Trainer holds the model, optimizer, data
 * source, step, tokens seen, metrics writer and the process grid; main() only parses options and
 * calls these. Tests drive trainer_step directly.
 *
 * One step (trainer_step): every data-parallel rank takes its rows of the global batch, runs
 * forward and backward over micro-batches (gradients of the T5 objective
 *     sum_t w_t (ce_t + z * logZ_t^2) / (global_batch * dec_len)      docs/t5-recipe.md section 5.4
 * accumulate), gradients are summed over data-parallel ranks, checked finite, and the optimizer
 * updates the parameters (identically on every rank).
 *
 * Checkpoints (ckpt/ckpt.h) hold parameters, the full optimizer state, step, tokens, the merged
 * data cursors of all ranks, every option in force, the model config and the layout at save; a
 * run resumed from one continues bit for bit (same layout) or with the same batches and losses
 * within summation-order differences (another layout).
 *
 * Collective discipline: every decision that changes control flow (stop, save, data exhausted,
 * failure) is agreed by all ranks at a step boundary, so no rank is ever left waiting.
 */
#ifndef T5_TRAINER_H
#define T5_TRAINER_H

#include <mpi.h>
#include <stddef.h>

#include "options.h"

typedef struct Trainer Trainer;

/* Everything before the first step: resolve and check every option (exit code 2 on a bad
 * configuration, with the message printed once), set up the grid, data, model (from
 * --init-from, or freshly initialised), optimizer, and with --resume restore the newest
 * checkpoint that verifies. --dry-run stops after printing the plan: *out is NULL and the
 * return value 0. Returns a T5_EXIT_* code; on 0 with a Trainer in *out the run is ready. */
int trainer_open(Trainer **out, TrainOptions *opts, MPI_Comm world);

/* One optimizer step (the step counter advances). Returns 0, or 1 when the data is exhausted
 * (nothing changed). Fatal errors abort the job through the MPI checks. */
int trainer_step(Trainer *t);

/* Write a checkpoint of the current step (collective). 0, or -1 (reported; the previous
 * checkpoint is intact). background = 1 writes from a copy on a thread. */
int trainer_save(Trainer *t, int background);

/* The whole run: steps, evaluation, metrics, checkpoints, signals, --end-time. Returns the
 * T5_EXIT_* code of the run. */
int trainer_run(Trainer *t);

/* --resume: the options of the newest checkpoint of o->run_dir that verifies are the base; the
 * command line (argv) overrides those that may change (--steps, --save-every, ...), and those
 * that may not (variant, batch, seed, data, lengths...) must match. Values tied to one job or
 * layout (threads, micro-batch, --end-time) start afresh. 0, or -1 with a message in err. */
int trainer_options_for_resume(TrainOptions *o, int argc, char **argv, char *err, size_t errlen);

/* Accessors for tests. */
long trainer_current_step(const Trainer *t);
double trainer_last_loss(const Trainer *t);

void trainer_close(Trainer *t);

/* Install the stop handlers (SIGINT, SIGTERM, SIGUSR1): the first asks for a checkpoint and a
 * stop at the next step boundary, a second one ends the process at once. */
void trainer_install_signal_handlers(void);

#endif
