/*
 * common/resources.h: what this process may use, as the scheduler (Slurm, cgroups) says, not the
 * node's totals.
 *
 * Under Slurm a rank owns SLURM_CPUS_PER_TASK CPUs and a share of the job's memory limit (its
 * cgroup), not the node: sizing threads from the node's core count or memory from MemAvailable
 * oversubscribes the CPUs and gets the job OOM-killed by its cgroup. Outside Slurm the affinity
 * mask (taskset, mpirun --bind-to) and a container's cgroup play the same role.
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

/* Planning for another machine: when the environment holds T5_PLAN_NODE_MEMORY_MB (jobs/t5submit
 * sets it for `t5pretrain --dry-run --plan-world ...` to the partition's node memory), that many
 * MiB is the answer instead of this machine's numbers, and *why says so. Leave it unset for
 * training: it is meant for plans made on a login node. */

/* The same with the roots of /proc and of the cgroup file systems as parameters (for tests:
 * a fake tree). resources_memory_available() is this with "/proc" and "/sys/fs/cgroup".
 * proc_root/meminfo and proc_root/self/cgroup are read; the cgroup v2 hierarchy is looked for at
 * cgroup_root (unified) or cgroup_root/unified (hybrid), v1 memory at cgroup_root/memory. */
size_t resources_memory_available_at(const char *proc_root, const char *cgroup_root, char *why,
                                     size_t whylen);

#endif
