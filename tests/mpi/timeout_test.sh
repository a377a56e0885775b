#!/usr/bin/env bash
# The communicator's timeout path under mpirun: rank 1 withholds an all_reduce; rank 0 must fail
# with an error naming the operation, communicator, rank and step within a few seconds of the 2 s
# deadline, and the job must end with a non-zero status instead of hanging.
#   timeout_test.sh <mpirun> <hetmoe_mpi_tests> <ranks>
set -u
mpirun=$1 bin=$2 ranks=$3
start=$(date +%s)
out=$(HETMOE_TEST_WITHHOLD=1 timeout 120 "$mpirun" --oversubscribe -np "$ranks" "$bin" 2>&1)
status=$?
elapsed=$(( $(date +%s) - start ))
echo "$out" | grep -v "^\s*$" | head -20
fail() { echo "FAIL: $*"; exit 1; }
[ "$status" -ne 0 ] || fail "the job exited 0 although a rank withheld a collective"
[ "$status" -ne 124 ] || fail "the job hung (killed by timeout after 120 s)"
echo "$out" | grep -q "all_reduce on 'world' (mpi, rank 0 of $ranks) at step 7: timed out after 2 s" ||
  fail "rank 0 did not report the named timeout"
[ "$elapsed" -lt 30 ] || fail "took ${elapsed} s to fail"
echo "PASS: failed with the named error in ${elapsed} s (status $status)"
