# tests/e2e/lib.bash: helpers for end-to-end tests (sourced, not run).
# pass NAME / fail NAME MSG print the lines tests/run.sh counts.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$ROOT/bin
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: ${2:-}"; }
check() {  # check NAME command...: PASS if the command succeeds
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name" "command failed: $*"; fi
}
tmpdir() { mktemp -d "${TMPDIR:-/tmp}/t5test.XXXXXX"; }
# latest_step RUN_DIR: the step RUN_DIR/ckpt/latest names (empty if none)
latest_step() { sed -n 's/^step_0*\([0-9]\)/\1/p' "$1/ckpt/latest" 2>/dev/null; }
wait_lines() {  # wait_lines FILE N: until FILE has N lines (60 s at most)
    for _ in $(seq 1 1200); do
        [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
        sleep 0.05
    done
    return 1
}
