package ratelimit

import (
	"bytes"
	"log/slog"
	"strings"
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

func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := NewHandler(base.Handler(), 3, time.Hour)
	now := time.Unix(0, 0)
	h.l.now = func() time.Time { return now }
	log := slog.New(h).With("dev", "x")
	for i := 0; i < 1000; i++ {
		log.Debug("guest wrote garbage", "i", i)
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("%d lines logged for 1000 events, want 3:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "dev=x") {
		t.Fatalf("attributes lost:\n%s", buf.String())
	}
	now = now.Add(time.Hour)
	log.Debug("later")
	if !strings.Contains(buf.String(), "suppressed=997") {
		t.Fatalf("no suppressed count after the interval:\n%s", buf.String())
	}
}
