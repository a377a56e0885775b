#!/usr/bin/env bash
# The communicator's timeout path under mpirun: rank 1 withholds an all_reduce; a waiting rank
# must fail with an error naming the operation, communicator, rank and step within a few seconds
# of the 2 s deadline, and the job must end with a non-zero status instead of hanging.
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
# Every rank but 1 times out; the first to do so ends the job (MPI_Abort), possibly before the
# others print, so any of them may be the one that reports.
echo "$out" | grep -Eq "all_reduce on 'world' \(mpi, rank [02-9][0-9]* of $ranks\) at step 7: timed out after 2 s" ||
  fail "no waiting rank reported the named timeout"
[ "$elapsed" -lt 30 ] || fail "took ${elapsed} s to fail"
echo "PASS: failed with the named error in ${elapsed} s (status $status)"
