#!/bin/sh
# A worker that ignores SIGTERM (an ignored signal stays ignored across exec), for
# tests/reliability.rs: only SIGKILL, or another signal, ends it.
trap '' TERM
exec sleep 600
