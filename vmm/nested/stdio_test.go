package nested

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/ember-vmm/ember/guest/proto"
)

func frame(p []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(p)))
	return append(b, p...)
}

func TestCopyFrames(t *testing.T) {
	var in bytes.Buffer
	in.Write(frame([]byte("a\r\n")))
	in.Write(frame([]byte{0, 0xff}))
	in.Write(frame(nil))
	in.WriteString("after the end")
	var out bytes.Buffer
	if err := copyFrames(&out, &in); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a\r\n\x00\xff" {
		t.Fatalf("got %q", out.String())
	}
	if in.String() != "after the end" {
		t.Fatal("read past the end frame")
	}
	for name, bad := range map[string][]byte{
		"no end":    frame([]byte("x")),
		"too large": binary.LittleEndian.AppendUint32(nil, proto.FrameMax+1),
		"cut short": append(binary.LittleEndian.AppendUint32(nil, 10), "abc"...),
	} {
		if err := copyFrames(io.Discard, bytes.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzFrames: whatever L1 sends on an output port, decoding ends with
// the data or an error, never a panic, and never writes more than it read.
func FuzzFrames(f *testing.F) {
	f.Add(append(frame([]byte("hello")), frame(nil)...))
	f.Add(binary.LittleEndian.AppendUint32(nil, 0xffffffff))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		_ = copyFrames(&out, bytes.NewReader(data))
		if out.Len() > len(data) {
			t.Fatalf("wrote %d bytes from %d", out.Len(), len(data))
		}
	})
}
