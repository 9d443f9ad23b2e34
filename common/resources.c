/* common/resources.c: see resources.h.
 *
 * Threads: SLURM_CPUS_PER_TASK is what the job asked for per task (srun and mpirun inside the
 * allocation both pass it on); without it the affinity mask is what this process may run on.
 *
 * Memory: the kernel enforces the tightest memory limit of the cgroup a process is in and of
 * every ancestor (Slurm puts the limit on the job's cgroup and the task in a child of it), so
 * each level from the process's cgroup up to the root of the hierarchy is read and the smallest
 * headroom wins. Usage counts page cache; its inactive part is reclaimed before the limit bites,
 * so it is not counted as used (inactive_file in memory.stat).
 */
#include "resources.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A cgroup v1 limit at or above this means "no limit" (the kernel reports ~2^63). */
#define V1_UNLIMITED (1ULL << 60)

static void say_(char *why, size_t whylen, const char *msg) {
    if (why && whylen) snprintf(why, whylen, "%s", msg);
}

/* Positive decimal integer with nothing after it but whitespace; 0 on anything else. */
static long parse_positive_(const char *s) {
    if (!s || !*s) return 0;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    while (*end == ' ' || *end == '\t' || *end == '\n') end++;
    if (errno || *end || v <= 0 || v > INT_MAX) return 0;
    return v;
}

/* CPUs in this process's affinity mask (any machine size), 0 if unknown. */
static int affinity_cpus_(void) {
    for (int ncpu = 1024; ncpu <= (1 << 20); ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set) return 0;
        size_t sz = CPU_ALLOC_SIZE(ncpu);
        CPU_ZERO_S(sz, set);
        if (sched_getaffinity(0, sz, set) == 0) {
            int n = CPU_COUNT_S(sz, set);
            CPU_FREE(set);
            return n;
        }
        CPU_FREE(set);
        if (errno != EINVAL) return 0;   /* EINVAL: the mask is larger than ncpu, grow it */
    }
    return 0;
}

int resources_default_threads(int ranks_on_node, char *why, size_t whylen) {
    char msg[160];
    const char *cpt = getenv("SLURM_CPUS_PER_TASK");
    const char *ignored = NULL;
    if (cpt && *cpt) {
        long v = parse_positive_(cpt);
        if (v > 0) {
            snprintf(msg, sizeof msg, "SLURM_CPUS_PER_TASK=%ld", v);
            say_(why, whylen, msg);
            return (int)v;
        }
        ignored = cpt;
    }
    if (ranks_on_node < 1) ranks_on_node = 1;
    int cpus = affinity_cpus_();
    const char *src = "affinity mask";
    if (cpus <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cpus = n > 0 ? (int)n : 1;
        src = "online CPUs (affinity mask unreadable)";
    }
    int t = cpus / ranks_on_node;
    if (t < 1) t = 1;
    int k = snprintf(msg, sizeof msg, "%s %d CPUs / %d rank%s", src, cpus, ranks_on_node,
                     ranks_on_node == 1 ? "" : "s");
    if (ignored && k > 0 && (size_t)k < sizeof msg)
        snprintf(msg + k, sizeof msg - (size_t)k, " (ignored SLURM_CPUS_PER_TASK='%.20s')", ignored);
    say_(why, whylen, msg);
    return t;
}

/* ---- memory ----------------------------------------------------------------------------- */

/* The first line of a small file, without the newline; 0 on success. */
static int read_line_(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *ok = fgets(buf, (int)n, f);
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = 0;
    return 0;
}

/* A file holding one unsigned number; 0 on success. "max" (v2: no limit) gives UINT64_MAX. */
static int read_u64_(const char *path, uint64_t *out) {
    char buf[64];
    if (read_line_(path, buf, sizeof buf)) return -1;
    if (!strcmp(buf, "max")) { *out = UINT64_MAX; return 0; }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno || end == buf || *end) return -1;
    *out = v;
    return 0;
}

/* Value of "key N" in a memory.stat file, 0 if absent. */
static uint64_t stat_field_(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    size_t kl = strlen(key);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, key, kl) && line[kl] == ' ') {
            v = strtoull(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static size_t meminfo_available_(const char *proc_root) {
    char path[4096];
    snprintf(path, sizeof path, "%s/meminfo", proc_root);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "MemAvailable:", 13)) { kb = (size_t)strtoull(line + 13, NULL, 10); break; }
    }
    fclose(f);
    return kb * 1024;
}

