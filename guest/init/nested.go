package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// nestedMain is init's job as the L1 host of --accel nested: with KVM
// loaded, it shares the host's root read-only, chroots into it and runs the
// ember command line it was given, then leaves its exit status in the
// read-write share for the host.
func nestedMain(r *proto.Run) int {
	n := r.Nested
	if _, err := os.Stat("/dev/kvm"); err != nil {
		logf("nested: /dev/kvm missing after loading kvm-amd: %v (does the emulated CPU offer SVM?)", err)
		return proto.StatusInitFailed
	}
	const root = "/host"
	p9 := "trans=virtio,version=9p2000.L,msize=512000"
	mountAll([]mnt{
		{n.RootTag, root, "9p", unix.MS_RDONLY, p9 + ",cache=loose"},
		{"proc", root + "/proc", "proc", 0, ""},
		{"sysfs", root + "/sys", "sysfs", 0, ""},
		{"devtmpfs", root + "/dev", "devtmpfs", 0, ""},
		{"devpts", root + "/dev/pts", "devpts", 0, "ptmxmode=666"},
		{"tmpfs", root + "/tmp", "tmpfs", 0, "mode=1777"},
		// The host's /run means nothing here; a tmpfs gives the IO share a
		// mount point without touching the host.
		{"tmpfs", root + "/run", "tmpfs", 0, "mode=0755"},
	})
	io := root + proto.IOMount
	if err := os.MkdirAll(io, 0o755); err != nil {
		logf("nested: %v", err)
		return proto.StatusInitFailed
	}
	mountAll([]mnt{{n.IOTag, io, "9p", 0, p9}})
	for _, m := range n.Mounts {
		var fl uintptr
		opts := p9
		if m.ReadOnly {
			fl, opts = unix.MS_RDONLY, p9+",cache=loose"
		}
		mountAll([]mnt{{m.Tag, filepath.Join(root, m.Path), "9p", fl, opts}})
	}
	if err := unix.Chroot(root); err != nil {
		logf("nested: chroot: %v", err)
		return proto.StatusInitFailed
	}
	dir := r.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		logf("nested: %v", err)
		_ = os.Chdir("/")
	}
	rawConsole(0)
	status := proto.StatusInitFailed
	if len(r.Args) == 0 {
		logf("nested: no command")
	} else if path, err := exec.LookPath(r.Args[0]); err != nil {
		logf("nested: %v", err)
	} else {
		cmd := exec.Command(path, r.Args[1:]...)
		cmd.Env = append(os.Environ(), r.Env...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			logf("nested: %v", err)
		} else {
			status = waitReaping(cmd.Process.Pid)
		}
	}
	if err := os.WriteFile(filepath.Join(proto.IOMount, proto.StatusFile), []byte(strconv.Itoa(status)+"\n"), 0o644); err != nil {
		logf("nested: writing status: %v", err)
	}
	unix.Sync()
	return status
}

// rawConsole stops the L1 console from rewriting the bytes that pass
// through it (no CR insertion, no echo): the L2 console is already final.
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
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
}
