// Package vsock is virtio-vsock (virtio 1.2 §5.10) with its host side on
// unix sockets, as Firecracker users know it: a host program connects to
// the device's socket and writes "CONNECT <port>\n" to reach a guest
// listener (answered "OK <hostport>\n"); a guest connecting to the host
// (CID 2) port P reaches a listener on "<socket>_<P>". Stream sockets
// only, with the credit-based flow control of §5.10.6.3 honoured both
// ways, so neither side can make the other buffer without bound.
package vsock

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
)

// Packet header (struct virtio_vsock_hdr, §5.10.6) and its values.
const (
	hdrSize    = 44
	hostCID    = 2
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRst           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7

	shutRecv = 1
	shutSend = 2
)

// Limits.
const (
	// bufAlloc is how much guest data ember buffers per connection: the
	// credit it gives the guest.
	bufAlloc = 256 << 10
	// maxPayload bounds one packet's data (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
	maxPayload = 64 << 10
	maxConns   = 1024
	maxCtl     = 4 * maxConns
	// handshake bounds the host's CONNECT line and the guest's answer.
	handshake = 5 * time.Second
	// firstHostPort is where ports for host-initiated connections start.
	firstHostPort = 1 << 30
)

const (
	queueRX    = 0
	queueTX    = 1
	queueEvent = 2
)

// Options describe the device.
type Options struct {
	CID uint32 `json:"cid"`
	UDS string `json:"uds"`
	// Listener and Dial, when both set, replace UDS and its <UDS>_<port>
	// listeners as the host side (the relay of a VM inside a nested L1
	// guest). Listener's connections start with the CONNECT line; Dial
	// reaches the host listener for a port.
	Listener Listener                                                 `json:"-"`
	Dial     func(ctx context.Context, port uint32) (net.Conn, error) `json:"-"`
}

// Listener is where host-initiated connections come from. SetDeadline
// must wake a blocked Accept, which then fails with a timeout error.
type Listener interface {
	Accept() (net.Conn, error)
	SetDeadline(t time.Time) error
	Close() error
}

// halfCloser is a connection whose sending side can be closed alone
// (unix and TCP connections).
type halfCloser interface{ CloseWrite() error }

// header is struct virtio_vsock_hdr.
type header struct {
	srcCID, dstCID     uint64
	srcPort, dstPort   uint32
	len                uint32
	typ, op            uint16
	flags              uint32
	bufAlloc, fwdCount uint32
}

func (h *header) decode(b []byte) {
	le := binary.LittleEndian
	h.srcCID, h.dstCID = le.Uint64(b[0:]), le.Uint64(b[8:])
	h.srcPort, h.dstPort = le.Uint32(b[16:]), le.Uint32(b[20:])
	h.len = le.Uint32(b[24:])
	h.typ, h.op = le.Uint16(b[28:]), le.Uint16(b[30:])
	h.flags, h.bufAlloc, h.fwdCount = le.Uint32(b[32:]), le.Uint32(b[36:]), le.Uint32(b[40:])
}

func (h *header) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.srcCID)
	le.PutUint64(b[8:], h.dstCID)
	le.PutUint32(b[16:], h.srcPort)
	le.PutUint32(b[20:], h.dstPort)
	le.PutUint32(b[24:], h.len)
	le.PutUint16(b[28:], h.typ)
	le.PutUint16(b[30:], h.op)
	le.PutUint32(b[32:], h.flags)
	le.PutUint32(b[36:], h.bufAlloc)
	le.PutUint32(b[40:], h.fwdCount)
}

type connKey struct{ guestPort, hostPort uint32 }

const (
	stateConnecting = iota // host-initiated, REQUEST sent, no RESPONSE yet
	stateDialing           // guest-initiated, the host side not connected yet
	stateEstablished
)

// conn is one stream between a guest port and a host connection.
type conn struct {
	key   connKey
	uc    net.Conn // nil while dialing
	state int
	done  chan struct{} // closed when the connection ends
	wakeR chan struct{} // the guest gave credit
	wakeW chan struct{} // guest data to write to the host
	// guest → host
	in          []byte
	fwdCnt      uint32 // bytes written to the host side
	advertised  uint32 // fwdCnt at the last credit we told the guest
	guestNoSend bool   // guest will send no more (SHUTDOWN)
	// host → guest
	out          []byte
	txCnt        uint32 // bytes taken from the host side for the guest
	peerBuf      uint32
	peerFwd      uint32
	queued       bool // in Device.ready
	hostEOF      bool
	eofAnnounced bool
}

