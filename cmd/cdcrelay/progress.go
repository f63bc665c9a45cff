package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/cdcrelay/cdcrelay/internal/relay"
)

// rateWindow measures a rate over the last span of samples: the progress
// arrives in chunk-sized steps, so the rate between two polls is noise,
// and the rate since the start hides a change of pace.
type rateWindow struct {
	span    time.Duration
	samples []rateSample
}

type rateSample struct {
	at   time.Time
	done int64
}

func (w *rateWindow) add(at time.Time, done int64) {
	w.samples = append(w.samples, rateSample{at, done})
	// Keep one sample older than the span, so the window covers all of it.
	for len(w.samples) > 2 && at.Sub(w.samples[1].at) >= w.span {
		w.samples = w.samples[1:]
	}
}

// rate is rows per second over the window; ok is false until the samples
// span at least a fifth of the window (no figure is better than a wild one).
func (w *rateWindow) rate() (perSec float64, ok bool) {
	if len(w.samples) < 2 {
		return 0, false
	}
	first, last := w.samples[0], w.samples[len(w.samples)-1]
	d := last.at.Sub(first.at)
	if d < w.span/5 {
		return 0, false
	}
	return float64(last.done-first.done) / d.Seconds(), true
}

// progress shows a backfill's progress: a bar on a terminal, otherwise a
// plain line every interval (logs and pipes get no carriage returns).
type progress struct {
	w        io.Writer
	table    string
	bar      *progressbar.ProgressBar // nil: not a terminal
	rate     rateWindow
	interval time.Duration
	lastLine time.Time
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, table string, tty bool) *progress {
	p := &progress{w: w, table: table, rate: rateWindow{span: 10 * time.Second}, interval: 5 * time.Second}
	if tty {
		p.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(table),
			progressbar.OptionShowCount(),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// update shows st as of now.
func (p *progress) update(st relay.BackfillState, now time.Time) {
	p.rate.add(now, st.Done)
	rateText, eta := "measuring rate", ""
	if r, ok := p.rate.rate(); ok {
		rateText = fmt.Sprintf("%.0f rows/s", r)
		if r > 0 && st.Total > st.Done {
			eta = ", ETA " + (time.Duration(float64(st.Total-st.Done) / r * float64(time.Second))).Round(time.Second).String()
		}
	}
	if p.bar != nil {
		if st.Total > 0 {
			p.bar.ChangeMax64(st.Total)
		}
		p.bar.Describe(fmt.Sprintf("%s  %s%s", p.table, rateText, eta))
		_ = p.bar.Set64(st.Done)
		return
	}
	if !p.lastLine.IsZero() && now.Sub(p.lastLine) < p.interval {
		return
	}
	p.lastLine = now
	line := fmt.Sprintf("backfill %s: %d", p.table, st.Done)
	if st.Total > 0 {
		line += fmt.Sprintf("/%d rows (%.1f%%)", st.Total, 100*float64(st.Done)/float64(max(st.Total, st.Done)))
	} else {
		line += " rows"
	}
	fmt.Fprintf(p.w, "%s, %s%s\n", line, rateText, eta)
}

// close removes the bar; the caller prints the outcome.
func (p *progress) close() {
	if p.bar != nil {
		_ = p.bar.Finish()
		_ = p.bar.Close()
	}
}

// averageRate is the whole backfill's rate, from the relay's own times.
func averageRate(st relay.BackfillState) string {
	if st.Finished.IsZero() || !st.Finished.After(st.Started) {
		return ""
	}
	d := st.Finished.Sub(st.Started)
	return fmt.Sprintf(" in %s (%.0f rows/s)", d.Round(100*time.Millisecond), float64(st.Done)/d.Seconds())
}
