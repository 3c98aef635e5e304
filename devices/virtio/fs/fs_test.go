package fs

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

// FUSE opcodes (include/uapi/linux/fuse.h) the tests send.
const (
	opLookup      = 1
	opGetattr     = 3
	opSetattr     = 4
	opMknod       = 8
	opMkdir       = 9
	opUnlink      = 10
	opRename      = 12
	opOpen        = 14
	opRead        = 15
	opInit        = 26
	opCreate      = 35
	opSetxattr    = 21
	opGetxattr    = 22
	opRemovexattr = 24
	reqQueue      = 1
	rootID        = 1
)

// client is a guest's FUSE driver over the request queue.
type client struct {
	t      *testing.T
	d      *virtiotest.Driver
	dev    *Device
	unique uint64
}

func newClient(t *testing.T, dir string, ro bool) *client {
	return newClientOpts(t, Options{Tag: "share", Dir: dir, ReadOnly: ro})
}

func newClientOpts(t *testing.T, o Options) *client {
	dev, err := Open(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1 | virtio.FeatureEventIdx)
	c := &client{t: t, d: d, dev: dev}
	var in bytes.Buffer
	binary.Write(&in, binary.LittleEndian, struct{ Major, Minor, MaxReadAhead, Flags, Flags2 uint32 }{7, 31, 1 << 20, 0, 0})
	in.Write(make([]byte, 44))
	if st, _ := c.call(opInit, 0, in.Bytes(), 256); st != 0 {
		t.Fatalf("INIT: status %d", st)
	}
	return c
}

// call sends one request and returns the reply's status and payload.
func (c *client) call(op uint32, node uint64, body []byte, outLen uint32) (int32, []byte) {
	c.t.Helper()
	c.unique++
	var h bytes.Buffer
	binary.Write(&h, binary.LittleEndian, fuse.InHeader{Length: uint32(40 + len(body)), Opcode: op, Unique: c.unique, NodeId: node})
	h.Write(body)
	r := c.d.Do(reqQueue, virtiotest.Buf{Data: h.Bytes()}, virtiotest.Buf{WriteLen: 16 + outLen})
	out := r.Bytes()
	if len(out) < 16 {
		c.t.Fatalf("op %d: reply of %d bytes", op, len(out))
	}
	var oh fuse.OutHeader
	binary.Read(bytes.NewReader(out), binary.LittleEndian, &oh)
	if oh.Unique != c.unique || int(oh.Length) != len(out) {
		c.t.Fatalf("op %d: reply header %+v for %d bytes", op, oh, len(out))
	}
	return oh.Status, out[16:]
}

func name(s string) []byte { return append([]byte(s), 0) }

// lookup returns name's node ID in dir and its mode, or the error.
func (c *client) lookup(dir uint64, n string) (uint64, uint32, syscall.Errno) {
	c.t.Helper()
	st, out := c.call(opLookup, dir, name(n), 128)
	if st != 0 {
		return 0, 0, syscall.Errno(-st)
	}
	var e fuse.EntryOut
	binary.Read(bytes.NewReader(out), binary.LittleEndian, &e)
	return e.NodeId, e.Mode, 0
}

func (c *client) open(node uint64, flags uint32) (uint64, syscall.Errno) {
	c.t.Helper()
	body := binary.LittleEndian.AppendUint32(nil, flags)
	st, out := c.call(opOpen, node, append(body, 0, 0, 0, 0), 16)
	if st != 0 {
		return 0, syscall.Errno(-st)
	}
	return binary.LittleEndian.Uint64(out), 0
}

func (c *client) read(node, fh uint64, n uint32) []byte {
	c.t.Helper()
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, struct {
		Fh              uint64
		Offset          uint64
		Size, ReadFlags uint32
		LockOwner       uint64
		Flags, Padding  uint32
	}{Fh: fh, Size: n})
	st, out := c.call(opRead, node, b.Bytes(), n)
	if st != 0 {
		c.t.Fatalf("READ: %v", syscall.Errno(-st))
	}
	return out
}

func (c *client) create(dir uint64, n string, flags uint32) syscall.Errno {
	c.t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, flags)
	b = binary.LittleEndian.AppendUint32(b, 0o644)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 0)
	st, _ := c.call(opCreate, dir, append(b, name(n)...), 160)
	return syscall.Errno(-st)
}

