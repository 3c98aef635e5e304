// Package console is a multiport virtio-console (virtio 1.2 §5.3) that
// carries a guest command's standard streams: three ports named
// ember.stdin, ember.stdout and ember.stderr, which Linux shows as
// /dev/vportNpM character devices (not terminals: no line discipline, so
// bytes pass as they are). Output reaches the host writers as the guest
// writes it; the host closing stdin is the guest's end of file.
package console

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/guest/proto"
)

// Feature and control events (§5.3.3, §5.3.6.2).
const (
	FeatMultiport = 1 << 1

	evDeviceReady = 0
	evDeviceAdd   = 1
	evPortReady   = 3
	evConsolePort = 4
	evPortOpen    = 6
	evPortName    = 7
	ctlSize       = 8
	queueSize     = 128
	maxCtlPending = 64
	chunkSize     = 64 << 10
	outChunks     = 16 // per output port: at most 1 MiB waits for the host
	portStdin     = 0
	portStdout    = 1
	portStderr    = 2
	numPorts      = 3
	ctlRX, ctlTX  = 2, 3
	defaultDrain  = 2 * time.Second
)

// PortNames are the ports' names, as the guest finds them in
// /sys/class/virtio-ports/*/name.
var PortNames = [numPorts]string{proto.StdinPort, proto.StdoutPort, proto.StderrPort}

// rxQueue and txQueue are port p's queues (§5.3.2: port 0 has 0 and 1,
// the control queues are 2 and 3, port n>0 has 2n+2 and 2n+3).
func rxQueue(p int) int {
	if p == 0 {
		return 0
	}
	return 2*p + 2
}

func txQueue(p int) int { return rxQueue(p) + 1 }

// Options describe the device.
type Options struct {
	// Stdin feeds the guest's stdin port; nil gives it end of file at once.
	Stdin io.Reader
	// Stdout and Stderr receive the guest's output ports.
	Stdout, Stderr io.Writer
	// Drain bounds how long the output still in the queues may take to
	// reach the host when the VM ends (default 2 s).
	Drain time.Duration
}

// Device is the console.
type Device struct {
	opts  Options
	log   *slog.Logger
	stats virtio.Stats
	out   [numPorts]*outPort // stdout, stderr; nil for stdin

	mu        sync.Mutex
	act       *virtio.Activation
	ctl       [][]byte // control messages for the driver
	guestOpen [numPorts]bool
	portReady [numPorts]bool
	in        []byte // host stdin read, not yet in the guest
	inEOF     bool
	eofSent   bool
	inWant    chan struct{} // the reader may read more
	inStarted bool
}

// New returns the device; the output ports' writers start at once.
func New(o Options, log *slog.Logger) *Device {
	if o.Drain <= 0 {
		o.Drain = defaultDrain
	}
	d := &Device{opts: o, log: log, inWant: make(chan struct{}, 1)}
	d.out[portStdout] = newOutPort(o.Stdout, &d.stats)
	d.out[portStderr] = newOutPort(o.Stderr, &d.stats)
	return d
}

// Close ends the output writers; the device's workers must have returned
// (a writer blocked on a host that stopped reading is left to the
// process's end).
func (d *Device) Close() error {
	for _, o := range d.out {
		if o != nil {
			close(o.full)
		}
	}
	return nil
}

func (*Device) Type() uint32               { return virtio.TypeConsole }
func (*Device) Features() uint64           { return FeatMultiport }
func (*Device) WriteConfig(uint64, []byte) {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

func (*Device) QueueMaxSizes() []uint16 {
	s := make([]uint16, 2*numPorts+2)
	for i := range s {
		s[i] = queueSize
	}
	return s
}

// ReadConfig is struct virtio_console_config: no size, max_nr_ports.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var c [12]byte
	binary.LittleEndian.PutUint32(c[4:], numPorts)
	clear(p)
	if off < uint64(len(c)) {
		copy(p, c[off:])
	}
}