// credit is how many more bytes the guest can take (§5.10.6.3.1).
func (c *conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwd
	if inFlight >= c.peerBuf {
		return 0
	}
	return c.peerBuf - inFlight
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Device is one virtio-vsock device.
type Device struct {
	opts  Options
	ln    Listener
	dial  func(ctx context.Context, port uint32) (net.Conn, error)
	log   *slog.Logger
	stats virtio.Stats

	mu       sync.Mutex
	act      *virtio.Activation
	ctx      context.Context
	conns    map[connKey]*conn
	ctl      []header
	ready    []*conn
	nextPort uint32
}

// Open creates the host socket; it must not exist yet. Close removes it.
func Open(o Options, log *slog.Logger) (*Device, error) {
	if o.CID < 3 || o.CID == ^uint32(0) {
		return nil, fmt.Errorf("cid %d: expected 3 to 4294967294 (0-2 are reserved)", o.CID)
	}
	d := &Device{opts: o, ln: o.Listener, dial: o.Dial, log: log, conns: map[connKey]*conn{}, nextPort: firstHostPort}
	if d.ln != nil && d.dial != nil {
		return d, nil
	}
	ln, err := ListenUDS(o.UDS)
	if err != nil {
		return nil, err
	}
	d.ln, d.dial = ln, func(ctx context.Context, port uint32) (net.Conn, error) { return DialUDS(ctx, o.UDS, port) }
	return d, nil
}

// ListenUDS listens on the device socket path, which must not exist yet;
// closing the listener removes it.
func ListenUDS(path string) (*net.UnixListener, error) {
	if len(path) > 100 {
		return nil, fmt.Errorf("uds %s: longer than a unix socket path may be (with the _PORT suffix)", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("uds %s: already exists (a stale socket? remove it first)", path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uds %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// DialUDS connects to the host listener for port: <path>_<port>.
func DialUDS(ctx context.Context, path string, port uint32) (net.Conn, error) {
	// DialUnix, not DialContext: a unix address needs no resolver, and
	// the VMM then links none.
	var dl net.Dialer
	return dl.DialUnix(ctx, "unix", nil, &net.UnixAddr{Name: path + "_" + strconv.FormatUint(uint64(port), 10), Net: "unix"})
}

// Close stops listening and removes the socket file.
func (d *Device) Close() error { return d.ln.Close() }

func (*Device) Type() uint32               { return virtio.TypeVsock }
func (*Device) Features() uint64           { return 0 }
func (*Device) QueueMaxSizes() []uint16    { return []uint16{256, 256, 16} }
func (*Device) WriteConfig(uint64, []byte) {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

// ReadConfig is struct virtio_vsock_config: the guest's CID.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var c [8]byte
	binary.LittleEndian.PutUint64(c[:], uint64(d.opts.CID))
	clear(p)
	if off < 8 {
		copy(p, c[off:])
	}
}

// Activate starts the queue workers and the host listener.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	if !a.Queues[queueRX].Ready() || !a.Queues[queueTX].Ready() {
		return errors.New("vsock: rx and tx queues must be set up")
	}
	d.mu.Lock()
	d.act, d.ctx = a, ctx
	d.mu.Unlock()
	_ = d.ln.SetDeadline(time.Time{})
	context.AfterFunc(ctx, func() { _ = d.ln.SetDeadline(time.Unix(1, 0)) })
	a.Go(func() error {
		return virtio.ServeChains(ctx, a, queueTX, d.transmit)
	})
	a.Go(func() error { return virtio.Serve(ctx, a, queueRX, func(q *virtio.Queue) error { return d.fillRX(q) }) })
	a.Go(func() error { d.accept(ctx); return nil })
	return nil
}

// Reset drops every connection (the workers have stopped).
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		d.closeLocked(c)
	}
	d.conns = map[connKey]*conn{}
	d.ctl, d.ready, d.act = nil, nil, nil
}

func (d *Device) fault(format string, args ...any) {
	d.stats.GuestFaults.Add(1)
	d.log.Warn("vsock: " + fmt.Sprintf(format, args...))
}

// kick wakes the rx worker; d.mu may be held.
func (d *Device) kick() {
	if d.act != nil {
		d.act.Kick(queueRX)
	}
}

// sendCtl queues a control packet to the guest; d.mu is held.
func (d *Device) sendCtl(k connKey, op uint16, flags uint32) {
	if len(d.ctl) >= maxCtl {
		d.fault("control queue full: the guest is not taking packets")
		return
	}
	d.ctl = append(d.ctl, header{srcCID: hostCID, dstCID: uint64(d.opts.CID), srcPort: k.hostPort, dstPort: k.guestPort,
		typ: typeStream, op: op, flags: flags})
	d.kick()
}

// closeLocked ends c's host side; d.mu is held.
func (d *Device) closeLocked(c *conn) {
	select {
	case <-c.done:
		return
	default:
	}
	close(c.done)
	if c.uc != nil {
		_ = c.uc.Close()
	}
	delete(d.conns, c.key)
}

// reset ends c and tells the guest; d.mu is held.
func (d *Device) reset(c *conn) {
	d.closeLocked(c)
	d.sendCtl(c.key, opRst, 0)
}

// transmit handles one packet the guest sent.
func (d *Device) transmit(ch *virtio.Chain) uint32 {
	d.stats.Requests.Add(1)
	var hb [hdrSize]byte
	r := ch.Reader()
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		d.fault("packet shorter than its header (%d bytes)", ch.ReadLen())
		return 0
	}
	var h header
	h.decode(hb[:])
	d.handle(&h, r)
	return 0
}

