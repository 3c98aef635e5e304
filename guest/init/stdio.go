package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

const (
	// portsDir is where Linux lists virtio-console ports with their names.
	portsDir = "/sys/class/virtio-ports"
	// consoleDriver exists once the virtio_console driver is registered
	// (built in, or its module loaded): without it no port will come.
	consoleDriver = "/sys/bus/virtio/drivers/virtio_console"
	// portWait bounds the wait for the ports: the driver adds them as the
	// device announces them, just after its module loads.
	portWait = 5 * time.Second
	// quietAfterExit: once the command has exited, its output pipes are
	// read until they stay empty this long (a daemon it left behind may
	// hold them open for ever).
	quietAfterExit = 200 * time.Millisecond
	// ackWait bounds the wait for the host to confirm it has the output.
	ackWait = 30 * time.Second
)

// findPorts returns the device paths of the named ports, waiting for the
// driver to add them.
func findPorts(root, driver string, names ...string) (map[string]string, error) {
	if _, err := os.Stat(driver); err != nil {
		return nil, fmt.Errorf("this kernel has no virtio_console driver (%s)", driver)
	}
	deadline := time.Now().Add(portWait)
	for {
		found := map[string]string{}
		dirs, _ := os.ReadDir(root)
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(root, d.Name(), "name"))
			if err == nil {
				found[strings.TrimSpace(string(b))] = "/dev/" + d.Name()
			}
		}
		missing := []string{}
		for _, n := range names {
			if found[n] == "" {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtio-console ports %s not found in %s after %s (is virtio_console loaded?)", strings.Join(missing, ", "), root, portWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runOnPorts runs args with its stdin, stdout and stderr carried by the
// virtio-console ports, through pipes: a pipe can be reopened through
// /dev/stdout and /proc/self/fd (a port opens once), and init sees the
// command's output end. It returns the command's exit status, after its
// output reached the ports.
//
// framed (the nested L1 guest) sends the output in proto frames and
// waits for the host's acknowledgement of each stream's end.
func runOnPorts(args []string, dir string, framed bool) (int, error) {
	ports, err := findPorts(portsDir, consoleDriver, proto.StdinPort, proto.StdoutPort, proto.StderrPort)
	if err != nil {
		return 0, err
	}
	open := func(name string, flag int) (*os.File, error) {
		return os.OpenFile(ports[name], flag|unix.O_CLOEXEC, 0)
	}
	in, err := open(proto.StdinPort, os.O_RDONLY)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	outFlag := os.O_WRONLY
	if framed {
		outFlag = os.O_RDWR // the acknowledgement comes back
	}
	out, err := open(proto.StdoutPort, outFlag)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	errp, err := open(proto.StderrPort, outFlag)
	if err != nil {
		return 0, err
	}
	defer errp.Close()

	var pipes [3][2]*os.File // stdin, stdout, stderr: read end, write end
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		defer r.Close()
		defer w.Close()
		pipes[i] = [2]*os.File{r, w}
	}
	cmd, err := startSession(args, dir, pipes[0][0], pipes[1][1], pipes[2][1], false)
	if err != nil {
		// The user's stderr is where this belongs.
		fmt.Fprintf(errp, "ember-init: %v\n", err)
		return proto.StatusInitFailed, nil
	}
	// init keeps only its own ends.
	pipes[0][0].Close()
	pipes[1][1].Close()
	pipes[2][1].Close()

	go func() {
		// Host input until its end, then the command's end of file. A
		// command that exits without reading leaves this blocked: init
		// ends the VM anyway.
		_, _ = io.Copy(pipes[0][1], in)
		pipes[0][1].Close()
	}()
	var wg sync.WaitGroup
	var exited atomic.Bool
	for _, p := range []struct{ dst, src *os.File }{{out, pipes[1][0]}, {errp, pipes[2][0]}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !framed {
				pump(p.dst, p.src, &exited)
				return
			}
			fw := &frameWriter{w: p.dst}
			pump(fw, p.src, &exited)
			if err := fw.end(p.dst, ackWait); err != nil {
				logf("command output: %v", err)
			}
		}()
	}
	status := waitReaping(cmd.Process.Pid)
	exited.Store(true)
	quiet := time.Now().Add(quietAfterExit)
	_ = pipes[1][0].SetReadDeadline(quiet)
	_ = pipes[2][0].SetReadDeadline(quiet)
	wg.Wait()
	return status, nil
}

// pump copies the command's output to a port until the pipe ends, or,
// once the command exited, until it stays empty for quietAfterExit.
func pump(dst io.Writer, src *os.File, exited *atomic.Bool) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				logf("command output: %v", werr)
				return
			}
			if exited.Load() {
				_ = src.SetReadDeadline(time.Now().Add(quietAfterExit))
			}
		}
		if err != nil {
			// End of file, or quiet for long enough after the exit.
			return
		}
	}
}

// frameWriter writes proto frames.
type frameWriter struct {
	w   io.Writer
	hdr [proto.FrameHeader]byte
}

func (f *frameWriter) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		n := min(len(p), proto.FrameMax)
		binary.LittleEndian.PutUint32(f.hdr[:], uint32(n))
		if _, err := f.w.Write(f.hdr[:]); err != nil {
			return done, err
		}
		if _, err := f.w.Write(p[:n]); err != nil {
			return done, err
		}
		done += n
		p = p[n:]
	}
	return done, nil
}

// end writes the end frame and waits for the host's acknowledgement on
// port (read in a goroutine: a port read has no deadline).
func (f *frameWriter) end(port io.Reader, limit time.Duration) error {
	binary.LittleEndian.PutUint32(f.hdr[:], 0)
	if _, err := f.w.Write(f.hdr[:]); err != nil {
		return err
	}
	got := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := io.ReadFull(port, b[:])
		if err == nil && b[0] != proto.FrameAck {
			err = fmt.Errorf("host answered %q to the end of output, want %q", b[0], proto.FrameAck)
		}
		got <- err
	}()
	select {
	case err := <-got:
		return err
	case <-time.After(limit):
		return fmt.Errorf("no acknowledgement of the output from the host within %s", limit)
	}
}