func share(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hello from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReadFile(t *testing.T) {
	c := newClient(t, share(t), false)
	id, mode, e := c.lookup(rootID, "hello")
	if e != 0 || mode&unix.S_IFMT != unix.S_IFREG {
		t.Fatalf("lookup hello: %v, mode %o", e, mode)
	}
	fh, e := c.open(id, unix.O_RDONLY)
	if e != 0 {
		t.Fatalf("open: %v", e)
	}
	if got := c.read(id, fh, 4096); string(got) != "hello from the host" {
		t.Fatalf("read %q", got)
	}
}

func TestCreateWrite(t *testing.T) {
	dir := share(t)
	c := newClient(t, dir, false)
	if e := c.create(rootID, "new", unix.O_WRONLY); e != 0 {
		t.Fatalf("create: %v", e)
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err != nil {
		t.Fatalf("not on the host: %v", err)
	}
}

// Names are single components; links are never followed on the host; a
// directory swapped for a symlink after lookup still confines.
func TestConfinement(t *testing.T) {
	dir := share(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600)
	os.Symlink(outside, filepath.Join(dir, "abs"))
	os.Symlink("../../../../../../"+outside, filepath.Join(dir, "rel"))
	c := newClient(t, dir, false)
	for _, n := range []string{"..", "sub/../..", "/etc", "sub/"} {
		if _, _, e := c.lookup(rootID, n); e == 0 {
			t.Errorf("lookup %q succeeded", n)
		}
	}
	for _, link := range []string{"abs", "rel"} {
		id, mode, e := c.lookup(rootID, link)
		if e != 0 || mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("lookup %s: %v mode %o, want the link itself", link, e, mode)
		}
		if _, _, e := c.lookup(id, "secret"); e == 0 {
			t.Errorf("lookup through %s reached the outside", link)
		}
		if _, e := c.open(id, unix.O_RDONLY); e == 0 {
			t.Errorf("open of link %s succeeded", link)
		}
	}
	sub, _, e := c.lookup(rootID, "sub")
	if e != 0 {
		t.Fatal(e)
	}
	// The host (or another guest process through a rename) swaps sub for
	// a link to the outside after the guest looked it up.
	os.Rename(filepath.Join(dir, "sub"), filepath.Join(dir, "gone"))
	os.Symlink(outside, filepath.Join(dir, "sub"))
	if _, _, e := c.lookup(sub, "secret"); e == 0 {
		t.Error("lookup in a swapped directory reached the outside")
	}
	if c.create(sub, "x", unix.O_WRONLY) != 0 {
		t.Error("create in the looked-up directory failed")
	}
	if _, err := os.Stat(filepath.Join(dir, "gone", "x")); err != nil {
		t.Errorf("create did not land in the directory the guest had: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); err == nil {
		t.Error("create landed outside the share")
	}
	if c.dev.Refused() == 0 {
		t.Error("refusals not counted")
	}
}

// Device nodes, FIFOs and sockets are not opened on the host.
func TestSpecialFiles(t *testing.T) {
	dir := share(t)
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	devErr := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	c := newClient(t, dir, false)
	names := []string{"fifo"}
	if devErr == nil {
		names = append(names, "null")
	}
	for _, n := range names {
		id, _, e := c.lookup(rootID, n)
		if e != 0 {
			t.Fatal(e)
		}
		if _, e := c.open(id, unix.O_RDWR); e != syscall.ENXIO {
			t.Errorf("open %s: %v, want ENXIO", n, e)
		}
	}
	// Creating over the FIFO opens it: refused, and without waiting for a
	// peer that never comes (the Do below would time out).
	if e := c.create(rootID, "fifo", unix.O_WRONLY); e != syscall.ENXIO {
		t.Errorf("create over a FIFO: %v, want ENXIO", e)
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, struct{ Mode, Rdev, Umask, Padding uint32 }{unix.S_IFCHR | 0o666, uint32(unix.Mkdev(1, 3)), 0, 0})
	if st, _ := c.call(opMknod, rootID, append(b.Bytes(), name("dev")...), 128); st == 0 {
		t.Error("mknod of a character device succeeded")
	}
}

// A read-only share refuses every change on the host side, whatever the
// guest's mount says.
func TestReadOnly(t *testing.T) {
	dir := share(t)
	c := newClient(t, dir, true)
	id, _, _ := c.lookup(rootID, "hello")
	if _, e := c.open(id, unix.O_WRONLY); e != syscall.EROFS {
		t.Errorf("open for writing: %v, want EROFS", e)
	}
	if _, e := c.open(id, unix.O_RDONLY|unix.O_TRUNC); e != syscall.EROFS {
		t.Errorf("open with O_TRUNC: %v, want EROFS", e)
	}
	if e := c.create(rootID, "new", unix.O_WRONLY); e != syscall.EROFS {
		t.Errorf("create: %v, want EROFS", e)
	}
	if st, _ := c.call(opUnlink, rootID, name("hello"), 0); st != -int32(syscall.EROFS) {
		t.Errorf("unlink: %d", st)
	}
	mk := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0o755), 0)
	if st, _ := c.call(opMkdir, rootID, append(mk, name("d")...), 128); st != -int32(syscall.EROFS) {
		t.Errorf("mkdir: %d", st)
	}
	var sa bytes.Buffer
	binary.Write(&sa, binary.LittleEndian, fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE, Size: 0})
	if st, _ := c.call(opSetattr, id, sa.Bytes(), 104); st != -int32(syscall.EROFS) {
		t.Errorf("truncate: %d", st)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hello")); string(b) != "hello from the host" {
		t.Errorf("host file changed: %q", b)
	}
}

