package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

const defaultPath = "/bin:/bbin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin"

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, "ember-init: "+format+"\n", a...) }

func initMain() {
	h := openHost()
	h.mark(proto.MarkInit)
	bootNS := bootTime()

	mountBasics()
	setConsole()
	os.Setenv("PATH", defaultPath)
	os.Setenv("HOME", "/root")
	if os.Getenv("TERM") == "" {
		os.Setenv("TERM", "linux")
	}
	os.Setenv("EMBER_INIT_BOOTTIME_NS", strconv.FormatInt(bootNS, 10))
	loadModules(proto.ModulesFile)

	run, err := readRun(proto.RunFile)
	if err != nil {
		logf("%v", err)
		h.exit(proto.StatusInitFailed)
	}
	if run.Nested != nil {
		h.exit(nestedMain(run))
	}
	h.mark(proto.MarkCommand)
	h.exit(runCommand(run))
}

// bootTime is CLOCK_BOOTTIME now: how long the kernel took to reach init.
func bootTime() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

type mnt struct {
	src, dst, fstype string
	flags            uintptr
	data             string
}

func mountAll(ms []mnt) {
	for _, m := range ms {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			logf("mkdir %s: %v", m.dst, err)
			continue
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", m.fstype, m.dst, err)
		}
	}
}

func mountBasics() {
	mountAll([]mnt{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	})
}

// setConsole points stdio at a fresh /dev/console (the kernel's may be
// missing if the initramfs lacked /dev/console).
func setConsole() {
	f, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		return
	}
	for _, fd := range []int{0, 1, 2} {
		_ = unix.Dup2(int(f.Fd()), fd)
	}
	f.Close()
}

// loadModules loads the modules listed in path in order; a failure is
// reported and the boot goes on.
func loadModules(path string) {
	names, err := readModuleList(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			logf("%v", err)
		}
		return
	}
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			logf("module %s: %v", n, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			logf("module %s: %v", n, err)
		}
	}
}

func readModuleList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// readRun reads the run file; a missing one means an interactive shell.
func readRun(path string) (*proto.Run, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &proto.Run{}, nil
	}
	if err != nil {
		return nil, err
	}
	var r proto.Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &r, nil
}

// runCommand runs the command (or a shell) on the console as a session
// leader with the console as controlling terminal, reaps orphans while it
// runs, and returns its exit status.
func runCommand(r *proto.Run) int {
	args := r.Args
	if len(args) == 0 {
		sh := r.Shell
		if sh == "" {
			sh = "gosh"
			if _, err := exec.LookPath(sh); err != nil {
				sh = "sh"
			}
		}
		args = []string{sh}
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		logf("command %q not found in PATH (%s)", args[0], os.Getenv("PATH"))
		return proto.StatusInitFailed
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Env = append(os.Environ(), r.Env...)
	cmd.Dir = r.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: isTTY(0), Ctty: 0}
	// PID 1 ignores the terminal's job-control signals itself.
	signal.Ignore(syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP, syscall.SIGTTOU, syscall.SIGTTIN)
	if err := cmd.Start(); err != nil {
		logf("start %s: %v", args[0], err)
		return proto.StatusInitFailed
	}
	return waitReaping(cmd.Process.Pid)
}

func isTTY(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// waitReaping waits for pid while reaping every other child, as PID 1 must.
func waitReaping(pid int) int {
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			logf("wait: %v", err)
			return proto.StatusInitFailed
		}
		if p == pid {
			return exitStatus(ws)
		}
	}
}

// exitStatus maps a wait status to a shell-style exit status.
func exitStatus(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return proto.StatusInitFailed
}

// info prints the guest facts ember-info is for.
func info(w *os.File) error {
	u := unix.Utsname{}
	if err := unix.Uname(&u); err != nil {
		return err
	}
	fmt.Fprintf(w, "kernel: %s\n", unix.ByteSliceToString(u.Release[:]))
	fmt.Fprintf(w, "cpus: %d\n", onlineCPUs())
	if kb, err := memTotalKB("/proc/meminfo"); err == nil {
		fmt.Fprintf(w, "memory: %d MiB\n", kb/1024)
	}
	ns, _ := strconv.ParseInt(os.Getenv("EMBER_INIT_BOOTTIME_NS"), 10, 64)
	if ns > 0 {
		fmt.Fprintf(w, "boot: %d ms to init\n", time.Duration(ns).Milliseconds())
	}
	return nil
}

func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0
	}
	return countCPUList(strings.TrimSpace(string(b)))
}

// countCPUList counts a kernel CPU list such as "0-3,6".
func countCPUList(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, found := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if found {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				continue
			}
		}
		n += b - a + 1
	}
	return n
}

func memTotalKB(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", path)
}
