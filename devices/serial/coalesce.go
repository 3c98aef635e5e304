package serial

import (
	"io"
	"log/slog"
	"sync"
	"time"
)

// coalescer buffers console output so the host sees one write per line (or
// per 4 KiB, or per few milliseconds of quiet), not one per guest byte.
type coalescer struct {
	mu      sync.Mutex
	w       io.Writer
	buf     []byte
	timer   *time.Timer
	armed   bool
	dropped uint64
	failed  bool
	log     *slog.Logger
}

func newCoalescer(w io.Writer, log *slog.Logger) *coalescer {
	c := &coalescer{w: w, buf: make([]byte, 0, flushAt), log: log}
	c.timer = time.AfterFunc(time.Hour, c.Flush)
	c.timer.Stop()
	return c
}

// WriteByte buffers b; it never fails (host write errors are counted).
func (c *coalescer) WriteByte(b byte) error {
	c.mu.Lock()
	c.buf = append(c.buf, b)
	if b == '\n' || len(c.buf) >= flushAt {
		c.flushLocked()
	} else if !c.armed {
		c.armed = true
		c.timer.Reset(flushDelay)
	}
	c.mu.Unlock()
	return nil
}

func (c *coalescer) Flush() {
	c.mu.Lock()
	c.flushLocked()
	c.mu.Unlock()
}

func (c *coalescer) flushLocked() {
	if c.armed {
		c.timer.Stop()
		c.armed = false
	}
	if len(c.buf) == 0 {
		return
	}
	if _, err := c.w.Write(c.buf); err != nil {
		c.dropped += uint64(len(c.buf))
		if !c.failed {
			c.failed = true
			c.log.Warn("console output lost", "err", err)
		}
	}
	c.buf = c.buf[:0]
}

func (c *coalescer) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}
