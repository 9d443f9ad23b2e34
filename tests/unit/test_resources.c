/* tests/unit/test_resources.c: threads from SLURM_CPUS_PER_TASK and the affinity mask; memory
 * from MemAvailable and cgroup v1/v2 limits, read from fake /proc and /sys/fs/cgroup trees. */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/resources.h"
#include "../../common/util.h"
#include "test.h"

#define MiB (1024.0 * 1024.0)

static char root_[256];

/* Write text to root_/rel, creating directories. */
static void put_(const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root_, rel);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    CHECK(mkdir_p(dir) == 0);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void fresh_tree_(const char *name) {
    snprintf(root_, sizeof root_, "%s/t5res-%ld-%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (long)getpid(), name);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root_);
    CHECK(system(cmd) == 0);
    CHECK(mkdir_p(root_) == 0);
    put_("proc/meminfo", "MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    8388608 kB\n");
}

static void drop_tree_(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root_);
    CHECK(system(cmd) == 0);
}

static size_t avail_(char *why, size_t n) {
    char proc[300], cg[300];
    snprintf(proc, sizeof proc, "%s/proc", root_);
    snprintf(cg, sizeof cg, "%s/cg", root_);
    return resources_memory_available_at(proc, cg, why, n);
}

static void test_threads_from_slurm_cpus_per_task(void) {
    char why[200];
    setenv("SLURM_CPUS_PER_TASK", "3", 1);
    CHECK_EQ_INT(resources_default_threads(2, why, sizeof why), 3);
    CHECK_STR(why, "SLURM_CPUS_PER_TASK=3");
    CHECK_EQ_INT(resources_default_threads(64, NULL, 0), 3);   /* not divided by ranks */
    unsetenv("SLURM_CPUS_PER_TASK");
}

static void test_threads_from_affinity_mask(void) {
    cpu_set_t saved;
    CHECK(sched_getaffinity(0, sizeof saved, &saved) == 0);
    int total = CPU_COUNT(&saved);
    char why[200];
    unsetenv("SLURM_CPUS_PER_TASK");
    CHECK_EQ_INT(resources_default_threads(1, why, sizeof why), total);
    char want[200];
    snprintf(want, sizeof want, "affinity mask %d CPUs / 1 rank", total);
    CHECK_STR(why, want);

    /* one CPU: the mask, not the node's core count, decides */
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; c++) if (CPU_ISSET(c, &saved)) first = c;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    CHECK_EQ_INT(resources_default_threads(1, why, sizeof why), 1);
    CHECK_STR(why, "affinity mask 1 CPUs / 1 rank");
    CHECK_EQ_INT(resources_default_threads(4, why, sizeof why), 1);   /* at least 1 */
    CHECK_STR(why, "affinity mask 1 CPUs / 4 ranks");
    CHECK(sched_setaffinity(0, sizeof saved, &saved) == 0);

    if (total >= 2) CHECK_EQ_INT(resources_default_threads(2, NULL, 0), total / 2);
    CHECK_EQ_INT(resources_default_threads(0, NULL, 0), total);   /* 0 ranks counts as 1 */
}

static void test_threads_ignore_bad_slurm_value(void) {
    char why[200];
    const char *bad[] = { "abc", "0", "-2", "4x", "" };
    for (int i = 0; i < 5; i++) {
        setenv("SLURM_CPUS_PER_TASK", bad[i], 1);
        int t = resources_default_threads(1, why, sizeof why);
        CHECKF(t >= 1 && strstr(why, "affinity mask"), "value '%s': %d, %s", bad[i], t, why);
        if (*bad[i]) CHECKF(strstr(why, "ignored SLURM_CPUS_PER_TASK") != NULL, "%s", why);
    }
    unsetenv("SLURM_CPUS_PER_TASK");
}

static void test_memory_cgroup_v2_limit_on_ancestor(void) {
    fresh_tree_("v2");
    put_("proc/self/cgroup", "0::/slurm/uid_0/job_5/step_0/task_0\n");
    put_("cg/cgroup.controllers", "cpu memory pids\n");
    put_("cg/slurm/uid_0/job_5/memory.max", "2147483648\n");               /* 2 GiB */
    put_("cg/slurm/uid_0/job_5/memory.current", "1073741824\n");            /* 1 GiB used */
    put_("cg/slurm/uid_0/job_5/memory.stat", "anon 700000000\nfile 300000000\ninactive_file 268435456\nactive_file 1\n");
    put_("cg/slurm/uid_0/job_5/step_0/task_0/memory.max", "max\n");
    put_("cg/slurm/uid_0/job_5/step_0/task_0/memory.current", "900000000\n");
    put_("cg/slurm/memory.max", "max\n");
    char why[300];
    size_t got = avail_(why, sizeof why);
    /* 2 GiB - (1 GiB - 256 MiB inactive page cache) = 1.25 GiB */
    CHECK_EQ_INT(got, 2147483648ULL - (1073741824ULL - 268435456ULL));
    CHECKF(strstr(why, "cgroup v2 /slurm/uid_0/job_5:") == why, "%s", why);
    CHECKF(strstr(why, "limit 2048.0 MiB") != NULL, "%s", why);

    /* a tighter limit on the task's own cgroup wins */
    put_("cg/slurm/uid_0/job_5/step_0/task_0/memory.max", "1000000000\n");
    got = avail_(why, sizeof why);
    CHECK_EQ_INT(got, 100000000);
    CHECKF(strstr(why, "cgroup v2 /slurm/uid_0/job_5/step_0/task_0:") == why, "%s", why);

    /* usage over the limit: nothing left, not a wrapped-around huge number */
    put_("cg/slurm/uid_0/job_5/step_0/task_0/memory.current", "1500000000\n");
    CHECK_EQ_INT(avail_(NULL, 0), 0);
    drop_tree_();
}

