package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// nestedRoot is where L1 mounts the host's root before chrooting into it.
const nestedRoot = "/host"

// p9Opts are the 9p mount options of ../shared/nested-kvm.md: virtio
// transport, the Linux dialect and large messages.
const p9Opts = "trans=virtio,version=9p2000.L,msize=512000"

// nestedMounts is the L1 mount plan: the host root read-only (cached: it
// does not change under us), the usual kernel filesystems inside it, a
// tmpfs over the host's /run (so proto.IOMount needs no directory on the
// host), the read-write IO share and the extra shares at their host paths.
func nestedMounts(n *proto.Nested) []mnt {
	r := nestedRoot
	ms := []mnt{
		{n.RootTag, r, "9p", unix.MS_RDONLY, p9Opts + ",cache=loose"},
		{"proc", r + "/proc", "proc", 0, ""},
		{"sysfs", r + "/sys", "sysfs", 0, ""},
		// Container runtimes in L1 (ember bench) need the cgroup tree.
		{"cgroup2", r + "/sys/fs/cgroup", "cgroup2", 0, ""},
		{"devtmpfs", r + "/dev", "devtmpfs", 0, ""},
		{"devpts", r + "/dev/pts", "devpts", 0, "ptmxmode=666"},
		{"tmpfs", r + "/tmp", "tmpfs", 0, "mode=1777"},
		{"tmpfs", r + "/run", "tmpfs", 0, "mode=0755"},
		{n.IOTag, r + proto.IOMount, "9p", 0, p9Opts},
	}
	for _, m := range n.Mounts {
		fl, opts := uintptr(0), p9Opts
		if m.ReadOnly {
			fl, opts = unix.MS_RDONLY, p9Opts+",cache=loose"
		}
		ms = append(ms, mnt{m.Tag, filepath.Join(r, filepath.Clean(m.Path)), "9p", fl, opts})
	}
	return ms
}

// nestedMain is init's job as the L1 host of --accel nested: it shares the
// host's root, chroots into it and runs the ember command line it was
// given on the console, then leaves the exit status in the IO share. The
// returned status only matters outside QEMU.
func nestedMain(r *proto.Run) int {
	if r.Nested.Heartbeat != "" {
		go heartbeat(r.Nested.Heartbeat, r.Nested.HeartbeatOffset)
	}
	if err := holdKVMKeys(); err != nil {
		logf("nested: %v", err)
	}
	// Guest RAM follows the host's THP policy unless asked otherwise. In
	// L1, huge-page guest RAM (large shadow-page mappings under the
	// emulator) coincided with L1 crashes and lockups; "madvise" keeps
	// ember's guests on 4 KiB pages here unless --huge-pages asks.
	if err := os.WriteFile("/sys/kernel/mm/transparent_hugepage/enabled", []byte("madvise"), 0); err != nil {
		logf("nested: %v", err)
	}
	if err := mountAll(nestedMounts(r.Nested)); err != nil {
		// Without the root or IO share nothing can run or report; the host
		// sees no status file and shows this console output.
		logf("nested: %v", err)
	}
	if err := holdCgroupKeys(nestedRoot + "/sys/fs/cgroup"); err != nil {
		logf("nested: %v", err)
	}
	if err := unix.Chroot(nestedRoot); err != nil {
		logf("nested: chroot %s: %v", nestedRoot, err)
		return proto.StatusInitFailed
	}
	status := nestedRun(r)
	if err := writeFileSync(filepath.Join(proto.IOMount, proto.StatusFile), strconv.Itoa(status)+"\n"); err != nil {
		logf("nested: writing the status: %v", err)
	}
	unix.Sync()
	return status
}

