package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

func printTable(out io.Writer, rs []result, kp *kafkaPerf) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tevents\trelay s\trelay ev/s\tpg_recvlogical ev/s\trelay/limit\trelay CPU s\tpeak RSS MB\tp50 ms\tp95 ms\tp99 ms\t")
	for _, r := range rs {
		rate, limit, ratio := "-", "-", "-"
		if r.relaySecs > 0 {
			rate = fmt.Sprintf("%.0f", float64(r.events)/r.relaySecs)
		}
		if r.latencyRun {
			rate = r.rateNote
		}
		if r.limitSecs > 0 {
			limit = fmt.Sprintf("%.0f", float64(r.events)/r.limitSecs)
			if r.relaySecs > 0 {
				ratio = fmt.Sprintf("%.2f", r.limitSecs/r.relaySecs)
			}
		}
		p50, p95, p99 := "-", "-", "-"
		if l := r.latency; l != nil {
			p50, p95, p99 = fmt.Sprintf("%.1f", float64(l.p50)/1e6), fmt.Sprintf("%.1f", float64(l.p95)/1e6), fmt.Sprintf("%.1f", float64(l.p99)/1e6)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%s\t%s\t%s\t%.2f\t%.1f\t%s\t%s\t%s\t\n",
			r.name, r.events, r.relaySecs, rate, limit, ratio, r.cpuSecs, r.peakRSSMB, p50, p95, p99)
	}
	if kp != nil {
		fmt.Fprintf(tw, "kafka ProducerPerformance (txn, 200 B)\t%d\t-\t%.0f\t-\t-\t-\t-\t-\t-\t-\t\n", kp.records, kp.rate)
	}
	tw.Flush()
}
