package vmm

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestConsoleWatchSeesPanicAndHalt(t *testing.T) {
	var panics []string
	halts := 0
	w := consoleWatch{onPanic: func(l string) { panics = append(panics, l) }, onHalt: func() { halts++ }}
	in := "[    1.0] ok\r\n[    2.5] Kernel panic - not syncing: sysrq triggered crash\r\nafter\n" +
		strings.Repeat("x", 500) + "\n[   3.0] reboot: System halted\r\n"
	for i := 0; i < len(in); i++ {
		w.feed(in[i])
	}
	if len(panics) != 1 || panics[0] != "Kernel panic - not syncing: sysrq triggered crash" {
		t.Fatalf("panic lines = %q", panics)
	}
	if halts != 1 {
		t.Fatalf("halt lines seen %d times, want 1", halts)
	}
}

// syncBuf is a goroutine-safe bytes.Buffer.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingWriter records the size of each write.
type countingWriter struct {
	syncBuf
	writes []int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, len(p))
	c.mu.Unlock()
	return c.syncBuf.Write(p)
}

func writeString(c *consoleOut, s string) {
	for i := 0; i < len(s); i++ {
		_ = c.WriteByte(s[i])
	}
}

func TestConsoleOutCoalescesLines(t *testing.T) {
	w := &countingWriter{}
	c := newConsoleOut(w, 0, slog.New(slog.DiscardHandler))
	c.start()
	writeString(c, "first line\nsecond line\n")
	writeString(c, "partial")
	time.Sleep(100 * time.Millisecond) // more than flushDelay
	c.stop(time.Second)
	if got := w.String(); got != "first line\nsecond line\npartial" {
		t.Fatalf("output %q", got)
	}
	w.mu.Lock()
	n := len(w.writes)
	w.mu.Unlock()
	if n > 4 {
		t.Fatalf("%d host writes for 3 pieces of output: not coalesced", n)
	}
	if c.Dropped() != 0 {
		t.Fatalf("dropped %d", c.Dropped())
	}
}

// blockedWriter never returns from Write until released.
type blockedWriter struct {
	release chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (b *blockedWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	return len(p), nil
}

// TestConsoleOutStalledHost: a host writer that stops draining neither
// blocks the guest side nor the end of the run; what cannot be delivered
// is counted.
func TestConsoleOutStalledHost(t *testing.T) {
	bw := &blockedWriter{release: make(chan struct{}), entered: make(chan struct{})}
	defer close(bw.release)
	c := newConsoleOut(bw, 0, slog.New(slog.DiscardHandler))
	c.start()
	writeString(c, "line\n")
	<-bw.entered
	done := make(chan struct{})
	go func() {
		// Far more than the buffer holds: must return promptly.
		big := bytes.Repeat([]byte("0123456789abcde\n"), 3*maxPending/16)
		for _, b := range big {
			_ = c.WriteByte(b)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest side blocked on a stalled host")
	}
	start := time.Now()
	c.stop(200 * time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop took %s with a stalled host", d)
	}
	if c.Dropped() < 2*maxPending {
		t.Fatalf("dropped %d bytes, want at least %d", c.Dropped(), 2*maxPending)
	}
}

// TestConsoleOutDeadline: with a pollable host writer (a pipe nobody
// reads), stop cuts the blocked write short and the writer goroutine ends.
func TestConsoleOutDeadline(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c := newConsoleOut(w, 0, slog.New(slog.DiscardHandler))
	c.start()
	for i := 0; i < 200; i++ { // 200 KiB: more than a pipe holds
		writeString(c, strings.Repeat("y", 1023)+"\n")
	}
	time.Sleep(50 * time.Millisecond)
	c.stop(100 * time.Millisecond)
	select {
	case <-c.done:
	default:
		t.Fatal("writer goroutine still running after stop")
	}
	if c.Dropped() == 0 {
		t.Fatal("nothing counted as dropped")
	}
	// The pipe still works for whoever writes next (the JSON report).
	go io.Copy(io.Discard, r)
	if _, err := w.Write([]byte("after\n")); err != nil {
		t.Fatalf("write after stop: %v", err)
	}
}

// FuzzConsoleWatch feeds guest console bytes to the line watcher: no
// panic, and a panic line anywhere in the input is reported.
func FuzzConsoleWatch(f *testing.F) {
	f.Add([]byte("[ 1.0] Kernel panic - not syncing: x\r\n"))
	f.Add([]byte("reboot: System halted\n\n\x00\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		panics := 0
		w := consoleWatch{onPanic: func(string) { panics++ }, onHalt: func() {}}
		for _, b := range in {
			w.feed(b)
		}
		w.feed('\n')
		// A line with the marker within the watcher's 160-byte window.
		for _, l := range bytes.Split(in, []byte("\n")) {
			if i := bytes.Index(l, panicMarker); i >= 0 && i+len(panicMarker) <= 160 && panics == 0 {
				t.Fatalf("panic line %q not reported", l)
			}
		}
	})
}

// TestConsoleOutRedirect: what the guest wrote before the redirect goes to
// the first writer, what came after to the second, none of it lost.
func TestConsoleOutRedirect(t *testing.T) {
	before, after := &countingWriter{}, &countingWriter{}
	c := newConsoleOut(before, 0, slog.New(slog.DiscardHandler))
	c.start()
	writeString(c, "kernel: booting\ninit: no ports")
	c.redirect(after)
	writeString(c, "\ncommand output\n")
	c.stop(time.Second)
	if before.String() != "kernel: booting\ninit: no ports" || after.String() != "\ncommand output\n" {
		t.Fatalf("before %q, after %q", before.String(), after.String())
	}
}
