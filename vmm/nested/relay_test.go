package nested

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio/vsock"
)

// relayPair is both relay ends on this host's loopback, with L1's
// listener where the host end's forward points.
func relayPair(t *testing.T) (*HostRelay, string, vsock.Listener, func(context.Context, uint32) (net.Conn, error)) {
	t.Helper()
	uds := filepath.Join(t.TempDir(), "v.sock")
	h, err := StartHostRelay(uds, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ir := h.Inner()
	ir.Listen = "127.0.0.1:" + strconv.Itoa(h.fwdPort)
	ir.Dial = h.back.Addr().String()
	ln, dial, err := ir.Vsock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return h, uds, ln, dial
}

func TestRelayHostToGuest(t *testing.T) {
	_, uds, ln, _ := relayPair(t)
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "CONNECT 52\nping"); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	g, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	got, err := io.ReadAll(g)
	if err != nil || string(got) != "CONNECT 52\nping" {
		t.Fatalf("L1 end read %q, %v; want the CONNECT line and the data, then end of stream", got, err)
	}
	io.WriteString(g, "pong")
	g.Close()
	back, err := io.ReadAll(c)
	if err != nil || string(back) != "pong" {
		t.Fatalf("host read %q, %v; want pong", back, err)
	}
}

func TestRelayGuestToHost(t *testing.T) {
	_, uds, _, dial := relayPair(t)
	hl, err := net.Listen("unix", uds+"_77")
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		c, err := hl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo:"+line)
	}()
	g, err := dial(ctx, 77)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	io.WriteString(g, "hello\n")
	got, err := io.ReadAll(g)
	if err != nil || string(got) != "echo:hello\n" {
		t.Fatalf("read %q, %v; want echo:hello", got, err)
	}
	if _, err := dial(ctx, 78); err == nil {
		t.Fatal("dial to a host port nobody listens on succeeded")
	}
}

// A local program that connects to either loopback port without the
// secret reaches nothing.
func TestRelayNeedsToken(t *testing.T) {
	h, uds, ln, _ := relayPair(t)
	hl, err := net.Listen("unix", uds+"_5")
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := hl.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", h.back.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, relayMagic+" 00112233 5\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("a wrong secret got an answer: %q", b)
	}
	c.Close()
	select {
	case <-accepted:
		t.Fatal("a wrong secret reached the host listener")
	case <-time.After(200 * time.Millisecond):
	}

	f, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(h.fwdPort))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(f, relayMagic+" nope\nCONNECT 5\n")
	ln.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if g, err := ln.Accept(); err == nil {
		g.Close()
		t.Fatal("a wrong secret reached the device")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Accept after the deadline: %v, want a timeout", err)
	}
	f.Close()
}

// Close ends relayed connections and removes the socket file.
func TestRelayClose(t *testing.T) {
	h, uds, ln, _ := relayPair(t)
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT 1\n")
	g, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("relayed connection still open after Close: %v", err)
	}
	if _, err := os.Lstat(uds); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
}
