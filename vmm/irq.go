package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/ember-vmm/ember/vmm/eventfd"
	"github.com/ember-vmm/ember/vmm/kvm"
)

// irqLine implements irq.Line over KVM's irqfd: Trigger is one eventfd
// write, and KVM injects the interrupt without an exit to userspace.
type irqLine struct {
	gsi uint32
	efd *eventfd.EventFD
	// Level-triggered lines only: KVM signals rfd when the guest
	// acknowledges the interrupt (EOI) and lowers the line; pending then
	// says whether the device still wants service.
	rfd     *eventfd.EventFD
	pending func() bool
	fails   atomic.Uint64
	log     *slog.Logger
}

// Trigger raises the line.
func (l *irqLine) Trigger() {
	if err := l.efd.Signal(); err != nil {
		if l.fails.Add(1) == 1 {
			l.log.Warn("interrupt lost", "gsi", l.gsi, "err", err)
		}
	}
}

// resample re-raises a level-triggered line after each EOI for as long as
// the device has something pending. It returns when rfd is closed.
func (l *irqLine) resample() error {
	for {
		if _, err := l.rfd.Wait(); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("gsi %d resample: %w", l.gsi, err)
		}
		if l.pending() {
			l.Trigger()
		}
	}
}

// newIRQLine wires an eventfd to gsi. With pending non-nil the line is
// level-triggered, re-raised after each EOI while pending() is true.
func newIRQLine(vm *kvm.VM, gsi uint32, pending func() bool, log *slog.Logger) (*irqLine, error) {
	efd, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	l := &irqLine{gsi: gsi, efd: efd, pending: pending, log: log}
	resample := -1
	if pending != nil {
		if l.rfd, err = eventfd.New(); err != nil {
			efd.Close()
			return nil, err
		}
		resample = l.rfd.FD()
	}
	if err := vm.IRQFD(efd.FD(), gsi, resample); err != nil {
		l.close(nil)
		return nil, err
	}
	return l, nil
}

// close detaches the line from KVM (if vm is set) and closes its eventfds.
func (l *irqLine) close(vm *kvm.VM) error {
	var err error
	if vm != nil {
		err = vm.RemoveIRQFD(l.efd.FD(), l.gsi)
	}
	err = errors.Join(err, closed(l.efd.Close()))
	if l.rfd != nil {
		err = errors.Join(err, closed(l.rfd.Close()))
	}
	return err
}

// stopResample ends the resample goroutine (KVM keeps its own reference
// to the eventfd, so the line keeps working until close).
func (l *irqLine) stopResample() {
	if l.rfd != nil {
		_ = l.rfd.Close()
	}
}

// closed forgets "already closed".
func closed(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}
