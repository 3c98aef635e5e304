package plan

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

// WatchResize tells the guest the terminal's new size after every
// SIGWINCH, in band on the console input; stop ends it.
func WatchResize(term *os.File, in *ConsoleInput) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-ch:
				ws, err := unix.IoctlGetWinsize(int(term.Fd()), unix.TIOCGWINSZ)
				if err == nil && ws.Row > 0 && ws.Col > 0 {
					in.Send(proto.ResizeMessage(ws.Row, ws.Col))
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
		<-finished
	}
}
