// Package control is ember's own I/O device through which the guest init
// reports the command's exit status and boot milestones (see guest/proto).
package control

import (
	"log/slog"
	"sync/atomic"

	"github.com/ember-vmm/ember/guest/proto"
)

// Handler receives what the guest reports.
type Handler interface {
	Exit(status uint8)
	Mark(code uint8)
	InitFailed()
}

// Signature is what reads of the device return, one byte per port, so the
// guest can tell it runs under ember.
const Signature = "EMBR"

// Device implements bus.Device at proto.PortBase.
type Device struct {
	h      Handler
	exited atomic.Bool
	extra  atomic.Uint64
	log    *slog.Logger
}

// New returns the control device.
func New(h Handler, log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Device{h: h, log: log}
}

// Read returns the signature bytes.
func (d *Device) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o < uint64(len(Signature)) {
			data[i] = Signature[o]
		}
	}
}

// Write handles a report; only the low byte counts.
func (d *Device) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	switch off + proto.PortBase {
	case proto.PortExit:
		if d.exited.Swap(true) {
			d.extra.Add(1)
			return
		}
		d.h.Exit(data[0])
	case proto.PortMark:
		d.h.Mark(data[0])
	case proto.PortPanic:
		if !d.exited.Swap(true) {
			d.h.InitFailed()
		}
	}
}