// Activate starts the workers.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	if a.Features&FeatMultiport == 0 {
		return errors.New("console: the driver did not accept MULTIPORT")
	}
	for _, q := range []int{ctlRX, ctlTX} {
		if !a.Queues[q].Ready() {
			return errors.New("console: control queues must be set up")
		}
	}
	d.mu.Lock()
	d.act = a
	if !d.inStarted && d.opts.Stdin != nil {
		d.inStarted = true
		signal(d.inWant)
		// Not one of a's workers: a read of the host's stdin may block
		// for as long as the host likes, past the VM's end.
		go d.readStdin()
	}
	d.mu.Unlock()
	a.Go(func() error { return virtio.ServeChains(ctx, a, ctlTX, d.control) })
	a.Go(func() error { return virtio.Serve(ctx, a, ctlRX, d.fillControl) })
	if a.Queues[rxQueue(portStdin)].Ready() {
		a.Go(func() error { return virtio.Serve(ctx, a, rxQueue(portStdin), d.fillStdin) })
	}
	for _, p := range []int{portStdout, portStderr} {
		if q := txQueue(p); a.Queues[q].Ready() {
			a.Go(func() error { return d.serveOutput(ctx, a, p) })
		}
	}
	return nil
}

// Reset forgets the driver's state; host input already read is kept.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.act, d.ctl = nil, nil
	d.guestOpen, d.portReady = [numPorts]bool{}, [numPorts]bool{}
	d.eofSent = false
}

func (d *Device) fault(format string, args ...any) {
	d.stats.GuestFaults.Add(1)
	d.log.Warn("console: " + fmt.Sprintf(format, args...))
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sendCtl queues a control message; d.mu is held.
func (d *Device) sendCtl(port, event, value int, payload string) {
	if len(d.ctl) >= maxCtlPending {
		d.fault("control queue full: the driver is not taking messages")
		return
	}
	m := make([]byte, ctlSize+len(payload))
	binary.LittleEndian.PutUint32(m, uint32(port))
	binary.LittleEndian.PutUint16(m[4:], uint16(event))
	binary.LittleEndian.PutUint16(m[6:], uint16(value))
	copy(m[ctlSize:], payload)
	d.ctl = append(d.ctl, m)
	if d.act != nil {
		d.act.Kick(ctlRX)
	}
}

// control handles one control message of the driver (§5.3.6.2).
func (d *Device) control(c *virtio.Chain) uint32 {
	d.stats.Requests.Add(1)
	var b [ctlSize]byte
	if _, err := io.ReadFull(c.Reader(), b[:]); err != nil {
		d.fault("control message of %d bytes, want %d", c.ReadLen(), ctlSize)
		return 0
	}
	d.handleControl(int64(binary.LittleEndian.Uint32(b[:])), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]))
	return 0
}

// handleControl acts on one message from the driver.
func (d *Device) handleControl(port int64, event, value uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch event {
	case evDeviceReady:
		if value != 1 {
			d.fault("driver failed to set up (DEVICE_READY %d)", value)
			return
		}
		for p := range numPorts {
			d.sendCtl(p, evDeviceAdd, 0, "")
		}
		return
	}
	if port < 0 || port >= numPorts {
		d.fault("control event %d for port %d (the device has %d)", event, port, numPorts)
		return
	}
	p := int(port)
	switch event {
	case evPortReady:
		if value != 1 {
			d.fault("driver failed to add port %d", p)
			return
		}
		d.portReady[p] = true
		d.sendCtl(p, evPortName, 0, PortNames[p])
		// The host end of an output port is always there; stdin's is
		// until its end of file (and never was without input).
		if p != portStdin || (d.opts.Stdin != nil && !d.eofSent) {
			d.sendCtl(p, evPortOpen, 1, "")
		}
	case evPortOpen:
		d.guestOpen[p] = value == 1
		if p == portStdin && d.act != nil {
			d.act.Kick(rxQueue(portStdin))
		}
	default:
		d.fault("unknown control event %d", event)
	}
}

// fillControl gives the driver the pending control messages.
func (d *Device) fillControl(q *virtio.Queue) error {
	defer d.act.Interrupt(ctlRX)
	for {
		d.mu.Lock()
		if len(d.ctl) == 0 {
			d.mu.Unlock()
			return nil
		}
		m := d.ctl[0]
		d.mu.Unlock()
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		w := c.Writer()
		if w.Len() < uint64(len(m)) {
			d.fault("control buffer of %d bytes for a %d-byte message", w.Len(), len(m))
		}
		_, _ = w.Write(m)
		q.Push(c, w.Written())
		d.mu.Lock()
		d.ctl = d.ctl[1:]
		d.mu.Unlock()
	}
}

// readStdin reads host input whenever the guest took the last piece.
func (d *Device) readStdin() {
	buf := make([]byte, chunkSize)
	for range d.inWant {
		n, err := d.opts.Stdin.Read(buf)
		d.mu.Lock()
		d.in = append(d.in, buf[:n]...)
		if err != nil {
			d.inEOF = true
		}
		a := d.act
		d.mu.Unlock()
		if err != nil || n > 0 {
			if a != nil {
				a.Kick(rxQueue(portStdin))
			}
		} else {
			signal(d.inWant) // nothing read: read again
		}
		if err != nil {
			return
		}
	}
}

