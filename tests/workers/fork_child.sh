#!/bin/sh
# A worker that forks a child of its own (start_server's grandchild), writes the
# child's pid to $GRANDCHILD_PID_FILE (atomically, by rename), then becomes a plain
# `sleep`: TERM ends the worker, and the grandchild, which no one stops, lives on.
sleep 600 &
echo $! > "$GRANDCHILD_PID_FILE.tmp"
mv "$GRANDCHILD_PID_FILE.tmp" "$GRANDCHILD_PID_FILE"
exec sleep 600
