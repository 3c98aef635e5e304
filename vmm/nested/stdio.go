package nested

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
)

// Stdio is a command's standard streams carried between this host and
// L1 over virtio-serial ports (proto.StdinPort, …), apart from L1's
// console.
type Stdio struct {
	// Stdin feeds the command (nil: end of file at once).
	Stdin io.Reader
	// Stdout and Stderr receive its output, unframed.
	Stdout, Stderr io.Writer
}

// stdioDrain bounds the wait for the output once QEMU has exited: L1
// waits for each stream's acknowledgement before it powers off, so the
// output is normally complete by then.
const stdioDrain = 5 * time.Second

// stdioLink is QEMU's end of the ports: one unix socket each, which QEMU
// connects to at start.
type stdioLink struct {
	s     *Stdio
	paths [3]string
	lns   [3]*net.UnixListener
	wg    sync.WaitGroup // the output copies

	mu    sync.Mutex
	conns []net.Conn
	errs  []error
}

func startStdio(dir string, s *Stdio) (*stdioLink, error) {
	l := &stdioLink{s: s}
	for i, name := range []string{"stdin", "stdout", "stderr"} {
		l.paths[i] = filepath.Join(dir, name+".sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: l.paths[i], Net: "unix"})
		if err != nil {
			l.close()
			return nil, fmt.Errorf("nested: %w", err)
		}
		l.lns[i] = ln
	}
	go l.serveStdin()
	for i, w := range []io.Writer{s.Stdout, s.Stderr} {
		l.wg.Add(1)
		go l.serveOutput(l.lns[i+1], w)
	}
	return l, nil
}

// args are QEMU's virtio-serial device, the three ports and their sockets.
func (l *stdioLink) args() []string {
	a := []string{"-device", "virtio-serial-pci,max_ports=4"}
	for i, name := range []string{proto.StdinPort, proto.StdoutPort, proto.StderrPort} {
		id := fmt.Sprintf("stdio%d", i)
		a = append(a, "-chardev", "socket,id="+id+",path="+strings.ReplaceAll(l.paths[i], ",", ",,")+",server=off",
			"-device", "virtserialport,chardev="+id+",name="+name)
	}
	return a
}

func (l *stdioLink) accept(ln *net.UnixListener) (net.Conn, error) {
	c, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
	return c, nil
}

// serveStdin copies the host's input to L1; its end closes the port's
// host side, which L1 reads as end of file.
func (l *stdioLink) serveStdin() {
	c, err := l.accept(l.lns[0])
	if err != nil {
		return
	}
	if l.s.Stdin != nil {
		_, _ = io.Copy(c, l.s.Stdin)
	}
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
}

// serveOutput decodes L1's frames to w and acknowledges the end frame.
func (l *stdioLink) serveOutput(ln *net.UnixListener, w io.Writer) {
	defer l.wg.Done()
	c, err := l.accept(ln)
	if err != nil {
		return
	}
	if err := copyFrames(w, c); err != nil {
		l.mu.Lock()
		l.errs = append(l.errs, err)
		l.mu.Unlock()
		return
	}
	_, _ = c.Write([]byte{proto.FrameAck})
}

// copyFrames writes the payload of each frame from r to w until the end
// frame. L1 is a guest: lengths are checked.
func copyFrames(w io.Writer, r io.Reader) error {
	var hdr [proto.FrameHeader]byte
	buf := make([]byte, proto.FrameMax)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("L1 output ended without its end frame: %w", err)
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == 0 {
			return nil
		}
		if n > proto.FrameMax {
			return fmt.Errorf("L1 output frame of %d bytes (at most %d)", n, proto.FrameMax)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("L1 output frame cut short: %w", err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			// The reader of our output went away: keep draining L1.
			w = io.Discard
		}
	}
}

// finish waits, within stdioDrain, for the output copies (QEMU has
// exited, so its sockets are at their end), then closes everything.
// The error tells of output that did not arrive whole.
func (l *stdioLink) finish() error {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-time.After(stdioDrain):
		err = errors.New("L1's output did not end within " + stdioDrain.String())
	}
	l.close()
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(append(l.errs, err)...)
}

func (l *stdioLink) close() {
	for _, ln := range l.lns {
		if ln != nil {
			ln.Close()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}
