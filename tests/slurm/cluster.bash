# tests/slurm/cluster.bash: a private Slurm cluster for one test script (sourced after
# tests/e2e/lib.bash).
#
#   cluster_start [VAR=VALUE...]   start munged, slurmctld, slurmd (jobs/slurm/local-cluster.sh)
#                                  under a temp directory, export SLURM_CONF; the EXIT/INT/TERM
#                                  trap stops them (by pid file) and removes the directory.
#                                  Settings are passed as environment (T5_CLUSTER_MEM_MB=...).
#   watchdog SECONDS               the whole script ends (trap included) after SECONDS
#   job_field JOB FIELD            a field of `scontrol show job -o JOB` (JobState, Restarts, ...)
#   wait_job JOB SECONDS STATE...  wait until JobState is one of STATE; 0 if so, 1 on timeout
#   wait_for SECONDS CMD...        wait until CMD succeeds; 0 if so, 1 on timeout
#   rank_pid JOB RANK EXE          pid of task RANK of job JOB running EXE (from /proc), or empty
#   cluster_log_tail               the daemons' log tails (for failure messages)
# Needs root and Debian's slurm-wlm and munge; cluster_start prints FAIL and exits otherwise.

CLUSTER_DIR=""
WATCHDOG_PID=""
CLUSTER_CLEANUP_EXTRA=""

cluster_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$WATCHDOG_PID" ]; then kill "$WATCHDOG_PID" 2>/dev/null; wait "$WATCHDOG_PID" 2>/dev/null; fi
    if [ -n "$CLUSTER_DIR" ]; then
        bash "$ROOT/jobs/slurm/local-cluster.sh" stop "$CLUSTER_DIR" >/dev/null 2>&1
        rm -rf "$CLUSTER_DIR"
    fi
    if [ -n "$CLUSTER_CLEANUP_EXTRA" ]; then eval "$CLUSTER_CLEANUP_EXTRA"; fi
    exit "$rc"
}

cluster_start() {
    if [ "$(id -u)" -ne 0 ] || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then
        fail slurm_cluster_start "needs root and the slurm-wlm and munge packages (apt-get install -y slurm-wlm munge)"
        exit 1
    fi
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/t5slurm.XXXXXX")
    trap cluster_cleanup EXIT
    trap 'echo "FAIL interrupted: stopping the cluster"; exit 1' INT TERM
    local out
    if ! out=$(env "$@" timeout 60 bash "$ROOT/jobs/slurm/local-cluster.sh" start "$CLUSTER_DIR" 2>&1); then
        fail slurm_cluster_start "$out"
        exit 1
    fi
    export SLURM_CONF=$CLUSTER_DIR/etc/slurm.conf
    export PATH=$PATH:/usr/sbin
}

watchdog() {
    local secs=$1 me=$$
    # the sleep is killed with the watchdog, so no stray process keeps the test's output open
    ( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
      sleep "$secs" & sp=$!
      wait "$sp" || exit 0
      echo "FAIL watchdog: the test ran over ${secs} s"; kill -TERM "$me" ) &
    WATCHDOG_PID=$!
}

job_field() {
    timeout 10 scontrol show job -o "$1" 2>/dev/null | head -1 | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

wait_job() {
    local job=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs)) st
    while [ "$SECONDS" -lt "$deadline" ]; do
        st=$(job_field "$job" JobState)
        for s in "$@"; do [ "$st" = "$s" ] && return 0; done
        sleep 0.5
    done
    return 1
}

wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    while [ "$SECONDS" -lt "$deadline" ]; do
        "$@" && return 0
        sleep 0.3
    done
    return 1
}

rank_pid() {  # JOB RANK EXE
    local job=$1 rank=$2 exe p
    exe=$(readlink -f "$3")
    for p in /proc/[0-9]*; do
        [ "$(readlink -f "$p/exe" 2>/dev/null)" = "$exe" ] || continue
        if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "SLURM_JOB_ID=$job" &&
           tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "SLURM_PROCID=$rank"; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

cluster_log_tail() {
    tail -n 5 "$CLUSTER_DIR/log/slurmctld.log" "$CLUSTER_DIR/log/slurmd.log" 2>/dev/null
}
