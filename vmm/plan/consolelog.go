package plan

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
)

// consolePrefix marks the serial console's lines (kernel and init
// messages) on ember's stderr, apart from the command's own stderr.
const consolePrefix = "console: "

// ConsoleLog is where the serial console of a VM running a command goes:
// the file path (created, and truncated unless appending), or w with
// each line prefixed.
func ConsoleLog(path string, appending bool, w io.Writer) (io.Writer, func(), error) {
	if path == "" {
		return &prefixWriter{w: w, prefix: []byte(consolePrefix), start: true}, func() {}, nil
	}
	flag := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if !appending {
		flag |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("--console-log: %w", err)
	}
	return f, func() { _ = f.Close() }, nil
}

// prefixWriter puts prefix before every line written through it.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix []byte
	start  bool // the next byte starts a line
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = p.buf[:0]
	for rest := b; len(rest) > 0; {
		if p.start {
			p.buf = append(p.buf, p.prefix...)
			p.start = false
		}
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			p.buf = append(p.buf, rest...)
			break
		}
		p.buf = append(p.buf, rest[:i+1]...)
		rest = rest[i+1:]
		p.start = true
	}
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}
