package vmm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	"github.com/ember-vmm/ember/vmm/kvm"
	"github.com/ember-vmm/ember/vmm/platform"
)

func TestCPUIDFor(t *testing.T) {
	in := []kvm.CPUIDEntry{{Function: 1, EBX: 0xff00_1234}, {Function: 0xb}}
	out := cpuidFor(in, 3, 4, false)
	var leaf1, leafB, hv bool
	for _, e := range out {
		switch e.Function {
		case 1:
			leaf1 = true
			if e.EBX>>24 != 3 || (e.EBX>>16)&0xff != 4 || e.EBX&0xffff != 0x1234 {
				t.Errorf("leaf 1 EBX = %#x", e.EBX)
			}
			if e.ECX&(1<<31) == 0 || e.EDX&(1<<28) == 0 {
				t.Errorf("leaf 1 ECX %#x EDX %#x: hypervisor/HTT bits missing", e.ECX, e.EDX)
			}
		case 0xb:
			leafB = e.EDX == 3
		case 0x40000000:
			hv = e.EBX == 0x4b4d564b
		}
	}
	if !leaf1 || !leafB || !hv {
		t.Fatalf("leaf1 %v leafB %v hypervisor signature %v", leaf1, leafB, hv)
	}
}

func TestCPUIDForNoXSAVE(t *testing.T) {
	const sse2, sse41, xsave, osxsave, avx = 1 << 26, 1 << 19, 1 << 26, 1 << 27, 1 << 28
	in := []kvm.CPUIDEntry{
		{Function: 1, ECX: sse41 | xsave | osxsave | avx, EDX: sse2},
		{Function: 7, Index: 0, EBX: 1<<5 | 1<<0, ECX: 1 << 3}, // AVX2, FSGSBASE; PKU
		{Function: 0xd, Index: 0, EAX: 7, EBX: 832},
		{Function: 0xd, Index: 2, EAX: 256, EBX: 576},
	}
	// As it was: nothing hidden.
	if out := cpuidFor(in, 0, 1, false); out[0].ECX&avx == 0 || len(out) != len(in)+1 {
		t.Fatalf("without noXSAVE the table changed: %+v", out)
	}
	for _, e := range cpuidFor(in, 0, 1, true) {
		switch e.Function {
		case 1:
			if e.ECX&(xsave|osxsave|avx) != 0 || e.ECX&sse41 == 0 || e.EDX&sse2 == 0 {
				t.Errorf("leaf 1 ECX %#x EDX %#x: XSAVE/AVX not hidden, or SSE lost", e.ECX, e.EDX)
			}
		case 7:
			if e.EBX != 1 || e.ECX != 0 {
				t.Errorf("leaf 7 EBX %#x ECX %#x: want only FSGSBASE left", e.EBX, e.ECX)
			}
		case 0xd:
			t.Errorf("leaf 0xd index %d still offered", e.Index)
		}
	}
	if in[0].ECX&avx == 0 {
		t.Error("the supported table itself was changed")
	}
}

func TestExitCountsCoverEveryReason(t *testing.T) {
	var e exitCounts
	for _, r := range []uint32{kvm.ExitIO, kvm.ExitIO, kvm.ExitMMIO, 63, 64, 100, 100, 1 << 31} {
		e.add(r)
	}
	m := map[string]uint64{}
	e.mergeInto(m)
	want := map[string]uint64{"io": 2, "mmio": 1, "exit-63": 1, "exit-64": 1, "exit-100": 2, "exit-2147483648": 1}
	if len(m) != len(want) {
		t.Fatalf("counts %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Fatalf("counts %v, want %v", m, want)
		}
	}
}

func TestSystemEventResult(t *testing.T) {
	for _, c := range []struct {
		typ  uint32
		want Outcome
	}{
		{kvm.SystemEventShutdown, OutcomePowerOff},
		{kvm.SystemEventReset, OutcomeReset},
		{kvm.SystemEventCrash, OutcomePanic},
		{99, OutcomeError},
	} {
		r := systemEventResult(kvm.SystemEvent{Type: c.typ})
		if r.Outcome != c.want {
			t.Errorf("type %d: outcome %s, want %s", c.typ, r.Outcome, c.want)
		}
		if c.want == OutcomeError && r.Err == nil {
			t.Errorf("type %d: no error", c.typ)
		}
	}
}

