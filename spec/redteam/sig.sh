#!/bin/bash
# kill the CLI / repl mid-call, then look for rduck-worker processes of this build
WT=$(cd "${RD_SOURCE_DIR:-.}" && pwd)
workers() { for p in /proc/[0-9]*; do l=$(readlink $p/exe 2>/dev/null); case "$l" in $WT/build/rduck-worker*) echo -n "${p#/proc/} ";; esac; done; }
for level in ${LEVELS:-strict balanced relaxed none}; do
  D=${RD_REDTEAM_DIR:-/tmp/rdh}/exec/tools-$level
  for sig in TERM INT KILL HUP; do
    $WT/build/rduck run slow --tools $D --data ${RD_REDTEAM_DIR:-/tmp/rdh}/exec/cli-$level --params '{"ms":4000}' >/dev/null 2>&1 &
    pid=$!
    sleep 0.7
    kill -$sig $pid
    t0=$(date +%s%N); wait $pid; rc=$?; t1=$(date +%s%N)
    sleep 0.3
    w=$(workers)
    echo "$level run SIG$sig rc=$rc exit_after=$(( (t1-t0)/1000000 ))ms workers=[${w}]"
  done
  # repl under load: several submits then SIGTERM
  ( printf 'for i=1,8 do engine:submit("slow", {ms=5000}) end\n'; sleep 3 ) | $WT/build/rduck repl --tools $D --data ${RD_REDTEAM_DIR:-/tmp/rdh}/exec/repl-$level >/dev/null 2>&1 &
  sleep 1.2
  rp=$(pgrep -P $! rduck || echo $!)
  for p in $(pgrep -f "rduck repl --tools $D"); do kill -TERM $p; done
  sleep 1.5
  echo "$level repl SIGTERM workers=[$(workers)]"
done
