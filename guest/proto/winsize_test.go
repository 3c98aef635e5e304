package proto

import (
	"bytes"
	"testing"
)

func TestResizeFilter(t *testing.T) {
	var got []Winsize
	f := &ResizeFilter{OnResize: func(w Winsize) { got = append(got, w) }}
	in := append([]byte("ls\x1b[A"), ResizeMessage(30, 120)...)
	in = append(in, "\x1b_ember;winsize;x\x1b\\ok"...) // not a message: passed through
	in = append(in, ResizeMessage(40, 100)...)
	in = append(in, "\x1b\x1b_ember;winsize;1;2\x1b\\end"...)
	var out []byte
	for i := 0; i < len(in); i += 3 { // split across reads
		out = f.Filter(out, in[i:min(i+3, len(in))])
	}
	out = append(out, f.Pending()...)
	want := "ls\x1b[A\x1b_ember;winsize;x\x1b\\ok\x1bend"
	if string(out) != want {
		t.Fatalf("passed through %q, want %q", out, want)
	}
	if len(got) != 3 || got[0] != (Winsize{30, 120}) || got[1] != (Winsize{40, 100}) || got[2] != (Winsize{1, 2}) {
		t.Fatalf("resizes %v", got)
	}
}

func FuzzResizeFilter(f *testing.F) {
	f.Add([]byte("abc"), uint8(2))
	f.Add(ResizeMessage(24, 80), uint8(1))
	f.Add([]byte("\x1b_ember;winsize;99999;1\x1b\\\x1b_emb"), uint8(5))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		n := int(chunk%16) + 1
		var a, b []byte
		fa := &ResizeFilter{}
		for i := 0; i < len(in); i += n {
			a = fa.Filter(a, in[i:min(i+n, len(in))])
		}
		a = append(a, fa.Pending()...)
		fb := &ResizeFilter{}
		b = append(fb.Filter(b, in), fb.Pending()...)
		if !bytes.Equal(a, b) {
			t.Fatalf("output depends on how input is split: %q vs %q", a, b)
		}
		if len(a) > len(in) {
			t.Fatalf("output longer than input")
		}
		if !bytes.Contains(in, []byte("\x1b_ember;winsize;")) && !bytes.Equal(a, in) {
			t.Fatalf("input without messages was altered: %q -> %q", in, a)
		}
	})
}
