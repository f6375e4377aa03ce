#!/bin/sh
# pipeline: a real three-stage shell pipeline.
#
#   sh pipeline.sh                      (root: waits for the pipeline)
#   |- yes lpm
#   |- cat -n
#   `- python3 pipeline_check.py        (checks every line is "<n>\tlpm" with
#                                        n = 1, 2, 3, ... and reports)
#
# Data is always in flight in both pipes (yes and cat block on full pipes;
# the checker reads slowly). On SIGTERM the root forwards it to the checker,
# which reads 5000 more lines, writes the result and exits; yes and cat then
# die of SIGPIPE and the root exits with the checker's status.
set -u
dir=$(dirname "$0")
work=$(dirname "$ZDTM_RESULT")
checker=
trap 'kill -TERM $checker' TERM
yes lpm | cat -n | python3 "$dir/pipeline_check.py" &
checker=$!
# The trap can forward SIGTERM now: let the checker report ready.
: > "$work/pipeline.armed"
while :; do
	wait "$checker"
	status=$?
	# Above 128: the trap interrupted wait (or the checker died of a signal).
	[ "$status" -le 128 ] && break
	if ! kill -0 "$checker" 2>/dev/null; then
		wait "$checker"
		status=$?
		break
	fi
done
wait
exit "$status"
