package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// holdCgroupName is the empty cgroup that holds the container keys.
const holdCgroupName = "ember-hold"

// holdCgroupKeys is holdKVMKeys for container runtimes. Each container
// crun or runc starts in L1 (ember bench) creates a cgroup with the cpuset
// and memory controllers and attaches a device filter (BPF) to it; the
// first such cgroup on a host enables the kernel's cpuset, memcg-socket
// and cgroup-BPF static keys and the last to go disables them, so every
// container would rewrite L1's kernel text twice. One idle cgroup with
// those controllers and an allow-all device filter, kept for L1's life,
// keeps the keys set. A host with systemd has such cgroups anyway.
func holdCgroupKeys(root string) error {
	// Enabling controllers is what a runtime does first; one that is not
	// there (no cpuset in this kernel) only leaves its key alone.
	for _, c := range []string{"+cpuset", "+memory"} {
		_ = os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte(c), 0)
	}
	dir := filepath.Join(root, holdCgroupName)
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("holding the cgroup keys: %w", err)
	}
	cg, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("holding the cgroup keys: %w", err)
	}
	defer unix.Close(cg)
	prog, err := loadAllowDevices()
	if err != nil {
		return fmt.Errorf("holding the cgroup keys: %w", err)
	}
	// The cgroup keeps the program attached after its descriptor closes.
	defer unix.Close(prog)
	if err := bpfAttach(cg, prog, unix.BPF_CGROUP_DEVICE, unix.BPF_F_ALLOW_MULTI); err != nil {
		return fmt.Errorf("holding the cgroup keys: attaching the device filter: %w", err)
	}
	return nil
}

// bpfInsn is struct bpf_insn.
type bpfInsn struct {
	code uint8
	regs uint8 // dst in the low nibble, src in the high one
	off  int16
	imm  int32
}

// bpfProgLoadAttr is the BPF_PROG_LOAD part of union bpf_attr, up to
// expected_attach_type.
type bpfProgLoadAttr struct {
	progType, insnCnt   uint32
	insns, license      uint64
	logLevel, logSize   uint32
	logBuf              uint64
	kernVersion, flags  uint32
	name                [16]byte
	ifindex, attachType uint32
}

// loadAllowDevices loads a cgroup device program that allows every
// access: r0 = 1; exit. Two instructions do not justify a BPF library.
func loadAllowDevices() (int, error) {
	insns := []bpfInsn{
		{code: unix.BPF_ALU64 | unix.BPF_MOV | unix.BPF_K, imm: 1},
		{code: unix.BPF_JMP | unix.BPF_EXIT},
	}
	license := []byte("GPL\x00")
	attr := bpfProgLoadAttr{
		progType:   unix.BPF_PROG_TYPE_CGROUP_DEVICE,
		insnCnt:    uint32(len(insns)),
		insns:      uint64(uintptr(unsafe.Pointer(&insns[0]))),
		license:    uint64(uintptr(unsafe.Pointer(&license[0]))),
		attachType: unix.BPF_CGROUP_DEVICE,
	}
	copy(attr.name[:], "ember_hold")
	// The verifier gives up with EAGAIN when a signal is pending, and Go
	// preempts with signals: retry, a bounded number of times.
	var fd uintptr
	var errno unix.Errno
	for range 20 {
		fd, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != unix.EAGAIN && errno != unix.EINTR {
			break
		}
	}
	runtime.KeepAlive(insns)
	runtime.KeepAlive(license)
	if errno != 0 {
		return -1, fmt.Errorf("loading the device filter: %w", errno)
	}
	unix.CloseOnExec(int(fd))
	return int(fd), nil
}

// bpfAttach is BPF_PROG_ATTACH.
func bpfAttach(target, prog int, typ, flags uint32) error {
	attr := struct{ target, prog, typ, flags uint32 }{uint32(target), uint32(prog), typ, flags}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_ATTACH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	return nil
}
