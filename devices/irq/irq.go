// Package irq is how a device asks for the guest's attention. The VMM
// implements Line over KVM's irqfd: raising the line costs the device one
// eventfd write and the guest no exit to userspace.
package irq

// Line is a device's interrupt line. Trigger raises it: an edge, or for a
// level-triggered line an assertion that lasts until the guest acknowledges
// it, after which the VMM raises it again if the device still needs
// service. Trigger never blocks and never fails towards the device; the
// implementation logs and counts host-side trouble.
type Line interface {
	Trigger()
}

// Func adapts a function to Line (for tests and simple wiring).
type Func func()

// Trigger calls f.
func (f Func) Trigger() { f() }

// None is a line that goes nowhere.
type None struct{}

// Trigger does nothing.
func (None) Trigger() {}
