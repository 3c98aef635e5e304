package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// The console is a serial line: it has no size, so a shell on it draws its
// prompt and line editor for a terminal of unknown width. The interactive
// shell runs on a pseudo-terminal instead, whose size init sets from the
// host terminal's (run.json at start, in-band messages on resize), and init
// relays bytes between the console and the pty.

// openPTY returns a new pseudo-terminal's master and slave.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

func setWinsize(f *os.File, ws proto.Winsize) {
	_ = unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols})
}

// relayExitDrain bounds how long the shell's last output may take to reach
// the console after it exits.
const relayExitDrain = time.Second

// runOnPTY runs args (the shell) on a new pseudo-terminal relayed to
// console, with the terminal size ws, and returns its exit status. reap
// waits for the child, reaping others (init's waitReaping).
func runOnPTY(console *os.File, args []string, dir string, ws *proto.Winsize, reap func(pid int) int) (int, error) {
	master, slave, err := openPTY()
	if err != nil {
		return 0, err
	}
	defer master.Close()
	if ws != nil {
		setWinsize(master, *ws)
	}
	// The pty does the line discipline now: the console passes bytes as
	// they are, both ways.
	if t, err := unix.IoctlGetTermios(int(console.Fd()), unix.TCGETS); err == nil {
		rawConsole(int(console.Fd()))
		defer unix.IoctlSetTermios(int(console.Fd()), unix.TCSETS, t)
	}
	cmd, err := startSession(args, dir, slave, slave, slave, true)
	if err != nil {
		slave.Close()
		return 0, err
	}
	slave.Close()

	go func() {
		// Console to pty, taking resize messages out. This goroutine ends
		// with init (the console never closes).
		f := proto.ResizeFilter{OnResize: func(ws proto.Winsize) { setWinsize(master, ws) }}
		buf := make([]byte, 512)
		var out []byte
		for {
			n, err := console.Read(buf)
			if out = f.Filter(out[:0], buf[:n]); len(out) > 0 {
				if _, werr := master.Write(out); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	copied := make(chan struct{})
	go func() {
		// Pty to console, until the last holder of the slave side is gone
		// (EIO).
		_, _ = io.Copy(console, master)
		close(copied)
	}()
	status := reap(cmd.Process.Pid)
	select {
	case <-copied:
	case <-time.After(relayExitDrain):
	}
	return status, nil
}
