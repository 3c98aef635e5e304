package control

import (
	"testing"

	"github.com/ember-vmm/ember/guest/proto"
)

type rec struct {
	exits  []uint8
	marks  []uint8
	failed int
}

func (r *rec) Exit(s uint8) { r.exits = append(r.exits, s) }
func (r *rec) Mark(c uint8) { r.marks = append(r.marks, c) }
func (r *rec) InitFailed()  { r.failed++ }

func TestReports(t *testing.T) {
	r := &rec{}
	d := New(r, nil)
	sig := make([]byte, 4)
	d.Read(0, sig)
	if string(sig) != Signature {
		t.Fatalf("signature %q", sig)
	}
	d.Write(proto.PortMark-proto.PortBase, []byte{proto.MarkInit})
	d.Write(proto.PortExit-proto.PortBase, []byte{42, 0, 0, 0})
	d.Write(proto.PortExit-proto.PortBase, []byte{7})
	d.Write(proto.PortPanic-proto.PortBase, []byte{1})
	if len(r.exits) != 1 || r.exits[0] != 42 || len(r.marks) != 1 || r.failed != 0 {
		t.Fatalf("%+v: only the first status may count", r)
	}
	d.Write(3, nil)
	d.Read(7, make([]byte, 8))
}

// FuzzControl writes guest-chosen bytes to every offset of the control
// device: at most one exit is reported, and nothing panics.
func FuzzControl(f *testing.F) {
	f.Add([]byte{1, 2, 0, 42, 0, 7, 2, 0})
	f.Add([]byte{3, 1, 3, 1, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := &rec{}
		d := New(r, nil)
		for i := 0; i+1 < len(ops); i += 2 {
			off := uint64(ops[i] % 8)
			d.Write(off, ops[i+1:i+2])
			buf := make([]byte, 1+int(ops[i]>>6))
			d.Read(off, buf)
		}
		if len(r.exits)+r.failed > 1 {
			t.Fatalf("%d exits and %d init failures reported", len(r.exits), r.failed)
		}
	})
}
