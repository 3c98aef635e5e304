package vmm

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Lines Linux prints that end a VM's life: a panic (kernel/panic.c, at
// KERN_EMERG, so even "quiet" shows it) and a halt or power-off that found
// no way to stop the machine (kernel/reboot.c: "System halted", "Power
// down").
var (
	panicMarker = []byte("Kernel panic - not syncing")
	haltMarkers = [][]byte{[]byte("reboot: System halted"), []byte("reboot: Power down")}
)

// consoleWatch looks at each console line's start for the markers above. It
// keeps a fixed buffer and allocates only when a marker is seen.
type consoleWatch struct {
	onPanic func(string)
	onHalt  func()
	line    [160]byte
	n       int
}

func (c *consoleWatch) feed(b byte) {
	if b == '\n' {
		c.check()
		c.n = 0
		return
	}
	if c.n < len(c.line) {
		c.line[c.n] = b
		c.n++
	}
}

func (c *consoleWatch) check() {
	l := c.line[:c.n]
	if i := bytes.Index(l, panicMarker); i >= 0 && c.onPanic != nil {
		c.onPanic(string(bytes.TrimRight(l[i:], "\r")))
	}
	for _, m := range haltMarkers {
		if bytes.Contains(l, m) && c.onHalt != nil {
			c.onHalt()
		}
	}
}

// Console output buffering: what the guest writes is passed to the host in
// chunks of a line (or flushAt bytes, or what came within flushDelay), by
// a goroutine of its own, so a host that stops reading (a stalled pipe)
// never stalls a vCPU. At most maxPending bytes wait; beyond that, output
// is dropped and counted.
const (
	flushAt    = 4096
	flushDelay = 5 * time.Millisecond
	maxPending = 256 << 10
)

// consoleOut is the host side of the guest console.
type consoleOut struct {
	w     io.Writer
	log   *slog.Logger
	watch consoleWatch

	mu      sync.Mutex
	max     int
	before  []byte    // output written before a redirect, for oldW
	oldW    io.Writer // the writer before a redirect
	buf     []byte
	spare   []byte
	dropped uint64
	urgent  bool
	failed  bool

	wake    chan struct{}
	closing chan struct{}
	done    chan struct{}
	started bool
}

func newConsoleOut(w io.Writer, max int, log *slog.Logger) *consoleOut {
	if w == nil {
		w = io.Discard
	}
	if max <= 0 {
		max = maxPending
	}
	return &consoleOut{w: w, max: max, log: log, buf: make([]byte, 0, flushAt), spare: make([]byte, 0, flushAt),
		wake: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{})}
}

// WriteByte takes one byte from the UART. It never blocks on the host.
func (c *consoleOut) WriteByte(b byte) error {
	c.mu.Lock()
	c.watch.feed(b)
	if len(c.buf) >= c.max {
		c.dropped++
		c.mu.Unlock()
		return nil
	}
	wasEmpty := len(c.buf) == 0
	c.buf = append(c.buf, b)
	urgent := b == '\n' || len(c.buf) >= flushAt
	if urgent {
		c.urgent = true
	}
	c.mu.Unlock()
	if wasEmpty || urgent {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// start runs the writer goroutine; stop ends it.
func (c *consoleOut) start() {
	c.started = true
	go func() {
		defer close(c.done)
		defer func() {
			// The writer belongs to the host; its panic must not take the
			// VM down with it. What is pending is lost and counted.
			if r := recover(); r != nil {
				c.log.Error("console writer panicked", "panic", r)
				c.mu.Lock()
				c.dropped += uint64(len(c.buf))
				c.buf = c.buf[:0]
				c.mu.Unlock()
			}
		}()
		c.run()
	}()
}

func (c *consoleOut) run() {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-c.wake:
		case <-c.closing:
			c.flush()
			return
		}
		c.mu.Lock()
		urgent := c.urgent
		c.mu.Unlock()
		if !urgent {
			// A partial line: give the rest a moment to arrive.
			t.Reset(flushDelay)
			select {
			case <-t.C:
			case <-c.wake:
				t.Stop()
			case <-c.closing:
				t.Stop()
				c.flush()
				return
			}
		}
		c.flush()
	}
}

// redirect sends the output from now on to w; what came before still
// goes to the old writer.
func (c *consoleOut) redirect(w io.Writer) {
	c.mu.Lock()
	c.before, c.oldW = append(c.before, c.buf...), c.w
	c.buf, c.w = c.buf[:0], w
	c.urgent = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// flush writes everything pending. The lock is not held while writing.
func (c *consoleOut) flush() {
	c.mu.Lock()
	before, oldW := c.before, c.oldW
	c.before = nil
	c.mu.Unlock()
	if len(before) > 0 {
		_, _ = oldW.Write(before)
	}
	for {
		c.mu.Lock()
		if len(c.buf) == 0 {
			c.urgent = false
			c.mu.Unlock()
			return
		}
		out := c.buf
		c.buf, c.spare = c.spare[:0], nil
		c.urgent = false
		w := c.w
		c.mu.Unlock()

		_, err := w.Write(out)

		c.mu.Lock()
		if err != nil {
			c.dropped += uint64(len(out))
			if !c.failed {
				c.failed = true
				c.log.Warn("guest console output lost", "err", err)
			}
		}
		if cap(out) <= 4*flushAt {
			c.spare = out[:0]
		}
		if c.spare == nil {
			c.spare = make([]byte, 0, flushAt)
		}
		c.mu.Unlock()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.discard()
			return
		}
	}
}

// discard drops what is pending, counting it.
func (c *consoleOut) discard() {
	c.mu.Lock()
	c.dropped += uint64(len(c.buf))
	c.buf = c.buf[:0]
	c.mu.Unlock()
}

// deadliner is a writer whose blocked writes can be cut short
// (*os.File on a pollable descriptor).
type deadliner interface {
	SetWriteDeadline(time.Time) error
}

// stop flushes what is pending and ends the writer, waiting at most drain
// for the host to take the output. If the host writer cannot be given a
// deadline and stays blocked beyond that, the goroutine is left to finish
// its one write on its own; what it held is counted as dropped.
func (c *consoleOut) stop(drain time.Duration) {
	if !c.started {
		return
	}
	select {
	case <-c.closing:
	default:
		close(c.closing)
	}
	deadline := time.Now().Add(drain)
	if d, ok := c.w.(deadliner); ok {
		_ = d.SetWriteDeadline(deadline)
		defer d.SetWriteDeadline(time.Time{})
	}
	t := time.NewTimer(time.Until(deadline) + time.Second)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.log.Warn("host console writer still blocked; giving up on the rest of the output")
		c.discard()
	}
}

// Dropped is how many bytes of guest output never reached the host.
func (c *consoleOut) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}
