package main

import (
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

func outb(port uint16, v uint8)
func inb(port uint16) uint8

// host reports to ember's control device. Outside ember (another VMM, or
// no port access) it reports nothing and the caller falls back to the
// kernel's own power-off.
type host struct{ ok bool }

func openHost() *host {
	if err := unix.Ioperm(proto.PortBase, proto.PortCount, 1); err != nil {
		return &host{}
	}
	// The device answers "EMBR"; anything else is not ember.
	sig := []byte{inb(proto.PortBase), inb(proto.PortBase + 1), inb(proto.PortBase + 2), inb(proto.PortBase + 3)}
	return &host{ok: string(sig) == "EMBR"}
}

func (h *host) mark(code uint8) {
	if h.ok {
		outb(proto.PortMark, code)
	}
}

// exit reports status and does not return: ember stops the VM on the
// write. Without ember the kernel powers off.
func (h *host) exit(status int) {
	unix.Sync()
	if h.ok {
		outb(proto.PortExit, uint8(status))
		time.Sleep(2 * time.Second)
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}
