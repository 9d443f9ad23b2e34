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
