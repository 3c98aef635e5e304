// Package ratelimit keeps guest-triggered log messages from flooding the
// host: a guest that hammers an unclaimed port must not fill the disk.
package ratelimit

import (
	"sync"
	"time"
)

// Limiter allows Burst events per Interval and counts the ones it drops.
type Limiter struct {
	Interval time.Duration
	Burst    int

	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed uint64
	now        func() time.Time
}

// New returns a limiter allowing burst events per interval.
func New(burst int, interval time.Duration) *Limiter {
	return &Limiter{Interval: interval, Burst: burst, now: time.Now}
}

// Allow reports whether an event may be logged now. When a new interval
// starts, it also returns how many events were dropped in the previous ones,
// so the caller can say so once.
func (l *Limiter) Allow() (ok bool, dropped uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	if t.Sub(l.start) >= l.Interval {
		l.start, l.n = t, 0
		dropped, l.suppressed = l.suppressed, 0
	}
	if l.n < l.Burst {
		l.n++
		return true, dropped
	}
	l.suppressed++
	return false, dropped
}
