#!/bin/sh
# A worker that appends "ready PID" to $SIGNAL_LOG once its traps are set, then
# "PID got SIGNAL" for the first of TERM, INT, USR1 or HUP it receives, and exits 0.
# For tests/reliability.rs: which signal reached it, and from whom no matter.
for sig in TERM INT USR1 HUP; do
    trap "echo \"$$ got $sig\" >> \"\$SIGNAL_LOG\"; exit 0" $sig
done
echo "ready $$" >> "$SIGNAL_LOG"
while :; do
    # In the background, so that a trap runs at once, not after the sleep.
    sleep 0.05 &
    wait $!
done