// handle acts on one packet from the guest (§5.10.6.4).
func (d *Device) handle(h *header, r *virtio.Reader) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := connKey{guestPort: h.srcPort, hostPort: h.dstPort}
	switch {
	case h.srcCID != uint64(d.opts.CID) || h.dstCID != hostCID:
		d.fault("packet from cid %d to cid %d (guest is %d, host %d)", h.srcCID, h.dstCID, d.opts.CID, hostCID)
		return
	case h.typ != typeStream:
		d.sendCtl(k, opRst, 0)
		return
	case h.len > maxPayload || uint64(h.len) > r.Len():
		d.fault("payload of %d bytes in a packet carrying %d", h.len, r.Len())
		if c := d.conns[k]; c != nil {
			d.reset(c)
		}
		return
	}
	c := d.conns[k]
	if c != nil {
		c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCount
		signal(c.wakeR)
	}
	switch h.op {
	case opRequest:
		if c != nil {
			d.reset(c)
			return
		}
		d.connectHost(k, h)
	case opResponse:
		if c == nil || c.state != stateConnecting {
			d.sendCtl(k, opRst, 0)
			return
		}
		c.state = stateEstablished
		// The answer goes out through the writer, ahead of any guest
		// data, so a host program that does not read cannot stall the
		// device. fwdCnt starts that many bytes below zero: the answer is
		// no guest data and frees no credit.
		ok := fmt.Sprintf("OK %d\n", k.hostPort)
		c.in = append([]byte(ok), c.in...)
		c.fwdCnt -= uint32(len(ok))
		c.advertised = c.fwdCnt
		d.start(c)
	case opRW:
		if c == nil || c.state != stateEstablished {
			d.sendCtl(k, opRst, 0)
			return
		}
		if c.guestNoSend || len(c.in)+int(h.len) > bufAlloc {
			d.fault("guest sent %d bytes beyond the credit it was given (port %d)", h.len, k.guestPort)
			d.reset(c)
			return
		}
		n := len(c.in)
		c.in = append(c.in, make([]byte, h.len)...)
		_, _ = io.ReadFull(r, c.in[n:])
		d.stats.BytesRead.Add(uint64(h.len))
		signal(c.wakeW)
	case opShutdown:
		if c == nil {
			return
		}
		if h.flags&(shutRecv|shutSend) == shutRecv|shutSend {
			d.reset(c)
			return
		}
		if h.flags&shutSend != 0 {
			c.guestNoSend = true
			signal(c.wakeW)
		}
	case opRst:
		if c != nil {
			d.closeLocked(c)
		}
	case opCreditUpdate:
	case opCreditRequest:
		if c != nil {
			d.sendCredit(c)
		}
	default:
		d.fault("unknown op %d", h.op)
		if c != nil {
			d.reset(c)
		}
	}
}

