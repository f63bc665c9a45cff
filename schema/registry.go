package schema

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
)

// retry runs a request until it succeeds, fails for good, or the registry
// has been unreachable for Config.RetryFor. Only a missing answer (a
// network error, a timeout) and a 5xx or 429 answer are retried: any other
// answer is the registry's word. A timeout does not mean the request
// failed: every request here is a read or an idempotent registration, so
// sending it again is safe.
func (e *Encoder) retry(ctx context.Context, op string, fn func(context.Context) error) error {
	deadline := time.Now().Add(e.cfg.RetryFor)
	backoff := 100 * time.Millisecond
	for {
		err := fn(ctx)
		if e.cfg.Observe != nil {
			if transient(err) {
				e.cfg.Observe(op, err)
			} else {
				e.cfg.Observe(op, nil) // an answer: the registry is up
			}
		}
		if err == nil || !transient(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &UnavailableError{Op: op, Err: err}
		}
		e.log.Warn("schema registry request failed; retrying", "op", op, "err", err, "retry_in", min(backoff, left).String())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(backoff, left)):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// transient tells a missing or failed answer from the registry's word.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var re *sr.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode >= 500 || re.StatusCode == http.StatusTooManyRequests
	}
	return true
}
