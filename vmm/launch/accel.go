package launch

import (
	"bytes"
	"errors"
	"fmt"
	"os"

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
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err == nil && !hasVirtFlag(cpuinfo) {
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

func hasVirtFlag(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if bytes.Equal(f, []byte("vmx")) || bytes.Equal(f, []byte("svm")) {
				return true
			}
		}
		return false
	}
	return false
}

// ErrNoAccel: neither KVM nor the nested path can run here.
var ErrNoAccel = errors.New("no usable accelerator")
