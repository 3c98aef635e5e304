package plan

import "io"

// NewEscapeReader returns r with QEMU's console escape: Ctrl-A x calls
// quit and ends the input; Ctrl-A Ctrl-A sends one Ctrl-A. Close closes r.
func NewEscapeReader(r io.ReadCloser, quit func()) io.ReadCloser {
	return &escapeReader{r: r, quit: quit}
}

// escapeReader passes terminal input through and ends the session on
// Ctrl-A x, as QEMU does; Ctrl-A Ctrl-A sends one Ctrl-A.
type escapeReader struct {
	r       io.ReadCloser
	quit    func()
	pending bool
}

// Close closes the underlying reader.
func (e *escapeReader) Close() error { return e.r.Close() }

const ctrlA = 0x01

func (e *escapeReader) Read(p []byte) (int, error) {
	for {
		n, err := e.r.Read(p)
		w := 0
		for _, b := range p[:n] {
			if e.pending {
				e.pending = false
				switch b {
				case 'x', 'X':
					e.quit()
					return w, io.EOF
				case ctrlA:
					p[w] = ctrlA
					w++
				default:
					// Not an escape: deliver both bytes' worth as typed.
					p[w] = b
					w++
				}
				continue
			}
			if b == ctrlA {
				e.pending = true
				continue
			}
			p[w] = b
			w++
		}
		if w > 0 || err != nil {
			return w, err
		}
	}
}
