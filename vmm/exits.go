package vmm

import "github.com/ember-vmm/ember/vmm/kvm"

// exitCounts counts one vCPU's exits by reason. Only its vCPU's goroutine
// writes it, and Run reads it after that goroutine has ended, so it needs
// no atomics. Reasons past the array (KVM adds new ones over time) go to
// the map, so every exit is counted.
type exitCounts struct {
	fixed [64]uint64
	other map[uint32]uint64
}

func (e *exitCounts) add(reason uint32) {
	if reason < uint32(len(e.fixed)) {
		e.fixed[reason]++
		return
	}
	if e.other == nil {
		e.other = map[uint32]uint64{}
	}
	e.other[reason]++
}

// mergeInto adds the counts to m, keyed by exit name.
func (e *exitCounts) mergeInto(m map[string]uint64) {
	for r, n := range e.fixed {
		if n > 0 {
			m[kvm.ExitName(uint32(r))] += n
		}
	}
	for r, n := range e.other {
		m[kvm.ExitName(r)] += n
	}
}
