// Package ninep is virtio-9p: 9P2000.L messages over one virtqueue,
// decoded and dispatched by hugelgupf/p9, onto a file tree confined to
// one host directory (file.go). It is the share transport for kernels
// that have 9p and no virtiofs.
package ninep

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/hugelgupf/p9/p9"

	"github.com/ember-vmm/ember/devices/hostdir"
	"github.com/ember-vmm/ember/devices/virtio"
)

const (
	queueSize = 128
	// maxMessage is the largest 9P message either way (the msize the
	// device agrees to, whatever the guest asks for).
	maxMessage = 1 << 20
	// headerSize is size[4] type[1] tag[2].
	headerSize = 7
	// TagMax bounds the mount tag (the config space holds its length in
	// 16 bits; the guest's mount option does not want it long).
	TagMax = 64

	msgRversion   = 101
	msgRlerror    = 7
	msgTflush     = 108
	msgTxattrwalk = 30
)

// featMountTag says the config space carries the mount tag.
const featMountTag = 1 << 0

// Options describe one share.
type Options struct {
	// Tag is the name the guest mounts (mount -t 9p -o trans=virtio TAG DIR).
	Tag string `json:"tag"`
	// Dir is the host directory, absolute.
	Dir      string `json:"dir"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Device is one share.
type Device struct {
	opts  Options
	log   *slog.Logger // rate-limited by the caller
	stats virtio.Stats
	tree  *tree
	// in and out hold one message each way: requests are served one at
	// a time, so a guest cannot change a request while it is decoded and
	// every response belongs to the request before it.
	in, out []byte
	msize   uint32

	mu      sync.Mutex
	session *session
}

// session is one 9P connection: the p9 server reads requests from one
// pipe and writes responses to another.
type session struct {
	reqW  *io.PipeWriter
	respR *io.PipeReader
	done  chan struct{}
	once  sync.Once
}

// Open checks the share's directory and makes the device.
func Open(o Options, log *slog.Logger) (*Device, error) {
	if err := hostdir.CheckShare(o.Tag, TagMax, o.Dir); err != nil {
		return nil, err
	}
	t, err := openTree(o.Dir, o.ReadOnly)
	if err != nil {
		return nil, err
	}
	return &Device{opts: o, log: log, tree: t}, nil
}

// Close ends the session and releases the share's root.
func (d *Device) Close() error {
	d.endSession()
	return d.tree.close()
}

func (*Device) Type() uint32               { return virtio.TypeP9 }
func (*Device) Features() uint64           { return featMountTag }
func (*Device) QueueMaxSizes() []uint16    { return []uint16{queueSize} }
func (*Device) WriteConfig(uint64, []byte) {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

// Refused counts requests refused for confinement.
func (d *Device) Refused() uint64 { return d.tree.fds.Refused.Load() }

// ReadConfig is struct virtio_9p_config: the tag's length, then the tag.
func (d *Device) ReadConfig(off uint64, p []byte) {
	cfg := make([]byte, 2+len(d.opts.Tag))
	binary.LittleEndian.PutUint16(cfg, uint16(len(d.opts.Tag)))
	copy(cfg[2:], d.opts.Tag)
	clear(p)
	if off < uint64(len(cfg)) {
		copy(p, cfg[off:])
	}
}

// Reset ends the 9P session: the guest starts a new one with Tversion,
// and every fid of the old one is released.
func (d *Device) Reset() { d.endSession() }

// Activate starts a 9P session and the request queue's worker.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	if !a.Queues[0].Ready() {
		return nil
	}
	if d.in == nil {
		d.in, d.out = make([]byte, maxMessage), make([]byte, maxMessage)
	}
	s := d.startSession()
	a.Go(func() error {
		stop := context.AfterFunc(ctx, func() { s.end() })
		defer stop()
		return virtio.ServeChains(ctx, a, 0, func(c *virtio.Chain) uint32 { return d.serve(s, c) })
	})
	return nil
}

// startSession ends the current 9P session and starts a fresh one.
func (d *Device) startSession() *session {
	d.endSession()
	reqR, reqW := io.Pipe()
	respR, respW := io.Pipe()
	s := &session{reqW: reqW, respR: respR, done: make(chan struct{})}
	srv := p9.NewServer(d.tree)
	go func() {
		defer close(s.done)
		// Handle closes both pipe ends it holds when the session ends.
		_ = srv.Handle(reqR, respW)
	}()
	d.mu.Lock()
	d.session = s
	d.mu.Unlock()
	d.msize = maxMessage
	return s
}

// quiesce is how long a session's server is given to finish the request
// it is on before its input ends. The p9 server's teardown counts its
// goroutines with a WaitGroup that a goroutine which has just sent a
// response adds itself to again; ending the input in that instant would
// be a race inside the library.
const quiesce = 50 * time.Millisecond

// sessionEndLimit bounds the wait for a session's server to end.
const sessionEndLimit = 2 * time.Second

// end closes the session's pipes: a worker waiting for a response
// returns; the server sees the end of its input, finishes and releases
// its fids.
func (s *session) end() {
	s.once.Do(func() {
		s.respR.CloseWithError(io.ErrClosedPipe)
		time.Sleep(quiesce)
		s.reqW.CloseWithError(io.EOF)
	})
}

func (d *Device) endSession() {
	d.mu.Lock()
	s := d.session
	d.session = nil
	d.mu.Unlock()
	if s != nil {
		s.end()
		select {
		case <-s.done:
		case <-time.After(sessionEndLimit):
			// A server goroutine stuck on the host or in the library:
			// left behind rather than holding up the machine's end.
			d.log.Warn("virtio-9p: the session's server did not end", "tag", d.opts.Tag, "after", sessionEndLimit)
		}
	}
}

// serve carries out one 9P request; it returns the bytes written.
func (d *Device) serve(s *session, c *virtio.Chain) uint32 {
	d.stats.Requests.Add(1)
	n, err := d.handle(s, c)
	if err != nil {
		d.fault("%v", err)
		return 0
	}
	d.stats.BytesWritten.Add(uint64(n))
	return uint32(n)
}

// handle passes one request to the server and its response to the guest.
func (d *Device) handle(s *session, c *virtio.Chain) (int, error) {
	n := c.ReadLen()
	if n < headerSize || n > uint64(d.msize) {
		return 0, fmt.Errorf("request of %d bytes (want %d to %d)", n, headerSize, d.msize)
	}
	in := d.in[:n]
	if _, err := io.ReadFull(c.Reader(), in); err != nil {
		return 0, fmt.Errorf("reading request: %w", err)
	}
	d.stats.BytesRead.Add(n)
	// The p9 server stops serving the connection at a size it cannot
	// take: those never reach it.
	if size := binary.LittleEndian.Uint32(in); uint64(size) != n {
		return 0, fmt.Errorf("request says %d bytes, its buffers hold %d", size, n)
	}
	out := d.answerHere(in)
	if out == nil {
		if _, err := s.reqW.Write(in); err != nil {
			return 0, fmt.Errorf("session ended: %w", err)
		}
		var err error
		if out, err = d.response(s); err != nil {
			return 0, err
		}
	}
	w := c.Writer()
	if uint64(len(out)) > w.Len() {
		// The guest's buffer is smaller than what it asked for: tell it
		// the way 9P tells errors, with the request's tag.
		out = rlerror(out[:0], binary.LittleEndian.Uint16(in[5:]), errnoMsgSize)
		if uint64(len(out)) > w.Len() {
			return 0, fmt.Errorf("response buffer of %d bytes", w.Len())
		}
	}
	_, _ = w.Write(out)
	return len(out), nil
}

// Linux errnos the device answers with itself.
const (
	errnoNoData     = 61
	errnoMsgSize    = 90
	errnoNotSupport = 95
)

// answerHere is the response to requests the device answers without the
// p9 server, or nil:
//   - Tflush: requests are served one at a time, so the one to flush has
//     been answered already (and the server would wait for ever on a
//     flush of the flush's own tag);
//   - Txattrwalk: the share keeps no extended attributes. A missing one
//     must read as ENODATA (exec asks for security.capability), and the
//     server turns every error of a File's GetXattr into EINVAL.
func (d *Device) answerHere(in []byte) []byte {
	tag := binary.LittleEndian.Uint16(in[5:])
	switch in[4] {
	case msgTflush:
		return flushReply(d.out[:0], tag)
	case msgTxattrwalk:
		// fid[4] newfid[4] name[s]: an empty name lists them.
		if len(in) >= headerSize+10 && binary.LittleEndian.Uint16(in[headerSize+8:]) == 0 {
			return rlerror(d.out[:0], tag, errnoNotSupport)
		}
		return rlerror(d.out[:0], tag, errnoNoData)
	}
	return nil
}

// response reads the server's next message into d.out.
func (d *Device) response(s *session) ([]byte, error) {
	hdr := d.out[:headerSize]
	if _, err := io.ReadFull(s.respR, hdr); err != nil {
		return nil, fmt.Errorf("no response: %w", err)
	}
	size := binary.LittleEndian.Uint32(hdr)
	if size < headerSize || size > maxMessage {
		// The server's own output: a broken session, not a guest fault.
		s.end()
		return nil, fmt.Errorf("server response of %d bytes", size)
	}
	out := d.out[:size]
	if _, err := io.ReadFull(s.respR, out[headerSize:]); err != nil {
		return nil, fmt.Errorf("response: %w", err)
	}
	if out[4] == msgRversion && size >= headerSize+4 {
		// Agree to at most maxMessage, whatever the server would take.
		m := min(binary.LittleEndian.Uint32(out[headerSize:]), maxMessage)
		binary.LittleEndian.PutUint32(out[headerSize:], m)
		if m >= headerSize {
			d.msize = m
		}
	}
	return out, nil
}

// flushReply appends an Rflush message.
func flushReply(b []byte, tag uint16) []byte {
	b = binary.LittleEndian.AppendUint32(b, headerSize)
	b = append(b, msgTflush+1)
	return binary.LittleEndian.AppendUint16(b, tag)
}

// rlerror appends an Rlerror message.
func rlerror(b []byte, tag uint16, errno uint32) []byte {
	b = binary.LittleEndian.AppendUint32(b, headerSize+4)
	b = append(b, msgRlerror)
	b = binary.LittleEndian.AppendUint16(b, tag)
	return binary.LittleEndian.AppendUint32(b, errno)
}

func (d *Device) fault(format string, args ...any) {
	d.stats.GuestFaults.Add(1)
	d.log.Warn("virtio-9p: "+fmt.Sprintf(format, args...), "tag", d.opts.Tag)
}
