/*
 * common/resources.h: what this process may use, as the scheduler (Slurm, cgroups) says, not the
 * node's totals.
 */
#ifndef T5_COMMON_RESOURCES_H
#define T5_COMMON_RESOURCES_H

#include <stddef.h>

/* Default threads per rank: SLURM_CPUS_PER_TASK when set; else the CPUs in this process's
 * affinity mask divided by ranks_on_node (at least 1). *why (may be NULL) gets a short
 * explanation ("SLURM_CPUS_PER_TASK=4", "affinity mask 8 CPUs / 2 ranks"). */
int resources_default_threads(int ranks_on_node, char *why, size_t whylen);

/* Bytes this process may still use: the smaller of MemAvailable and the limit of its cgroup
 * (v2 memory.max - memory.current, or v1 memory.limit_in_bytes - usage), 0 if unknown. *why gets
 * where the number came from. */
size_t resources_memory_available(char *why, size_t whylen);

#endif
