package main

import (
	"os"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// outb and inb are the x86 OUT and IN instructions (port_amd64.s); they
// need ioperm(2) first.
func outb(port uint16, v uint8)
func inb(port uint16) uint8

// host reports to ember's control device. Outside ember (another VMM, or
// no port access) it reports nothing and ending falls back to the kernel's
// own power-off.
type host struct{ ok bool }

// openHost gains access to the control ports and checks that ember's
// device answers there ("EMBR"); other VMMs read 0xff from unclaimed ports.
func openHost() *host {
	if err := unix.Ioperm(proto.PortBase, proto.PortCount, 1); err != nil {
		return &host{}
	}
	sig := []byte{inb(proto.PortBase), inb(proto.PortBase + 1), inb(proto.PortBase + 2), inb(proto.PortBase + 3)}
	return &host{ok: string(sig) == "EMBR"}
}

func (h *host) mark(code uint8) {
	if h.ok {
		outb(proto.PortMark, code)
	}
}

// exit reports status and ends the VM; it does not return.
func (h *host) exit(status int) { h.end(status, false) }

// end syncs filesystems (ember stops the VM on the very write), reports
// status and does not return. Without ember the kernel powers off (or
// restarts, for reboot).
func (h *host) end(status int, reboot bool) {
	drainConsole()
	unix.Sync()
	if h.ok {
		outb(proto.PortExit, uint8(status))
		// The VM stops at the write above; this only runs if it did not.
		time.Sleep(2 * time.Second)
	}
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	_ = unix.Reboot(cmd)
	for {
		time.Sleep(time.Hour)
	}
}

// drainConsole waits (up to a second) until the console has sent what was
// written to it: the kernel queues tty output and transmits it from
// interrupts, and ending the VM loses what is still queued, such as the
// command's last lines.
func drainConsole() {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		// TCSBRK with a non-zero argument is tcdrain(3).
		_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1)
		close(done)
	}()
	select {
	case <-done:
		f.Close()
	case <-time.After(time.Second):
	}
}
