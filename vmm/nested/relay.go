package nested

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ember-vmm/ember/devices/virtio/rng"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
)

// The vsock relay. A VM's vsock device lives in L1, its host side is a
// unix socket on this host. QEMU's user-mode network gives L1 a NIC on
// which the gateway reaches this host's loopback, and forwards a loopback
// port of this host into L1. Host-initiated connections travel the
// forward, guest-initiated ones the gateway. Loopback ports are open to
// every local user (a unix socket has permissions), so each connection
// starts with a secret only the two ember processes know.
const (
	// RelayL1Addr is L1's address on the relay NIC.
	RelayL1Addr  = "10.0.2.15"
	relayGateway = "10.0.2.2"
	relayL1Port  = 7000
	relayMagic   = "EMBER-RELAY"
	relayTimeout = 5 * time.Second
	maxRelayLine = 128
)

// VsockRelay is the L1 end's configuration, carried in the plan.
type VsockRelay struct {
	Token string `json:"token"`
	// Listen is where L1 accepts host-initiated connections.
	Listen string `json:"listen"`
	// Dial is the host's listener for guest-initiated ones, seen from L1.
	Dial string `json:"dial"`
}

// HostRelay is the host end: it listens on the user's socket and on a
// loopback port for L1.
type HostRelay struct {
	uds     string
	ln      *net.UnixListener
	back    *net.TCPListener
	fwdPort int
	token   string
	log     *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

// StartHostRelay listens on uds (which must not exist) and on a loopback
// port for L1's connections; Close removes the socket.
func StartHostRelay(uds string, log *slog.Logger) (*HostRelay, error) {
	var tok [16]byte
	_, _ = io.ReadFull(rng.Source, tok[:])
	h := &HostRelay{uds: uds, token: hex.EncodeToString(tok[:]), log: log, conns: map[net.Conn]bool{}}
	var err error
	if h.ln, err = vsock.ListenUDS(uds); err != nil {
		return nil, err
	}
	if h.back, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		h.ln.Close()
		return nil, fmt.Errorf("vsock relay: %w", err)
	}
	// QEMU takes the forward's port on its command line; a port that was
	// free a moment ago is the best there is (QEMU fails if it is taken).
	pick, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("vsock relay: %w", err)
	}
	h.fwdPort = pick.Addr().(*net.TCPAddr).Port
	pick.Close()
	h.wg.Add(2)
	go h.serve(h.ln, h.serveHost)
	go h.serve(h.back, h.serveL1)
	return h, nil
}

// Inner is the L1 end's configuration.
func (h *HostRelay) Inner() VsockRelay {
	return VsockRelay{Token: h.token, Listen: net.JoinHostPort(RelayL1Addr, strconv.Itoa(relayL1Port)),
		Dial: net.JoinHostPort(relayGateway, strconv.Itoa(h.back.Addr().(*net.TCPAddr).Port))}
}

// hostFwd is QEMU's hostfwd rule for the forward into L1.
func (h *HostRelay) hostFwd() string {
	return fmt.Sprintf("tcp:127.0.0.1:%d-%s:%d", h.fwdPort, RelayL1Addr, relayL1Port)
}

// Close stops both listeners, ends every relayed connection and removes
// the socket file.
func (h *HostRelay) Close() error {
	h.mu.Lock()
	h.closed = true
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	err := h.ln.Close()
	if h.back != nil {
		h.back.Close()
	}
	h.wg.Wait()
	return err
}

// track registers c for Close; false if the relay is closed already.
func (h *HostRelay) track(cs ...net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		h.conns[c] = true
	}
	return true
}

func (h *HostRelay) untrack(cs ...net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range cs {
		delete(h.conns, c)
	}
}

// serve accepts on ln until it is closed and hands each connection,
// tracked for Close, to handle on a goroutine of its own.
func (h *HostRelay) serve(ln net.Listener, handle func(net.Conn)) {
	defer h.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			h.log.Warn("vsock relay: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			if !h.track(c) {
				return
			}
			defer h.untrack(c)
			handle(c)
		}()
	}
}

// serveHost forwards host programs' connections into L1, where the
// device reads their CONNECT line.
func (h *HostRelay) serveHost(c net.Conn) {
	t, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(h.fwdPort), relayTimeout)
	if err != nil {
		h.log.Warn("vsock relay: into L1", "err", err)
		c.Close()
		return
	}
	if !h.track(t) {
		c.Close()
		return
	}
	defer h.untrack(t)
	if _, err := io.WriteString(t, relayMagic+" "+h.token+"\n"); err != nil {
		c.Close()
		t.Close()
		return
	}
	splice(c, t)
}

