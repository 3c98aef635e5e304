package net

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
)

type recorder struct{ bytes.Buffer }

func (*recorder) SetReadDeadline(time.Time) error   { return nil }
func (*recorder) SetOffload(bool, bool, bool) error { return nil }
func (r *recorder) WriteVec(segs [][]byte) (int, error) {
	return r.Write(bytes.Join(segs, nil))
}

// FuzzTransmit: any chain the guest queues is sent whole or refused; the
// tap never sees more than one bounded packet per chain.
func FuzzTransmit(f *testing.F) {
	f.Add(frame(60, 1), 6)
	f.Add(make([]byte, 3), 1)
	f.Add(frame(2000, 3), 1500)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		tap := &recorder{}
		d := New(tap, mac, slog.New(slog.DiscardHandler))
		split = min(max(split, 0), len(data))
		d.transmit(virtio.NewChain([][]byte{data[:split], data[split:]}, nil))
		if tap.Len() != 0 && !bytes.Equal(tap.Bytes(), data) {
			t.Fatalf("tap got %d bytes of %d", tap.Len(), len(data))
		}
		if tap.Len() > maxFrame {
			t.Fatalf("%d-byte packet", tap.Len())
		}
	})
}