// connectHost serves a guest's connection to host port k.hostPort: it
// dials off the queue worker (a listener with a full backlog, or a relay,
// may block) and answers RESPONSE or RST; d.mu is held.
func (d *Device) connectHost(k connKey, h *header) {
	if len(d.conns) >= maxConns {
		d.sendCtl(k, opRst, 0)
		return
	}
	c := newConn(k, nil, stateDialing)
	c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCount
	d.conns[k] = c
	ctx := d.ctx
	d.act.Go(func() error {
		dctx, cancel := context.WithTimeout(ctx, handshake)
		uc, err := d.dial(dctx, k.hostPort)
		cancel()
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.conns[k] != c || c.state != stateDialing {
			// The guest reset it, or the device was reset.
			if uc != nil {
				uc.Close()
			}
			return nil
		}
		if err != nil {
			d.log.Debug("vsock: guest connection refused", "port", k.hostPort, "err", err)
			d.reset(c)
			return nil
		}
		c.uc, c.state = uc, stateEstablished
		d.start(c)
		d.sendCtl(k, opResponse, 0)
		return nil
	})
}

func newConn(k connKey, uc net.Conn, state int) *conn {
	return &conn{key: k, uc: uc, state: state, done: make(chan struct{}),
		wakeR: make(chan struct{}, 1), wakeW: make(chan struct{}, 1)}
}

// start runs c's host-side reader and writer; d.mu is held.
func (d *Device) start(c *conn) {
	a, ctx := d.act, d.ctx
	a.Go(func() error { d.reader(ctx, c); return nil })
	a.Go(func() error { d.writer(ctx, c); return nil })
}