// fillStdin moves host input into the guest's stdin port once the guest
// opened it (Linux drops data for a port nobody has open), then tells
// the guest the host end closed.
func (d *Device) fillStdin(q *virtio.Queue) error {
	defer d.act.Interrupt(rxQueue(portStdin))
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.guestOpen[portStdin] {
		return nil
	}
	for len(d.in) > 0 {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		w := c.Writer()
		n := min(uint64(len(d.in)), w.Len())
		_, _ = w.Write(d.in[:n])
		d.stats.BytesWritten.Add(n)
		q.Push(c, w.Written())
		d.in = d.in[n:]
	}
	if len(d.in) == 0 && !d.inEOF {
		// Idempotent: the reader reads once per signal.
		d.in = d.in[:0:0]
		signal(d.inWant)
	}
	if d.inEOF && len(d.in) == 0 && !d.eofSent && d.portReady[portStdin] {
		d.eofSent = true
		d.sendCtl(portStdin, evPortOpen, 0, "")
	}
	return nil
}

// serveOutput passes port p's output to the host as the guest notifies;
// when the VM ends, what is still queued is passed on too, within the
// drain bound.
func (d *Device) serveOutput(ctx context.Context, a *virtio.Activation, p int) error {
	q, o := a.Queues[txQueue(p)], d.out[p]
	for a.Notified(ctx, txQueue(p)) == nil {
		if !d.output(q, o, ctx.Done()) {
			return nil
		}
		a.Interrupt(txQueue(p))
	}
	dctx, cancel := context.WithTimeout(context.Background(), d.opts.Drain)
	defer cancel()
	d.output(q, o, dctx.Done())
	o.flush(dctx.Done())
	return nil
}

// output moves every queued chain to o; false if stop came first.
func (d *Device) output(q *virtio.Queue, o *outPort, stop <-chan struct{}) bool {
	for {
		c, err := q.Pop()
		if err != nil {
			d.fault("%v", err)
			return true
		}
		if c == nil {
			return true
		}
		d.stats.Requests.Add(1)
		r := c.Reader()
		for r.Len() > 0 {
			b, ok := o.chunk(stop)
			if !ok {
				return false
			}
			n, _ := io.ReadFull(r, b[:cap(b)][:min(uint64(cap(b)), r.Len())])
			d.stats.BytesRead.Add(uint64(n))
			o.full <- b[:n]
		}
		q.Push(c, 0)
	}
}

// outPort writes one output port to the host on a goroutine of its own,
// so a host that stops reading holds the guest back (its queue fills)
// without holding the VM's end.
type outPort struct {
	w     io.Writer
	stats *virtio.Stats
	full  chan []byte
	free  chan []byte
	idle  chan struct{} // signalled after each write
	// made counts the chunks allocated so far: they are made on demand,
	// so a quiet port keeps no buffers resident.
	made atomic.Int32
}

func newOutPort(w io.Writer, s *virtio.Stats) *outPort {
	if w == nil {
		w = io.Discard
	}
	o := &outPort{w: w, stats: s, full: make(chan []byte, outChunks), free: make(chan []byte, outChunks),
		idle: make(chan struct{}, 1)}
	go o.run()
	return o
}

func (o *outPort) run() {
	failed := false
	for b := range o.full {
		if !failed {
			if _, err := o.w.Write(b); err != nil {
				// A closed reader: the rest is dropped, the guest goes on.
				failed = true
				o.stats.Errors.Add(1)
			}
		}
		o.free <- b[:0]
		signal(o.idle)
	}
}

// chunk is a free chunk, a new one while fewer than outChunks exist, or
// false if stop came first.
func (o *outPort) chunk(stop <-chan struct{}) ([]byte, bool) {
	select {
	case b := <-o.free:
		return b, true
	default:
	}
	if o.made.Load() < outChunks {
		o.made.Add(1)
		return make([]byte, 0, chunkSize), true
	}
	select {
	case b := <-o.free:
		return b, true
	case <-stop:
		return nil, false
	}
}

// flush waits until every chunk was written, or stop.
func (o *outPort) flush(stop <-chan struct{}) {
	for len(o.free) < int(o.made.Load()) {
		select {
		case <-o.idle:
		case <-stop:
			o.stats.Errors.Add(1)
			return
		}
	}
}
