package vmm

import (
	"bytes"
	"testing"

	"github.com/ember-vmm/ember/vmm/kvm"
)

func TestConsoleWatchSeesPanicAcrossWrites(t *testing.T) {
	var out bytes.Buffer
	var got []string
	c := newConsoleWatch(&out, func(l string) { got = append(got, l) })
	in := "[    1.0] ok\r\n[    2.5] Kernel pan" + "ic - not syncing: sysrq triggered crash\r\nafter\n"
	for i := 0; i < len(in); i += 7 {
		c.Write([]byte(in[i:min(i+7, len(in))]))
	}
	if out.String() != in {
		t.Fatalf("output altered: %q", out.String())
	}
	if len(got) != 1 || got[0] != "Kernel panic - not syncing: sysrq triggered crash" {
		t.Fatalf("panic lines = %q", got)
	}
}

func TestCPUIDFor(t *testing.T) {
	in := []kvm.CPUIDEntry{{Function: 1, Ebx: 0xff00_1234}, {Function: 0xb}}
	out := cpuidFor(in, 3, 4)
	var leaf1, leafB, hv bool
	for _, e := range out {
		switch e.Function {
		case 1:
			leaf1 = true
			if e.Ebx>>24 != 3 || (e.Ebx>>16)&0xff != 4 || e.Ebx&0xffff != 0x1234 {
				t.Errorf("leaf 1 EBX = %#x", e.Ebx)
			}
			if e.Ecx&(1<<31) == 0 || e.Edx&(1<<28) == 0 {
				t.Errorf("leaf 1 ECX %#x EDX %#x: hypervisor/HTT bits missing", e.Ecx, e.Edx)
			}
		case 0xb:
			leafB = e.Edx == 3
		case 0x40000000:
			hv = e.Ebx == 0x4b4d564b
		}
	}
	if !leaf1 || !leafB || !hv {
		t.Fatalf("leaf1 %v leafB %v hypervisor signature %v", leaf1, leafB, hv)
	}
}
