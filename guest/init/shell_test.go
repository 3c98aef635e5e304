package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// TestShellOnPTY: the shell sees the host terminal's size at start and
// after an in-band resize message, and its exit status comes back. A pty
// pair plays the serial console.
func TestShellOnPTY(t *testing.T) {
	if _, err := exec.LookPath("stty"); err != nil {
		t.Skip("SKIP: no stty on this host")
	}
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("SKIP: no /dev/ptmx")
	}
	cm, cs, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	defer cs.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(cm)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("console closed before %q", want)
				}
				if strings.Contains(l, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q on the console", want)
			}
		}
	}
	status := make(chan int, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := runOnPTY(cs, []string{"sh"}, "/", &proto.Winsize{Rows: 30, Cols: 120}, func(pid int) int {
			var ws unix.WaitStatus
			if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
				return -1
			}
			return ws.ExitStatus()
		})
		errc <- err
		status <- s
	}()
	cm.Write([]byte("stty size\n"))
	expect("30 120")
	cm.Write(append(proto.ResizeMessage(40, 100), "stty size\n"...))
	expect("40 100")
	cm.Write([]byte("exit 3\n"))
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
		if s := <-status; s != 3 {
			t.Fatalf("exit status %d, want 3", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the shell's exit did not end the relay")
	}
}
