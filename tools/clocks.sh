# Sourced by the GPU machine's scripts (abrun.sh, devfinal.sh): the SM clock, power, temperature
# and clock-event reasons every 200 ms while a bench runs (streaming weights at full bandwidth
# can take an H200 to its power limit, which lowers the clock: docs/perf.md).
#   clocks_start FILE; ...; clocks_stop; echo "$(clocks_summary FILE)"

clocks_start() {
	nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader,nounits -lms 200 > "$1" 2> /dev/null &
	clocks_pid=$!
}

clocks_stop() { kill "$clocks_pid" 2> /dev/null; }

# "SM MHz min/median/max, W max, throttled samples: MIN/MED/MAX, W, T/N". Throttled: samples with
# a clock-event reason other than idle (0x1), e.g. 0x4, the power cap.
clocks_summary() {
	echo "SM MHz min/median/max, W max, throttled samples: $(sort -t, -k1n "$1" |
		awk -F', *' '{ c[NR] = $1; if ($2 > w) w = $2; if ($4 != "" && $4 !~ /^0x0+[01]$/) th++ } END { if (NR) printf "%d/%d/%d, %.0f, %d/%d", c[1], c[int((NR + 1) / 2)], c[NR], w, th, NR }')"
}