// serveL1 takes L1's connections for host ports and connects each to
// <uds>_<port>.
func (h *HostRelay) serveL1(t net.Conn) {
	_ = t.SetDeadline(time.Now().Add(relayTimeout))
	f := strings.Fields(readLine(t))
	if len(f) != 3 || f[0] != relayMagic || subtle.ConstantTimeCompare([]byte(f[1]), []byte(h.token)) != 1 {
		t.Close()
		return
	}
	port, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		t.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), relayTimeout)
	c, err := vsock.DialUDS(ctx, h.uds, uint32(port))
	cancel()
	if err != nil {
		// L1's device answers the guest with a reset.
		t.Close()
		return
	}
	if !h.track(c) {
		t.Close()
		return
	}
	defer h.untrack(c)
	_ = t.SetDeadline(time.Time{})
	if _, err := io.WriteString(t, "OK\n"); err != nil {
		c.Close()
		t.Close()
		return
	}
	splice(c, t)
}

// splice copies both ways, passing each end-of-stream on as a half
// close, and closes both when both directions are done.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if hc, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = hc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// readLine reads one short line a byte at a time, so nothing after it
// is consumed; "" on error or an overlong line.
func readLine(c net.Conn) string {
	var b [1]byte
	var line []byte
	for len(line) < maxRelayLine {
		if _, err := c.Read(b[:]); err != nil {
			return ""
		}
		if b[0] == '\n' {
			return string(line)
		}
		line = append(line, b[0])
	}
	return ""
}

// Vsock returns the L1 end as the device's host side: a listener for
// host-initiated connections and a dialer for guest-initiated ones.
func (r VsockRelay) Vsock() (vsock.Listener, func(ctx context.Context, port uint32) (net.Conn, error), error) {
	// Addresses are parsed, not resolved: the VMM process that runs this
	// links no DNS resolver.
	la, err1 := netip.ParseAddrPort(r.Listen)
	da, err2 := netip.ParseAddrPort(r.Dial)
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, fmt.Errorf("vsock relay in L1: %w", err)
	}
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(la))
	if err != nil {
		return nil, nil, fmt.Errorf("vsock relay in L1: %w", err)
	}
	l := &l1Listener{ln: ln, token: r.Token, ch: make(chan net.Conn), wake: make(chan struct{}), done: make(chan struct{})}
	go l.serve()
	dial := func(ctx context.Context, port uint32) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialTCP(ctx, "tcp", netip.AddrPort{}, da)
		if err != nil {
			return nil, err
		}
		dl, ok := ctx.Deadline()
		if !ok {
			dl = time.Now().Add(relayTimeout)
		}
		_ = c.SetDeadline(dl)
		if _, err := fmt.Fprintf(c, "%s %s %d\n", relayMagic, r.Token, port); err != nil {
			c.Close()
			return nil, err
		}
		if readLine(c) != "OK" {
			c.Close()
			return nil, fmt.Errorf("vsock relay: host port %d refused", port)
		}
		_ = c.SetDeadline(time.Time{})
		return c, nil
	}
	return l, dial, nil
}

// l1Listener hands the device the connections that carry the secret.
type l1Listener struct {
	ln    net.Listener
	token string
	ch    chan net.Conn

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes
	done     chan struct{}
	once     sync.Once
}

func (l *l1Listener) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(relayTimeout))
			f := strings.Fields(readLine(c))
			if len(f) != 2 || f[0] != relayMagic || subtle.ConstantTimeCompare([]byte(f[1]), []byte(l.token)) != 1 {
				c.Close()
				return
			}
			_ = c.SetReadDeadline(time.Time{})
			select {
			case l.ch <- c:
			case <-l.done:
				c.Close()
			}
		}()
	}
}

func (l *l1Listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		dl, wake := l.deadline, l.wake
		l.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		var c net.Conn
		var err error
		select {
		case c = <-l.ch:
		case <-timeout:
			err = os.ErrDeadlineExceeded
		case <-wake:
		case <-l.done:
			err = net.ErrClosed
		}
		if t != nil {
			t.Stop()
		}
		if c != nil || err != nil {
			return c, err
		}
	}
}

func (l *l1Listener) SetDeadline(t time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deadline = t
	close(l.wake)
	l.wake = make(chan struct{})
	return nil
}

func (l *l1Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.ln.Close()
}