// reader moves host data towards the guest, never more than the guest
// has credit for.
func (d *Device) reader(ctx context.Context, c *conn) {
	buf := make([]byte, maxPayload)
	for {
		d.mu.Lock()
		// Bounded by the guest's credit and by what ember holds for a
		// guest that does not take it (its buf_alloc is its own word).
		room := min(c.credit(), uint32(maxPayload), uint32(bufAlloc-min(len(c.out), bufAlloc)))
		d.mu.Unlock()
		if room == 0 {
			select {
			case <-c.wakeR:
				continue
			case <-c.done:
				return
			case <-ctx.Done():
				return
			}
		}
		n, err := c.uc.Read(buf[:room])
		d.mu.Lock()
		if n > 0 {
			c.out = append(c.out, buf[:n]...)
			c.txCnt += uint32(n)
			d.markReady(c)
		}
		if err != nil {
			select {
			case <-c.done:
			default:
				// The host side closed: tell the guest once its data is out.
				c.hostEOF = true
				d.markReady(c)
			}
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
	}
}

// markReady queues c for the rx worker; d.mu is held.
func (d *Device) markReady(c *conn) {
	if !c.queued {
		c.queued = true
		d.ready = append(d.ready, c)
	}
	d.kick()
}

// writer moves guest data to the host side and returns credit.
func (d *Device) writer(ctx context.Context, c *conn) {
	for {
		d.mu.Lock()
		b, noSend := c.in, c.guestNoSend
		c.in = nil
		d.mu.Unlock()
		if len(b) == 0 {
			if noSend {
				if hc, ok := c.uc.(halfCloser); ok {
					_ = hc.CloseWrite()
				}
				return
			}
			select {
			case <-c.wakeW:
				continue
			case <-c.done:
				return
			case <-ctx.Done():
				return
			}
		}
		_, err := c.uc.Write(b)
		d.mu.Lock()
		if err != nil {
			d.stats.Errors.Add(1)
			if _, live := d.conns[c.key]; live {
				d.reset(c)
			}
			d.mu.Unlock()
			return
		}
		c.fwdCnt += uint32(len(b))
		if c.fwdCnt-c.advertised >= bufAlloc/4 {
			d.sendCredit(c)
		}
		d.mu.Unlock()
	}
}

// sendCredit tells the guest how much it may send; d.mu is held.
func (d *Device) sendCredit(c *conn) {
	c.advertised = c.fwdCnt
	d.sendCtl(c.key, opCreditUpdate, 0)
}

// fillRX puts pending packets into the guest's receive buffers.
func (d *Device) fillRX(q *virtio.Queue) error {
	defer d.act.Interrupt(queueRX)
	for {
		d.mu.Lock()
		pending := len(d.ctl) > 0 || len(d.ready) > 0
		d.mu.Unlock()
		if !pending {
			return nil
		}
		ch, err := q.Pop()
		if err != nil || ch == nil {
			return err
		}
		w := ch.Writer()
		if w.Len() < hdrSize {
			d.fault("receive buffer of %d bytes (a header takes %d)", w.Len(), hdrSize)
			q.Push(ch, 0)
			continue
		}
		d.mu.Lock()
		h, payload := d.nextPacket(w.Len() - hdrSize)
		d.mu.Unlock()
		var hb [hdrSize]byte
		h.encode(hb[:])
		_, _ = w.Write(hb[:])
		_, _ = w.Write(payload)
		d.stats.BytesWritten.Add(uint64(len(payload)))
		q.Push(ch, w.Written())
	}
}

// nextPacket picks the next packet for the guest: control packets first,
// then data from ready connections in turn. d.mu is held.
func (d *Device) nextPacket(room uint64) (header, []byte) {
	for len(d.ctl) > 0 || len(d.ready) > 0 {
		if len(d.ctl) > 0 {
			h := d.ctl[0]
			d.ctl = d.ctl[1:]
			if c := d.conns[connKey{guestPort: h.dstPort, hostPort: h.srcPort}]; c != nil {
				h.bufAlloc, h.fwdCount = bufAlloc, c.fwdCnt
			} else {
				h.bufAlloc = bufAlloc
			}
			return h, nil
		}
		c := d.ready[0]
		d.ready = d.ready[1:]
		c.queued = false
		if _, live := d.conns[c.key]; !live {
			continue
		}
		h := header{srcCID: hostCID, dstCID: uint64(d.opts.CID), srcPort: c.key.hostPort, dstPort: c.key.guestPort,
			typ: typeStream, op: opRW, bufAlloc: bufAlloc, fwdCount: c.fwdCnt}
		if len(c.out) == 0 {
			if c.hostEOF && !c.eofAnnounced {
				c.eofAnnounced = true
				h.op, h.flags = opShutdown, shutRecv|shutSend
				return h, nil
			}
			continue
		}
		n := min(uint64(len(c.out)), room, maxPayload)
		payload := c.out[:n:n]
		c.out = c.out[n:]
		signal(c.wakeR)
		if len(c.out) > 0 || (c.hostEOF && !c.eofAnnounced) {
			c.queued = true
			d.ready = append(d.ready, c)
		}
		h.len = uint32(n)
		c.advertised = c.fwdCnt
		return h, payload
	}
	// Nothing after all (a connection went away): an empty credit update
	// to port 0 is harmless for the driver.
	return header{srcCID: hostCID, dstCID: uint64(d.opts.CID), typ: typeStream, op: opCreditUpdate, bufAlloc: bufAlloc}, nil
}

// accept serves host programs connecting to the device socket.
func (d *Device) accept(ctx context.Context) {
	for ctx.Err() == nil {
		uc, err := d.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			d.stats.Errors.Add(1)
			d.log.Warn("vsock: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		a := d.act
		d.mu.Unlock()
		if a == nil {
			uc.Close()
			continue
		}
		a.Go(func() error { d.hostConnect(ctx, uc); return nil })
	}
}

// hostConnect reads "CONNECT <port>\n" and asks the guest for the
// connection; the guest's RESPONSE completes it.
func (d *Device) hostConnect(ctx context.Context, uc net.Conn) {
	_ = uc.SetReadDeadline(time.Now().Add(handshake))
	line, err := bufio.NewReader(io.LimitReader(uc, 64)).ReadString('\n')
	_ = uc.SetReadDeadline(time.Time{})
	port, perr := parseConnect(line)
	if err != nil || perr != nil {
		fmt.Fprintf(uc, "ERROR expected \"CONNECT <port>\\n\"\n")
		uc.Close()
		return
	}
	d.mu.Lock()
	if d.act == nil || ctx.Err() != nil || len(d.conns) >= maxConns {
		d.mu.Unlock()
		uc.Close()
		return
	}
	k := connKey{guestPort: port, hostPort: d.allocPort()}
	c := newConn(k, uc, stateConnecting)
	d.conns[k] = c
	d.sendCtl(k, opRequest, 0)
	d.mu.Unlock()
	// A guest that never answers does not keep the connection forever.
	select {
	case <-time.After(handshake):
		d.mu.Lock()
		if c.state == stateConnecting {
			d.reset(c)
		}
		d.mu.Unlock()
	case <-c.done:
	case <-ctx.Done():
	}
}

// allocPort returns a host port no connection uses; d.mu is held.
func (d *Device) allocPort() uint32 {
	for {
		p := d.nextPort
		d.nextPort++
		if d.nextPort == 0 {
			d.nextPort = firstHostPort
		}
		used := false
		for k := range d.conns {
			used = used || k.hostPort == p
		}
		if !used {
			return p
		}
	}
}

func parseConnect(line string) (uint32, error) {
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "CONNECT" || !strings.HasSuffix(line, "\n") {
		return 0, errors.New("bad CONNECT line")
	}
	p, err := strconv.ParseUint(f[1], 10, 32)
	return uint32(p), err
}
