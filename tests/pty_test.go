package tests

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// terminal is a pseudo-terminal ember runs on, as in a terminal emulator:
// the test types into the master side and reads what ember shows.
type terminal struct {
	t      *testing.T
	master *os.File
	slave  *os.File
	mu     sync.Mutex
	out    bytes.Buffer
	seen   int // how much of out expect has consumed
	done   chan struct{}
}

func newTerminal(t *testing.T, rows, cols uint16) *terminal {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	term := &terminal{t: t, master: m, slave: s, done: make(chan struct{})}
	term.resize(rows, cols)
	go func() {
		defer close(term.done)
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { m.Close(); s.Close() })
	return term
}

// resize changes the terminal's size; the kernel sends SIGWINCH to its
// foreground process group (ember).
func (term *terminal) resize(rows, cols uint16) {
	if err := unix.IoctlSetWinsize(int(term.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		term.t.Fatal(err)
	}
}

// start runs cmd as the session leader on the terminal.
func (term *terminal) start(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = term.slave, term.slave, term.slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		term.t.Fatal(err)
	}
}

func (term *terminal) typeIn(s string) {
	if _, err := term.master.Write([]byte(s)); err != nil {
		term.t.Fatal(err)
	}
}

// expect waits until want appears in output not seen before.
func (term *terminal) expect(want string, limit time.Duration) {
	term.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		term.mu.Lock()
		s := term.out.String()
		term.mu.Unlock()
		if i := strings.Index(s[term.seen:], want); i >= 0 {
			term.seen += i + len(want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	term.mu.Lock()
	defer term.mu.Unlock()
	term.t.Fatalf("no %q on the terminal within %s; it shows:\n%s", want, limit, term.out.String())
}

func (term *terminal) String() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}

// interactiveSession drives ember's interactive shell on a terminal of
// 30x120: the shell sees that size, then 40x100 after a resize; Ctrl-A x
// ends ember with status 0.
func interactiveSession(t *testing.T, limit time.Duration, args ...string) {
	term := newTerminal(t, 30, 120)
	cmd := exec.Command(env.ember, args...)
	term.start(cmd)
	waited := make(chan error, 1)
	exited := make(chan struct{})
	go func() { waited <- cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	term.expect("Ctrl-A x quits", limit)
	// u-root's stty prints the terminal's rows and columns.
	deadline := time.Now().Add(limit)
	for !strings.Contains(term.String(), "rows:30 cols:120") {
		if time.Now().After(deadline) {
			t.Fatalf("the shell never saw a 30x120 terminal:\n%s", term.String())
		}
		term.typeIn("stty\r")
		select {
		case err := <-waited:
			t.Fatalf("ember ended (%v) before the shell answered:\n%s", err, term.String())
		case <-time.After(3 * time.Second):
		}
	}
	term.resize(40, 100)
	time.Sleep(time.Second)
	term.typeIn("stty\r")
	term.expect("rows:40 cols:100", limit)
	term.typeIn("\x01x")
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("ember after Ctrl-A x: %v\n%s", err, term.String())
		}
	case <-time.After(limit):
		t.Fatalf("ember did not end on Ctrl-A x:\n%s", term.String())
	}
	if strings.Contains(term.String(), "goroutine ") {
		t.Fatalf("ember crashed:\n%s", term.String())
	}
}
