// Package fs is virtio-fs (virtio 1.2 §5.11) served inside ember: the
// FUSE protocol over a virtqueue, parsed and dispatched by go-fuse, onto
// a passthrough file system confined to one host directory.
package fs

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ember-vmm/ember/devices/hostdir"
	"github.com/ember-vmm/ember/devices/virtio"
)

const (
	queueSize = 256
	// maxWrite is the largest WRITE payload offered to the guest; a
	// request is at most that plus its headers.
	maxWrite   = 1 << 20
	maxRequest = maxWrite + 4096
	// TagLen is the size of the config space's tag field.
	TagLen = 36
)

// Options describe one share.
type Options struct {
	// Tag is the name the guest mounts (mount -t virtiofs TAG DIR).
	Tag string `json:"tag"`
	// Dir is the host directory, absolute.
	Dir      string `json:"dir"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// HideSpecial shows the host's kernel file systems inside the share
	// (/proc, /sys, cgroups, ...) as empty directories: a share of the
	// host's / is not a window onto the host's processes.
	HideSpecial bool `json:"hide_special,omitempty"`
}

// Device is one share.
type Device struct {
	opts   Options
	log    *slog.Logger // rate-limited by the caller
	stats  virtio.Stats
	root   *node
	server *fuse.ProtocolServer
	// in holds one request's readable bytes per queue worker: the guest
	// cannot change a request while it is parsed and carried out.
	in [2][]byte
	// req is what a worker hands go-fuse: the copied request, or a
	// WRITE's copied headers and views of its data.
	req [2][][]byte
	// out holds the views of one request's writable buffers per worker.
	out [2][][]byte
}

// Open checks the share's directory and makes the device.
func Open(o Options, log *slog.Logger) (*Device, error) {
	if err := hostdir.CheckShare(o.Tag, TagLen, o.Dir); err != nil {
		return nil, err
	}
	d := &Device{opts: o, log: log}
	var err error
	if d.root, err = newRoot(o.Dir, o.ReadOnly, o.HideSpecial); err != nil {
		return nil, err
	}
	d.reset()
	return d, nil
}

// reset starts a fresh FUSE session (the guest sends INIT again).
func (d *Device) reset() {
	if d.server != nil {
		// Nodes of the old session keep their descriptors until go-fuse
		// drops them; a new tree starts at the same root descriptor.
		d.root = &node{r: d.root.r, fd: d.root.fd, dev: d.root.dev}
	}
	timeout := time.Second
	// go-fuse reports what a guest got wrong through a log.Logger: those
	// lines go to ember's (rate-limited) log at debug level.
	logger := slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)
	// The share keeps no extended attributes. ENOSYS, not ENODATA, makes
	// the guest's kernel stop asking: otherwise every write(2) costs a
	// GETXATTR of security.capability first (file_remove_privs).
	mo := fuse.MountOptions{MaxWrite: maxWrite, MaxReadAhead: maxWrite, Logger: logger, DisableReadDirPlus: true,
		DisableXAttrs: true}
	raw := gofs.NewNodeFS(d.root, &gofs.Options{
		EntryTimeout: &timeout, AttrTimeout: &timeout, NullPermissions: true, MountOptions: mo,
		Logger: logger,
	})
	d.server = fuse.NewProtocolServer(newGuard(raw, func(s string) { d.fault("%s", s) }), &mo)
}

// Close releases the share's root.
func (d *Device) Close() error {
	d.root.OnForget()
	return nil
}

func (*Device) Type() uint32               { return virtio.TypeFS }
func (*Device) Features() uint64           { return 0 }
func (*Device) QueueMaxSizes() []uint16    { return []uint16{queueSize, queueSize} }
func (*Device) WriteConfig(uint64, []byte) {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

// Refused counts requests refused for confinement.
func (d *Device) Refused() uint64 { return d.root.r.fds.Refused.Load() }

// ReadConfig is struct virtio_fs_config: the tag, then one request queue.
func (d *Device) ReadConfig(off uint64, p []byte) {
	var cfg [TagLen + 4]byte
	copy(cfg[:], d.opts.Tag)
	binary.LittleEndian.PutUint32(cfg[TagLen:], 1)
	clear(p)
	if off < uint64(len(cfg)) {
		copy(p, cfg[off:])
	}
}

func (d *Device) Reset() { d.reset() }

// Activate starts the high-priority queue's worker (FORGET, INTERRUPT)
// and the request queue's.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	for i := range 2 {
		if !a.Queues[i].Ready() {
			continue
		}
		if d.in[i] == nil {
			d.in[i] = make([]byte, maxRequest)
		}
		a.Go(func() error {
			return virtio.ServeChains(ctx, a, i, func(c *virtio.Chain) uint32 { return d.serve(c, i) })
		})
	}
	return nil
}

// serve carries out one FUSE request from queue i; it returns the bytes
// written.
func (d *Device) serve(c *virtio.Chain, i int) uint32 {
	d.stats.Requests.Add(1)
	n := d.handle(c, i)
	d.stats.BytesWritten.Add(uint64(n))
	return uint32(n)
}

// handle parses and carries out one request.
func (d *Device) handle(c *virtio.Chain, i int) int {
	if c.ReadLen() > maxRequest {
		d.fault("request of %d bytes (at most %d)", c.ReadLen(), maxRequest)
		return 0
	}
	// The request is copied out of guest RAM, so that the guest cannot
	// change what it asks while it is checked and carried out; only a
	// WRITE's data is not: it goes to the file from guest RAM, saving a
	// pass over up to a MiB, and a guest that changes it meanwhile only
	// changes what it writes.
	r := c.Reader()
	in := d.in[i][:c.ReadLen()]
	head := in[:min(len(in), writeHeaders)]
	if _, err := io.ReadFull(r, head); err != nil {
		d.fault("reading request: %v", err)
		return 0
	}
	req := append(d.req[i][:0], head)
	switch {
	case len(in) == len(head):
	case isPlainWrite(head):
		req = r.Next(r.Len(), req)
	default:
		_, _ = io.ReadFull(r, in[len(head):])
		req[0] = in
	}
	d.req[i] = req
	d.stats.BytesRead.Add(uint64(len(in)))
	w := c.Writer()
	d.out[i] = w.Next(w.Len(), d.out[i][:0])
	n, st := d.server.HandleRequest(req, d.out[i])
	clear(d.req[i])
	if !st.Ok() {
		d.fault("malformed request: %v", st)
		return 0
	}
	return n
}

// FUSE_WRITE's opcode and the size of its headers (fuse_in_header and
// fuse_write_in).
const (
	opWrite      = 16
	writeHeaders = 40 + 40
)

// isPlainWrite says whether the request whose headers h holds is a WRITE
// without request extensions (which go-fuse would parse out of the data).
func isPlainWrite(h []byte) bool {
	le := binary.LittleEndian
	return le.Uint32(h[4:]) == opWrite && le.Uint16(h[36:]) == 0
}

func (d *Device) fault(format string, args ...any) {
	d.stats.GuestFaults.Add(1)
	d.log.Warn("virtio-fs: "+fmt.Sprintf(format, args...), "tag", d.opts.Tag)
}