// nestedRun runs r.Args inside the chroot and returns their exit status.
func nestedRun(r *proto.Run) int {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		logf("nested: no /dev/kvm in L1 (kvm-amd did not load; does the emulated CPU offer SVM?): %v", err)
		return proto.StatusInitFailed
	}
	if len(r.Args) == 0 {
		logf("nested: no command to run")
		return proto.StatusInitFailed
	}
	dir := r.Dir
	if dir == "" {
		dir = "/"
	}
	if _, err := os.Stat(dir); err != nil {
		logf("nested: working directory: %v", err)
		return proto.StatusInitFailed
	}
	// Every ember in L1 hides XSAVE from its guests; r.Env may say
	// otherwise.
	os.Setenv(proto.GuestXSAVEEnv, "off")
	applyEnv(r.Env)
	if os.Getenv("XDG_CACHE_HOME") == "" {
		// L1's root is the host's, read-only: whatever wants a cache
		// directory (ember itself creates one at start, through Go's
		// x/tools) gets L1's tmpfs instead of an error on the console.
		os.Setenv("XDG_CACHE_HOME", "/tmp/.cache")
	}
	rawConsole(0)
	if err := writeFileSync(filepath.Join(proto.IOMount, proto.StartedFile), ""); err != nil {
		logf("nested: %v", err)
	}
	if r.Stdio {
		status, err := runOnPorts(r.Args, dir, true)
		if err == nil {
			return status
		}
		logf("nested: %v; running ember on the console", err)
	}
	cmd, err := startOnConsole(r.Args, dir)
	if err != nil {
		logf("nested: %v", err)
		return proto.StatusInitFailed
	}
	return waitReaping(cmd.Process.Pid)
}

func writeFileSync(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(s)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// rawConsole stops the L1 console from rewriting the bytes that pass
// through it (no CR insertion, no echo, no signal keys): the inner ember's
// console stream is already final, and its own terminal handling decides.
func rawConsole(fd int) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// heartbeat writes a byte to dev at offset off (an I/O port through
// /dev/port, whose output the host watches) every second for as long as
// L1 lives, so the host can tell a stuck L1 (a kernel lockup, a frozen
// emulator) from a slow one and end it.
func heartbeat(dev string, off int64) {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		logf("nested: heartbeat: %v (the host will take L1 for stuck)", err)
		return
	}
	for {
		if _, err := f.WriteAt([]byte{'.'}, off); err != nil {
			logf("nested: heartbeat: %v", err)
			return
		}
		time.Sleep(time.Second)
	}
}

// KVM ioctls (include/uapi/linux/kvm.h) that take no pointer.
const (
	kvmCreateVM      = 0xae01
	kvmCreateVCPU    = 0xae41
	kvmCreateIRQChip = 0xae60
)

// holdKVMKeys creates a VM with an in-kernel irqchip and one vCPU (which
// never runs) and keeps it open for as long as L1 lives.
//
// Why: the first VM on a host enables KVM's static keys (the scheduler's
// preempt notifiers, the LAPIC "software disabled" key) and the last one
// to go disables them again; each flip rewrites kernel text on the running
// L1 CPUs (text_poke with an int3 breakpoint and IPIs). Under QEMU's
// software emulator, with the host busy, such cross-CPU code patching has
// wedged both L1 vCPUs for good (soft lockups at the patched jump in
// finish_task_switch) mid-test-suite. Holding one VM keeps every key set:
// the keys flip once, here, before any guest runs, and never again.
func holdKVMKeys() error {
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("holding a KVM VM: %w", err)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(kvm), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("holding a KVM VM: KVM_CREATE_VM: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, vm, kvmCreateIRQChip, 0); errno != 0 {
		return fmt.Errorf("holding a KVM VM: KVM_CREATE_IRQCHIP: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, vm, kvmCreateVCPU, 0); errno != 0 {
		return fmt.Errorf("holding a KVM VM: KVM_CREATE_VCPU: %w", errno)
	}
	// The descriptors stay open (close-on-exec keeps them from children).
	unix.CloseOnExec(int(vm))
	return nil
}
