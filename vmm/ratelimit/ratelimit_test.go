package ratelimit

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(2, time.Second)
	l.now = func() time.Time { return now }
	for i, want := range []bool{true, true, false, false} {
		if ok, _ := l.Allow(); ok != want {
			t.Fatalf("event %d: allowed=%v, want %v", i, ok, want)
		}
	}
	now = now.Add(time.Second)
	ok, dropped := l.Allow()
	if !ok || dropped != 2 {
		t.Fatalf("after interval: ok=%v dropped=%d, want true 2", ok, dropped)
	}
}