static int is_dir_(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct {
    int found;           /* a level with a limit was seen */
    uint64_t headroom;   /* smallest limit - usage over the levels with a limit */
    uint64_t limit;      /* the limit of that level */
    char where[512];     /* "cgroup v2 /slurm/job_5" */
} CgroupResult;

/* Walk from mount+path up to mount; v2 selects the file names. */
static void walk_cgroup_(const char *mount, const char *cgpath, int v2, CgroupResult *r) {
    char dir[4096];
    int n = snprintf(dir, sizeof dir, "%s%s", mount, cgpath);
    if (n < 0 || (size_t)n >= sizeof dir) return;
    /* In a cgroup namespace (containers) the path is the host's; the mount is already ours. */
    if (!is_dir_(dir)) snprintf(dir, sizeof dir, "%s", mount);
    size_t mlen = strlen(mount);
    for (;;) {
        size_t dl = strlen(dir);
        while (dl > mlen && dir[dl - 1] == '/') dir[--dl] = 0;
        char f[4200];
        uint64_t limit = 0, usage = 0;
        snprintf(f, sizeof f, "%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
        int have = read_u64_(f, &limit) == 0;
        if (have && limit != UINT64_MAX && !(!v2 && limit >= V1_UNLIMITED)) {
            snprintf(f, sizeof f, "%s/%s", dir, v2 ? "memory.current" : "memory.usage_in_bytes");
            if (read_u64_(f, &usage) != 0) usage = 0;
            snprintf(f, sizeof f, "%s/memory.stat", dir);
            uint64_t inactive = stat_field_(f, v2 ? "inactive_file" : "total_inactive_file");
            usage = inactive < usage ? usage - inactive : 0;
            uint64_t head = limit > usage ? limit - usage : 0;
            if (!r->found || head < r->headroom) {
                r->found = 1;
                r->headroom = head;
                r->limit = limit;
                const char *rel = dl > mlen ? dir + mlen : "/";
                snprintf(r->where, sizeof r->where, "cgroup %s %s", v2 ? "v2" : "v1", rel);
            }
        }
        if (dl <= mlen) break;
        char *slash = strrchr(dir + mlen, '/');
        if (!slash) break;
        *slash = 0;
    }
}

size_t resources_memory_available_at(const char *proc_root, const char *cgroup_root, char *why,
                                     size_t whylen) {
    const char *plan = getenv("T5_PLAN_NODE_MEMORY_MB");
    if (plan && *plan) {
        long mb = parse_positive_(plan);
        if (mb > 0) {
            char m[160];
            snprintf(m, sizeof m, "T5_PLAN_NODE_MEMORY_MB=%ld: planned for a node with %ld MiB", mb, mb);
            say_(why, whylen, m);
            return (size_t)mb * 1024 * 1024;
        }
    }
    size_t avail = meminfo_available_(proc_root);
    CgroupResult r = { 0, 0, 0, "" };
    char path[4096];
    snprintf(path, sizeof path, "%s/self/cgroup", proc_root);
    FILE *f = fopen(path, "r");
    if (f) {
        char line[4096];
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            /* "hierarchy-id:controller-list:path" */
            char *c1 = strchr(line, ':');
            if (!c1) continue;
            char *c2 = strchr(c1 + 1, ':');
            if (!c2) continue;
            *c1 = 0; *c2 = 0;
            const char *id = line, *ctrl = c1 + 1, *cg = c2 + 1;
            char mount[4096];
            if (!strcmp(id, "0") && !*ctrl) {
                /* v2: the unified hierarchy at the root (pure v2) or under unified/ (hybrid) */
                snprintf(mount, sizeof mount, "%s/cgroup.controllers", cgroup_root);
                if (access(mount, F_OK) == 0) snprintf(mount, sizeof mount, "%s", cgroup_root);
                else snprintf(mount, sizeof mount, "%s/unified", cgroup_root);
                walk_cgroup_(mount, cg, 1, &r);
            } else {
                int memory = 0;
                char list[256];
                snprintf(list, sizeof list, "%s", ctrl);
                for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                    if (!strcmp(tok, "memory")) memory = 1;
                if (!memory) continue;
                snprintf(mount, sizeof mount, "%s/memory", cgroup_root);
                walk_cgroup_(mount, cg, 0, &r);
            }
        }
        fclose(f);
    }
    char msg[700];
    if (r.found && (avail == 0 || r.headroom < avail)) {
        snprintf(msg, sizeof msg, "%s: limit %.1f MiB, %.1f MiB free (MemAvailable %.1f MiB)", r.where,
                 r.limit / 1048576.0, r.headroom / 1048576.0, avail / 1048576.0);
        say_(why, whylen, msg);
        return r.headroom > SIZE_MAX ? SIZE_MAX : (size_t)r.headroom;
    }
    if (avail) {
        if (r.found)
            snprintf(msg, sizeof msg, "MemAvailable %.1f MiB (below the %s headroom %.1f MiB)",
                     avail / 1048576.0, r.where, r.headroom / 1048576.0);
        else
            snprintf(msg, sizeof msg, "MemAvailable %.1f MiB (no cgroup memory limit)", avail / 1048576.0);
        say_(why, whylen, msg);
        return avail;
    }
    say_(why, whylen, "unknown (no MemAvailable in meminfo, no cgroup memory limit)");
    return 0;
}

size_t resources_memory_available(char *why, size_t whylen) {
    return resources_memory_available_at("/proc", "/sys/fs/cgroup", why, whylen);
}