// Garbage on the queue is a guest fault; the device goes on serving.
func TestHostileRequests(t *testing.T) {
	c := newClient(t, share(t), false)
	c.d.Do(reqQueue, virtiotest.Buf{Data: []byte{1, 2, 3}}, virtiotest.Buf{WriteLen: 64})
	h := make([]byte, 40)
	binary.LittleEndian.PutUint32(h, 0xffffffff)
	binary.LittleEndian.PutUint32(h[4:], opWrite)
	c.d.Do(reqQueue, virtiotest.Buf{Data: h}, virtiotest.Buf{WriteLen: 64})
	c.d.Do(reqQueue, virtiotest.Buf{Data: h})
	if c.dev.Stats().GuestFaults.Load() == 0 {
		t.Error("no guest fault counted")
	}
	if _, _, e := c.lookup(rootID, "hello"); e != 0 {
		t.Fatalf("device stopped serving: %v", e)
	}
	if c.d.NeedsReset() {
		t.Fatal("device needs reset")
	}
}

// FuzzRequest feeds one FUSE request of any shape to a device that has
// been initialised over a scratch share.
func FuzzRequest(f *testing.F) {
	for _, s := range seedRequests() {
		f.Add(s)
	}
	dir := f.TempDir()
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello"), 0o644)
	dev, err := Open(Options{Tag: "fuzz", Dir: dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	out := make([]byte, 8192)
	dev.in[1] = make([]byte, maxRequest)
	dev.serve(virtio.NewChain([][]byte{seedRequests()[0]}, [][]byte{out}), 1)
	f.Fuzz(func(t *testing.T, req []byte) {
		n := dev.serve(virtio.NewChain([][]byte{req}, [][]byte{out}), 1)
		if int(n) > len(out) {
			t.Fatalf("wrote %d bytes into %d", n, len(out))
		}
	})
}

func request(op uint32, node uint64, body []byte) []byte {
	var h bytes.Buffer
	binary.Write(&h, binary.LittleEndian, fuse.InHeader{Length: uint32(40 + len(body)), Opcode: op, Unique: 7, NodeId: node})
	return append(h.Bytes(), body...)
}

func seedRequests() [][]byte {
	var init bytes.Buffer
	binary.Write(&init, binary.LittleEndian, struct{ Major, Minor, MaxReadAhead, Flags, Flags2 uint32 }{7, 31, 1 << 20, 0, 0})
	init.Write(make([]byte, 44))
	open := binary.LittleEndian.AppendUint32(nil, unix.O_RDWR)
	read := make([]byte, 40)
	binary.LittleEndian.PutUint32(read[16:], 4096)
	write := append(make([]byte, 40), "data"...)
	binary.LittleEndian.PutUint32(write[16:], 4)
	return [][]byte{
		request(opInit, 0, init.Bytes()),
		request(opLookup, rootID, name("hello")),
		request(opLookup, rootID, name("..")),
		request(opGetattr, 2, make([]byte, 16)),
		request(opOpen, 2, append(open, 0, 0, 0, 0)),
		request(opRead, 2, read),
		request(opWrite, 2, write),
		request(opCreate, rootID, append(make([]byte, 16), name("new")...)),
		request(opRename, rootID, append(binary.LittleEndian.AppendUint64(nil, rootID), append(name("new"), name("old")...)...)),
	}
}

// A share of / with HideSpecial shows /proc as an empty directory.
func TestHideSpecial(t *testing.T) {
	c := newClientOpts(t, Options{Tag: "root", Dir: "/", ReadOnly: true, HideSpecial: true})
	proc, mode, e := c.lookup(rootID, "proc")
	if e != 0 || mode&unix.S_IFMT != unix.S_IFDIR {
		t.Fatalf("lookup proc: %v mode %o", e, mode)
	}
	if _, _, e := c.lookup(proc, "self"); e != syscall.ENOENT {
		t.Errorf("lookup proc/self: %v, want ENOENT", e)
	}
	etc, _, e := c.lookup(rootID, "etc")
	if e != 0 {
		t.Fatal(e)
	}
	if _, _, e := c.lookup(etc, "hostname"); e != 0 {
		t.Errorf("lookup etc/hostname: %v", e)
	}
}

// A WRITE's data, in as many guest buffers as the driver used and with
// its headers split anywhere, reaches the host file whole, straight from
// guest RAM.
func TestWriteScattered(t *testing.T) {
	dir := share(t)
	c := newClient(t, dir, false)
	id, _, e := c.lookup(rootID, "hello")
	if e != 0 {
		t.Fatal(e)
	}
	fh, e := c.open(id, unix.O_RDWR)
	if e != 0 {
		t.Fatal(e)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB
	for _, split := range [][]int{{80, 4096, 8192}, {50, 100, 5000, 16000}, {16464}} {
		c.unique++
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, fuse.WriteIn{InHeader: fuse.InHeader{Length: uint32(80 + len(data)), Opcode: opWrite, Unique: c.unique, NodeId: id},
			Fh: fh, Offset: 3, Size: uint32(len(data))})
		b.Write(data)
		req := b.Bytes()
		var bufs []virtiotest.Buf
		at := 0
		for _, s := range append(split, len(req)) {
			bufs = append(bufs, virtiotest.Buf{Data: req[at:s]})
			at = s
		}
		out := c.d.Do(reqQueue, append(bufs, virtiotest.Buf{WriteLen: 24})...).Bytes()
		var oh fuse.OutHeader
		binary.Read(bytes.NewReader(out), binary.LittleEndian, &oh)
		if oh.Status != 0 || len(out) != 24 || binary.LittleEndian.Uint32(out[16:]) != uint32(len(data)) {
			t.Fatalf("split %v: reply %+v %x", split, oh, out)
		}
		// The data went to the file from guest RAM, not through a copy.
		if bytes.Contains(c.dev.in[reqQueue], data[:256]) {
			t.Errorf("split %v: the data was copied out of guest RAM", split)
		}
		got, _ := os.ReadFile(filepath.Join(dir, "hello"))
		if !bytes.Equal(got, append([]byte("hel"), data...)) {
			t.Fatalf("split %v: host file differs (%d bytes)", split, len(got))
		}
		os.WriteFile(filepath.Join(dir, "hello"), []byte("hello from the host"), 0o644)
	}
}

// The share keeps no extended attributes, and says so with ENOSYS, which
// the guest's kernel remembers: it would otherwise ask before every
// write. Nothing reaches the host's attributes.
func TestNoXattrs(t *testing.T) {
	dir := share(t)
	c := newClient(t, dir, false)
	id, _, e := c.lookup(rootID, "hello")
	if e != 0 {
		t.Fatalf("lookup hello: %v", e)
	}
	getIn := append(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 256), 0), name("security.capability")...)
	if st, _ := c.call(opGetxattr, id, getIn, 256); syscall.Errno(-st) != syscall.ENOSYS {
		t.Errorf("GETXATTR: status %d, want ENOSYS", st)
	}
	// struct fuse_setxattr_in: size, flags, setxattr_flags, padding.
	setIn := make([]byte, 16)
	binary.LittleEndian.PutUint32(setIn, 1)
	setIn = append(append(setIn, name("user.x")...), 'v')
	if st, _ := c.call(opSetxattr, id, setIn, 0); syscall.Errno(-st) != syscall.ENOSYS {
		t.Errorf("SETXATTR: status %d, want ENOSYS", st)
	}
	if st, _ := c.call(opRemovexattr, id, name("user.x"), 0); syscall.Errno(-st) != syscall.ENOSYS {
		t.Errorf("REMOVEXATTR: status %d, want ENOSYS", st)
	}
	if n, err := unix.Lgetxattr(filepath.Join(dir, "hello"), "user.x", nil); err == nil {
		t.Errorf("user.x set on the host (%d bytes)", n)
	}
}
