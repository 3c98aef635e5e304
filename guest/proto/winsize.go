package proto

import (
	"bytes"
	"strconv"
)

// Winsize is a terminal's size in characters.
type Winsize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// The guest console is a serial line, which has no size. ember tells the
// guest init its terminal's size in run.json at start and, on every
// resize, in band on the console input, as an APC string (ECMA-48 §8.3.2,
// ESC _ ... ESC \), which terminals never send as input:
//
//	ESC _ ember;winsize;ROWS;COLS ESC \
var (
	resizePrefix = []byte("\x1b_ember;winsize;")
	resizeEnd    = []byte("\x1b\\")
)

// maxResizeMessage bounds a message: anything longer is not one.
const maxResizeMessage = 40

// ResizeMessage is the in-band message for a terminal of rows x cols.
func ResizeMessage(rows, cols uint16) []byte {
	b := append([]byte{}, resizePrefix...)
	b = strconv.AppendUint(b, uint64(rows), 10)
	b = append(b, ';')
	b = strconv.AppendUint(b, uint64(cols), 10)
	return append(b, resizeEnd...)
}

// ResizeFilter passes console input through and takes resize messages out
// of it, calling OnResize for each. A message may arrive split across
// reads; bytes that turn out not to be one are passed on unchanged.
type ResizeFilter struct {
	OnResize func(Winsize)
	held     []byte
}

// Filter appends the bytes of src that are not part of a resize message
// to dst and returns it.
func (f *ResizeFilter) Filter(dst, src []byte) []byte {
	for _, c := range src {
		if len(f.held) == 0 {
			if c == resizePrefix[0] {
				f.held = append(f.held, c)
			} else {
				dst = append(dst, c)
			}
			continue
		}
		f.held = append(f.held, c)
		n := len(f.held)
		switch {
		case n <= len(resizePrefix):
			if f.held[n-1] != resizePrefix[n-1] {
				dst = f.release(dst)
			}
		case bytes.HasSuffix(f.held, resizeEnd):
			if ws, ok := parseWinsize(f.held[len(resizePrefix) : n-len(resizeEnd)]); ok {
				f.held = f.held[:0]
				if f.OnResize != nil {
					f.OnResize(ws)
				}
			} else {
				dst = f.release(dst)
			}
		case n > maxResizeMessage || !(c >= '0' && c <= '9' || c == ';' || c == resizeEnd[0]):
			dst = f.release(dst)
		}
	}
	return dst
}

// release passes the held bytes on: the first as data, the rest scanned
// again (an ESC among them may start a real message).
func (f *ResizeFilter) release(dst []byte) []byte {
	held := append([]byte{}, f.held...)
	f.held = f.held[:0]
	dst = append(dst, held[0])
	return f.Filter(dst, held[1:])
}

// Pending returns and forgets bytes held as a possible message start (to
// flush when input ends).
func (f *ResizeFilter) Pending() []byte {
	p := append([]byte{}, f.held...)
	f.held = f.held[:0]
	return p
}

func parseWinsize(b []byte) (Winsize, bool) {
	r, c, ok := bytes.Cut(b, []byte{';'})
	if !ok {
		return Winsize{}, false
	}
	rows, err1 := strconv.ParseUint(string(r), 10, 16)
	cols, err2 := strconv.ParseUint(string(c), 10, 16)
	if err1 != nil || err2 != nil {
		return Winsize{}, false
	}
	return Winsize{Rows: uint16(rows), Cols: uint16(cols)}, true
}
