package plan

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair; the returned file is its
// terminal side, sized rows x cols.
func openPTY(t *testing.T, rows, cols uint16) *os.File {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return tty
}

// The shell starts with the user's terminal size: the run file carries
// it. A plan without a shell, or without a terminal, carries none.
func TestSizeFrom(t *testing.T) {
	tty := openPTY(t, 30, 120)
	p := &Plan{Interactive: true}
	p.SizeFrom(tty)
	if p.Run.Winsize == nil || p.Run.Winsize.Rows != 30 || p.Run.Winsize.Cols != 120 {
		t.Fatalf("winsize %+v, want 30x120", p.Run.Winsize)
	}
	for _, c := range []struct {
		name string
		p    *Plan
		term *os.File
	}{{"not interactive", &Plan{}, tty}, {"no terminal", &Plan{Interactive: true}, nil}} {
		c.p.SizeFrom(c.term)
		if c.p.Run.Winsize != nil {
			t.Errorf("%s: winsize %+v, want none", c.name, c.p.Run.Winsize)
		}
	}
}