func TestStoppedForGood(t *testing.T) {
	h := vcpuState{mp: kvm.MPStateHalted, sampled: true}
	idle := vcpuState{mp: kvm.MPStateHalted, ifFlag: true, sampled: true}
	run := vcpuState{mp: kvm.MPStateRunnable, sampled: true}
	ap := vcpuState{mp: kvm.MPStateUninitialized, sampled: true}
	for _, c := range []struct {
		name string
		s    []vcpuState
		want bool
	}{
		{"one halted", []vcpuState{h}, true},
		{"halted and never-started AP", []vcpuState{h, ap}, true},
		{"idle (interrupts on)", []vcpuState{idle}, false},
		{"one still running", []vcpuState{h, run}, false},
		{"only never-started", []vcpuState{ap}, false},
		{"unsampled", []vcpuState{h, {}}, false},
	} {
		if got := stoppedForGood(c.s); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestGroupTurnsPanicIntoError: a panic in any goroutine of a run becomes
// the run's error, reported once, and Wait returns.
func TestGroupTurnsPanicIntoError(t *testing.T) {
	var mu sync.Mutex
	var failed []error
	g := &group{fail: func(err error) { mu.Lock(); failed = append(failed, err); mu.Unlock() }}
	g.Go("device worker", func() error { panic("index out of range") })
	g.Go("other", func() error { return errors.New("second") })
	g.Go("fine", func() error { return nil })
	err := g.Wait()
	if err == nil || len(failed) != 1 || failed[0] != err {
		t.Fatalf("Wait = %v, fail calls %v", err, failed)
	}
	if strings.Contains(err.Error(), "second") {
		return // the plain error came first: still exactly one report
	}
	if !strings.Contains(err.Error(), "internal error in device worker: index out of range") {
		t.Fatalf("error %q does not name the goroutine and the panic", err)
	}
}

func TestConcatReaderAt(t *testing.T) {
	c := concat{parts: []io.ReaderAt{readerAtBytes("abc"), zeros{}, readerAtBytes("XY")}, sizes: []int64{3, 1, 2}}
	for off := 0; off < 6; off++ {
		for n := 0; off+n <= 6; n++ {
			p := make([]byte, n)
			k, err := c.ReadAt(p, int64(off))
			want := "abc\x00XY"[off : off+n]
			if k != n || err != nil || string(p) != want {
				t.Fatalf("ReadAt(%d bytes at %d) = %d %v %q, want %q", n, off, k, err, p, want)
			}
		}
	}
	if _, err := c.ReadAt(make([]byte, 2), 5); err != io.EOF {
		t.Fatalf("read past the end: %v", err)
	}
}

// testKernel is a minimal PVH ELF vmlinux: one segment at 16 MiB holding
// code at its start.
func testKernel(t testing.TB, code []byte) *boot.Kernel {
	t.Helper()
	b := pvhELF(code)
	k, err := boot.ParseKernel(bytes.NewReader(b), int64(len(b)), "test-kernel")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestCheck: everything New would refuse is refused without KVM.
func TestCheck(t *testing.T) {
	k := testKernel(t, []byte{0xf4})
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(initrd, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	good := Config{Kernel: k, CPUs: 1, Memory: 64 << 20, Initrd: initrd, Extra: []byte("run")}
	if err := Check(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"no kernel":          func(c *Config) { c.Kernel = nil },
		"zero cpus":          func(c *Config) { c.CPUs = 0 },
		"255 cpus":           func(c *Config) { c.CPUs = 255 },
		"odd memory":         func(c *Config) { c.Memory = 64<<20 + 1 },
		"memory too small":   func(c *Config) { c.Memory = 8 << 20 },
		"missing initrd":     func(c *Config) { c.Initrd = filepath.Join(dir, "nope") },
		"initrd a directory": func(c *Config) { c.Initrd = dir },
		"cmdline too long":   func(c *Config) { c.Cmdline = strings.Repeat("x", 5000) },
	} {
		c := good
		mod(&c)
		if err := Check(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNewBadDrive: a drive that cannot be opened fails New before KVM is
// touched, and releasing the half-built machine is clean.
func TestNewBadDrive(t *testing.T) {
	k := testKernel(t, []byte{0xf4})
	_, err := New(Config{Kernel: k, CPUs: 1, Memory: 64 << 20, KVMPath: "/nonexistent/kvm",
		Drives: []blk.Options{{Path: filepath.Join(t.TempDir(), "missing.img")}}})
	if err == nil || !strings.Contains(err.Error(), "drive 0") || !strings.Contains(err.Error(), "missing.img") {
		t.Fatalf("New: %v, want an error naming drive 0 and its image", err)
	}
}

// TestNewNoKVM: New fails cleanly (no panic) when KVM cannot be opened.
func TestNewNoKVM(t *testing.T) {
	_, err := New(Config{Kernel: testKernel(t, []byte{0xf4}), CPUs: 1, Memory: 64 << 20, KVMPath: "/nonexistent/kvm"})
	if err == nil {
		t.Fatal("New without KVM succeeded")
	}
}

// TestCmdlineACPIOff: only a kernel told acpi=off gets the virtio devices
// on its command line; with ACPI they are in the DSDT alone.
func TestCmdlineACPIOff(t *testing.T) {
	p := platform.New()
	if _, err := p.AddVirtioMMIO("blk0"); err != nil {
		t.Fatal(err)
	}
	if c := fullCmdline(p, "quiet"); strings.Contains(c, "virtio_mmio.device=") {
		t.Fatalf("with ACPI: %q declares devices twice", c)
	}
	if c := fullCmdline(p, "quiet acpi=off"); !strings.Contains(c, p.VirtioCmdline()) || p.VirtioCmdline() == "" {
		t.Fatalf("acpi=off: %q lacks %q", c, p.VirtioCmdline())
	}
}
