package launch

import (
	"errors"
	"fmt"

	"github.com/ember-vmm/ember/vmm/kvm"
)

// Accelerators.
const (
	AccelAuto   = "auto"
	AccelKVM    = "kvm"
	AccelNested = "nested"
)

// ProbeKVM reports whether path is a KVM that can run ordinary x86 guests.
// A /dev/kvm without hardware virtualization behind it (a paravirtual KVM
// such as PVM, which needs a specially built guest kernel) opens and even
// creates VMs, but hangs in a stock kernel, so the CPU flags decide.
func ProbeKVM(path string) error {
	if !kvm.HardwareBacked() {
		return fmt.Errorf("%w: the CPU has no VMX or SVM (a paravirtual %s cannot boot stock kernels)", kvm.ErrUnavailable, path)
	}
	s, err := kvm.Open(path)
	if err != nil {
		return err
	}
	defer s.Close()
	vm, err := s.CreateVM()
	if err != nil {
		return fmt.Errorf("%w: %v", kvm.ErrUnavailable, err)
	}
	return vm.Close()
}

// ErrNoAccel: neither KVM nor the nested path can run here.
var ErrNoAccel = errors.New("no usable accelerator")
