#!/bin/bash
# Throughput with 1,000,000 jobs queued vs an empty server (qserver): put-50 and cycle,
# a fresh server per repetition, conditions interleaved.
LG=/work/shared/loadgen/bin/loadgen
cd /work/main
for rep in 1 2 3; do
  for queued in 0 1000000; do
    taskset -c 0 python -m qserver -l 127.0.0.1 -p 17100 & pid=$!; sleep 0.8
    if [ $queued -gt 0 ]; then taskset -c 1 $LG fill --port 17100 --jobs $queued --size 100 --tube backlog >/dev/null 2>&1; fi
    c=$(taskset -c 1 $LG cycle --port 17100 --producers 10 --workers 10 --seconds 5 --warmup 1 --tube cyc --server-pid $pid 2>&1 | tail -1)
    p=$(taskset -c 1 $LG put --port 17100 --conns 50 --seconds 5 --warmup 1 --tube puts --server-pid $pid 2>&1 | tail -1)
    echo "rep=$rep queued=$queued | $c"
    echo "rep=$rep queued=$queued | $p"
    kill $pid; wait $pid 2>/dev/null
  done
done
