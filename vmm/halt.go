package vmm

import (
	"time"

	"github.com/ember-vmm/ember/vmm/kvm"
)

// A guest can stop without telling anyone: a kernel without ACPI answers
// poweroff with "reboot: System halted" and parks every CPU in HLT with
// interrupts off. With the in-kernel LAPIC such a vCPU sleeps inside
// KVM_RUN forever. The watchdog asks the vCPUs for their state when the
// console says so, and now and then regardless; if every vCPU is halted
// with interrupts off (or was never started), nothing but an NMI could
// wake the guest again, and the VM ends as powered off.
const (
	haltPoll       = 5 * time.Second        // the periodic check
	haltHintRetry  = 250 * time.Millisecond // after the console's last words,
	haltHintWindow = 5 * time.Second        // for this long
	probeTimeout   = 2 * time.Second
	rflagsIF       = 1 << 9
)

// vcpuState is one vCPU's answer to a probe.
type vcpuState struct {
	id      int
	mp      uint32
	ifFlag  bool
	sampled bool
}

// sampleVCPU reads c's MP state and interrupt flag; called on c's thread,
// outside KVM_RUN.
func sampleVCPU(c *kvm.VCPU) vcpuState {
	s := vcpuState{id: c.ID}
	mp, err := c.MPState()
	if err != nil {
		return s
	}
	r, err := c.GetRegs()
	if err != nil {
		return s
	}
	s.mp, s.ifFlag, s.sampled = mp, r.RFLAGS&rflagsIF != 0, true
	return s
}

// hintHalted is called by the console watch on a halt message; it must not
// block.
func (m *Machine) hintHalted() {
	select {
	case m.haltCh <- struct{}{}:
	default:
	}
}

// haltedForGood probes every vCPU and reports whether all are stopped for
// good.
func (m *Machine) haltedForGood() bool {
	for len(m.probeCh) > 0 { // answers to an earlier probe that timed out
		<-m.probeCh
	}
	for i := range m.probe {
		m.probe[i].Store(true)
	}
	m.kickAll()
	states := make([]vcpuState, 0, len(m.vcpus))
	timeout := time.NewTimer(probeTimeout)
	defer timeout.Stop()
	for len(states) < len(m.vcpus) {
		select {
		case s := <-m.probeCh:
			states = append(states, s)
		case <-timeout.C:
			return false
		case <-m.endCh:
			return false
		}
	}
	return stoppedForGood(states)
}

// stoppedForGood: at least one vCPU halted with interrupts off, and every
// other one halted that way too or never started.
func stoppedForGood(states []vcpuState) bool {
	halted := 0
	for _, s := range states {
		switch {
		case !s.sampled:
			return false
		case s.mp == kvm.MPStateHalted && !s.ifFlag:
			halted++
		case s.mp == kvm.MPStateUninitialized || s.mp == kvm.MPStateInitReceived:
		default:
			return false
		}
	}
	return halted > 0
}