static void test_memory_cgroup_v1_hybrid(void) {
    fresh_tree_("v1");
    put_("proc/self/cgroup", "9:pids:/\n4:cpuacct,memory:/slurm/job_7/step_batch\n0::/\n");
    put_("cg/unified/cgroup.procs", "");            /* hybrid: v2 without the memory controller */
    put_("cg/memory/memory.limit_in_bytes", "9223372036854771712\n");   /* root: no limit */
    put_("cg/memory/memory.usage_in_bytes", "5000000000\n");
    put_("cg/memory/slurm/job_7/memory.limit_in_bytes", "1073741824\n");
    put_("cg/memory/slurm/job_7/memory.usage_in_bytes", "104857600\n");
    put_("cg/memory/slurm/job_7/memory.stat", "cache 1\ninactive_file 5\ntotal_inactive_file 4194304\n");
    put_("cg/memory/slurm/job_7/step_batch/memory.limit_in_bytes", "9223372036854771712\n");
    char why[300];
    size_t got = avail_(why, sizeof why);
    CHECK_EQ_INT(got, 1073741824ULL - (104857600ULL - 4194304ULL));
    CHECKF(strstr(why, "cgroup v1 /slurm/job_7:") == why, "%s", why);
    drop_tree_();
}

static void test_memory_namespaced_cgroup_path(void) {
    /* In a container /proc/self/cgroup names the host path, the mount is the container's own. */
    fresh_tree_("ns");
    put_("proc/self/cgroup", "0::/system.slice/docker-abc.scope\n");
    put_("cg/cgroup.controllers", "memory\n");
    put_("cg/memory.max", "536870912\n");
    put_("cg/memory.current", "0\n");
    char why[300];
    CHECK_EQ_INT(avail_(why, sizeof why), 536870912);
    CHECKF(strstr(why, "cgroup v2 /:") == why, "%s", why);
    drop_tree_();
}

static void test_memory_without_limit_is_memavailable(void) {
    fresh_tree_("none");
    put_("proc/self/cgroup", "0::/user.slice\n");
    put_("cg/cgroup.controllers", "memory\n");
    put_("cg/user.slice/memory.max", "max\n");
    char why[300];
    CHECK_EQ_INT(avail_(why, sizeof why), 8388608ULL * 1024);
    CHECKF(strstr(why, "MemAvailable 8192.0 MiB (no cgroup memory limit)") != NULL, "%s", why);

    /* a limit above MemAvailable: the machine is the tighter bound */
    put_("cg/user.slice/memory.max", "17179869184\n");
    put_("cg/user.slice/memory.current", "0\n");
    CHECK_EQ_INT(avail_(why, sizeof why), 8388608ULL * 1024);
    CHECKF(strstr(why, "below the cgroup v2 /user.slice headroom") != NULL, "%s", why);

    /* nothing readable at all: 0 = unknown */
    put_("proc/meminfo", "MemTotal: 1 kB\n");
    put_("cg/user.slice/memory.max", "max\n");
    CHECK_EQ_INT(avail_(why, sizeof why), 0);
    CHECKF(strstr(why, "unknown") != NULL, "%s", why);
    drop_tree_();
}

static void test_memory_plan_for_another_node(void) {
    fresh_tree_("plan");
    put_("proc/self/cgroup", "0::/\n");
    char why[300];
    setenv("T5_PLAN_NODE_MEMORY_MB", "3000", 1);
    CHECK_EQ_INT(avail_(why, sizeof why), 3000ULL * 1048576);
    CHECKF(strstr(why, "T5_PLAN_NODE_MEMORY_MB=3000") == why, "%s", why);
    CHECK_EQ_INT(resources_memory_available(NULL, 0), 3000ULL * 1048576);
    setenv("T5_PLAN_NODE_MEMORY_MB", "lots", 1);   /* not a number: this machine's own numbers */
    CHECK_EQ_INT(avail_(why, sizeof why), 8388608ULL * 1024);
    unsetenv("T5_PLAN_NODE_MEMORY_MB");
    CHECK_EQ_INT(avail_(why, sizeof why), 8388608ULL * 1024);
    drop_tree_();
}

static void test_memory_this_machine(void) {
    char why[300];
    size_t got = resources_memory_available(why, sizeof why);
    size_t machine = mem_available_bytes();
    CHECKF(got > 0 && got <= machine, "%zu vs MemAvailable %zu (%s)", got, machine, why);
    printf("  this machine: %.1f MiB, %s\n", got / MiB, why);
}

int main(void) {
    RUN(test_threads_from_slurm_cpus_per_task);
    RUN(test_threads_from_affinity_mask);
    RUN(test_threads_ignore_bad_slurm_value);
    RUN(test_memory_cgroup_v2_limit_on_ancestor);
    RUN(test_memory_cgroup_v1_hybrid);
    RUN(test_memory_namespaced_cgroup_path);
    RUN(test_memory_without_limit_is_memavailable);
    RUN(test_memory_plan_for_another_node);
    RUN(test_memory_this_machine);
    return TEST_EXIT();
}
