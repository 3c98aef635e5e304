package vmm

import (
	"bytes"
	"io"
)

// panicMarker is the line prefix Linux prints when it panics (kernel/panic.c).
var panicMarker = []byte("Kernel panic - not syncing")

// consoleWatch passes console output through and reports kernel panic lines.
// It looks only at line starts it has buffered, so it costs a scan of each
// chunk and no allocation unless a panic is seen.
type consoleWatch struct {
	w       io.Writer
	onPanic func(string)
	line    [160]byte
	n       int
}

func newConsoleWatch(w io.Writer, onPanic func(string)) *consoleWatch {
	return &consoleWatch{w: w, onPanic: onPanic}
}

func (c *consoleWatch) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\n' {
			c.check()
			c.n = 0
			continue
		}
		if c.n < len(c.line) {
			c.line[c.n] = b
			c.n++
		}
	}
	return c.w.Write(p)
}

func (c *consoleWatch) check() {
	l := c.line[:c.n]
	if i := bytes.Index(l, panicMarker); i >= 0 {
		c.onPanic(string(bytes.TrimRight(l[i:], "\r")))
	}
}
