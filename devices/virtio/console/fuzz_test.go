package console

import (
	"encoding/binary"
	"log/slog"
	"testing"

	"github.com/ember-vmm/ember/devices/virtio"
)

// FuzzControl hands arbitrary control messages to the device (the input
// cut into 8-byte messages). Nothing may panic, and the messages the
// device queues for the driver stay within their bound.
func FuzzControl(f *testing.F) {
	msg := func(port uint32, event, value uint16) []byte {
		b := make([]byte, ctlSize)
		binary.LittleEndian.PutUint32(b, port)
		binary.LittleEndian.PutUint16(b[4:], event)
		binary.LittleEndian.PutUint16(b[6:], value)
		return b
	}
	f.Add(msg(0, evDeviceReady, 1))
	f.Add(append(msg(0, evDeviceReady, 1), msg(1, evPortReady, 1)...))
	f.Add(msg(0xffffffff, evPortOpen, 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := New(Options{}, slog.New(slog.DiscardHandler))
		defer d.Close()
		d.act = &virtio.Activation{Kick: func(int) {}}
		for ; len(data) >= ctlSize; data = data[ctlSize:] {
			d.handleControl(int64(binary.LittleEndian.Uint32(data)), binary.LittleEndian.Uint16(data[4:]), binary.LittleEndian.Uint16(data[6:]))
			if len(d.ctl) > maxCtlPending {
				t.Fatalf("%d control messages pending, bound %d", len(d.ctl), maxCtlPending)
			}
		}
	})
}
