package ninep

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

const testMsize = 64 << 10

// vqConn is a 9P transport over the device's queue, as a guest's
// virtio-9p driver is: each message written is one chain whose response
// is what the device wrote back.
type vqConn struct {
	d    *virtiotest.Driver
	mu   sync.Mutex
	wbuf []byte
	resp chan []byte
	rbuf []byte
	// closed: the test is over; the client's finalizers still clunk
	// fids, which must not reach the stopped driver.
	closed bool
}

func (c *vqConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, errors.New("closed")
	}
	c.wbuf = append(c.wbuf, p...)
	for len(c.wbuf) >= 4 {
		size := int(binary.LittleEndian.Uint32(c.wbuf))
		if len(c.wbuf) < size {
			break
		}
		r := c.d.Do(0, virtiotest.Buf{Data: slices.Clone(c.wbuf[:size])}, virtiotest.Buf{WriteLen: testMsize})
		c.resp <- r.Bytes()
		c.wbuf = c.wbuf[size:]
	}
	return len(p), nil
}

func (c *vqConn) Read(p []byte) (int, error) {
	if len(c.rbuf) == 0 {
		select {
		case c.rbuf = <-c.resp:
		case <-time.After(10 * time.Second):
			return 0, errors.New("no response")
		}
		if len(c.rbuf) == 0 {
			return 0, errors.New("the device returned the chain empty")
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

func (c *vqConn) Close() error { return nil }

// share starts a device on dir and attaches a 9P client to its root.
func share(t *testing.T, dir string, ro bool) (*Device, *virtiotest.Driver, p9.File) {
	t.Helper()
	dev, err := Open(Options{Tag: "share", Dir: dir, ReadOnly: ro}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d := virtiotest.New(t, dev)
	conn := &vqConn{d: d, resp: make(chan []byte, 1)}
	t.Cleanup(func() {
		conn.mu.Lock()
		conn.closed = true
		conn.mu.Unlock()
		d.Close()
		dev.Close()
	})
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx|featMountTag, 32)
	c, err := p9.NewClient(conn, p9.WithMessageSize(testMsize))
	if err != nil {
		t.Fatal(err)
	}
	root, err := c.Attach("")
	if err != nil {
		t.Fatal(err)
	}
	return dev, d, root
}

func walk(t *testing.T, f p9.File, names ...string) p9.File {
	t.Helper()
	_, g, err := f.Walk(names)
	if err != nil {
		t.Fatalf("walk %v: %v", names, err)
	}
	return g
}

func wantErrno(t *testing.T, what string, err error, want linux.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func TestConfigTag(t *testing.T) {
	dev, err := Open(Options{Tag: "hostshare", Dir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	b := make([]byte, 16)
	dev.ReadConfig(0, b)
	if binary.LittleEndian.Uint16(b) != 9 || string(b[2:11]) != "hostshare" || b[11] != 0 {
		t.Fatalf("config %q", b)
	}
	if _, err := Open(Options{Tag: "", Dir: t.TempDir()}, nil); err == nil {
		t.Fatal("an empty tag was accepted")
	}
}

func TestFileOperations(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello from the host\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	_, _, root := share(t, dir, false)

	f := walk(t, root, "hello")
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF || string(buf[:n]) != "hello from the host\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}

	sub := walk(t, root, "sub")
	// Create turns the fid into the new file's (9P): a clone of the
	// directory's.
	nf := walk(t, sub)
	if _, _, _, err := nf.Create("new", p9.ReadWrite, 0o640, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := nf.WriteAt([]byte("written by the guest"), 0); err != nil {
		t.Fatal(err)
	}
	if err := nf.FSync(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sub", "new")); string(b) != "written by the guest" {
		t.Fatalf("host sees %q", b)
	}
	if err := nf.SetAttr(p9.SetAttrMask{Size: true}, p9.SetAttr{Size: 7}); err != nil {
		t.Fatal(err)
	}
	if _, _, attr, err := nf.GetAttr(p9.AttrMaskAll); err != nil || attr.Size != 7 || attr.Mode.Permissions() != 0o640 {
		t.Fatalf("attr %+v, %v", attr, err)
	}
	if err := sub.RenameAt("new", root, "moved"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "moved")); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if _, err := root.Symlink("hello", "link", 0, 0); err != nil {
		t.Fatal(err)
	}
	if target, err := walk(t, root, "link").Readlink(); err != nil || target != "hello" {
		t.Fatalf("readlink %q, %v", target, err)
	}
	if _, err := root.Mkdir("made", 0o755, 0, 0); err != nil {
		t.Fatal(err)
	}
	d := walk(t, root)
	if _, _, err := d.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	ents, err := d.Readdir(0, testMsize-64)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	if want := []string{".", "..", "hello", "link", "made", "moved", "sub"}; !slices.Equal(names, want) {
		t.Fatalf("readdir %v, want %v", names, want)
	}
	if err := root.UnlinkAt("made", unix.AT_REMOVEDIR); err != nil {
		t.Fatal(err)
	}
	if err := root.UnlinkAt("moved", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "made")); !os.IsNotExist(err) {
		t.Fatalf("rmdir: %v", err)
	}
}

// TestConfinement: nothing the guest sends reaches outside the share,
// opens a special file or makes a device node.
func TestConfinement(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o600)
	dir := t.TempDir()
	os.Symlink(outside, filepath.Join(dir, "abs"))
	os.Symlink("../"+filepath.Base(outside), filepath.Join(dir, "rel"))
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	dev, _, root := share(t, dir, false)

	for _, name := range []string{"..", ".", "a/b", ""} {
		if _, _, err := root.Walk([]string{name}); err == nil {
			t.Fatalf("walk %q succeeded", name)
		}
	}
	// A symlink is walked to as itself, never through.
	for _, link := range []string{"abs", "rel"} {
		if _, _, err := root.Walk([]string{link, "secret"}); err == nil {
			t.Fatalf("walked through symlink %s", link)
		}
		l := walk(t, root, link)
		if _, _, err := l.Open(p9.ReadOnly); err == nil {
			t.Fatalf("opened symlink %s", link)
		}
	}
	// A FIFO would block the worker: refused at once, by open and create.
	done := make(chan struct{})
	go func() {
		defer close(done)
		fifo := walk(t, root, "fifo")
		_, _, err := fifo.Open(p9.ReadOnly)
		wantErrno(t, "open fifo", err, linux.ENXIO)
		_, _, _, err = walk(t, root).Create("fifo", p9.WriteOnly, 0o644, 0, 0)
		wantErrno(t, "create over fifo", err, linux.ENXIO)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a FIFO blocked the share")
	}
	_, err := root.Mknod("dev", p9.FileMode(unix.S_IFCHR|0o666), 1, 3, 0, 0)
	wantErrno(t, "mknod char device", err, linux.EPERM)
	if _, err := os.Lstat(filepath.Join(dir, "dev")); !os.IsNotExist(err) {
		t.Fatal("a device node was made on the host")
	}
	// A directory swapped for a symlink after the guest walked to it
	// stays the directory the guest had.
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	d := walk(t, root, "d")
	os.Rename(filepath.Join(dir, "d"), filepath.Join(dir, "d.old"))
	os.Symlink(outside, filepath.Join(dir, "d"))
	if _, _, err := d.Walk([]string{"secret"}); err == nil {
		t.Fatal("walked into the host directory a swapped-in symlink points to")
	}
	if dev.Refused() == 0 {
		t.Fatal("refusals were not counted")
	}
}

func TestReadOnly(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "keep"), []byte("original"), 0o644)
	_, _, root := share(t, dir, true)
	_, _, _, err := walk(t, root).Create("new", p9.ReadWrite, 0o644, 0, 0)
	wantErrno(t, "create", err, linux.EROFS)
	_, _, err = walk(t, root, "keep").Open(p9.ReadWrite)
	wantErrno(t, "open for writing", err, linux.EROFS)
	wantErrno(t, "truncate", walk(t, root, "keep").SetAttr(p9.SetAttrMask{Size: true}, p9.SetAttr{}), linux.EROFS)
	wantErrno(t, "unlink", root.UnlinkAt("keep", 0), linux.EROFS)
	_, err = root.Mkdir("dir", 0o755, 0, 0)
	wantErrno(t, "mkdir", err, linux.EROFS)
	if b, _ := os.ReadFile(filepath.Join(dir, "keep")); string(b) != "original" {
		t.Fatalf("the read-only share's file changed: %q", b)
	}
}

// TestBadRequests: malformed messages cost the guest its request, not the
// session.
func TestBadRequests(t *testing.T) {
	dev, d, root := share(t, t.TempDir(), false)
	before := dev.Stats().GuestFaults.Load()
	bad := [][]byte{
		{1, 2, 3},                            // shorter than a header
		{0xff, 0xff, 0, 0, 100, 0, 0},        // size says more than the buffers hold
		{7, 0, 0, 0, 255, 1, 0},              // unknown message type
		{11, 0, 0, 0, 110, 1, 0, 1, 0, 0, 0}, // Twalk cut short
	}
	for _, m := range bad {
		d.Do(0, virtiotest.Buf{Data: m}, virtiotest.Buf{WriteLen: 64})
	}
	if dev.Stats().GuestFaults.Load()-before < 2 {
		t.Fatal("malformed requests were not counted")
	}
	// The session still serves.
	if _, _, _, err := root.GetAttr(p9.AttrMaskAll); err != nil {
		t.Fatalf("after malformed requests: %v", err)
	}
}

// TestXattrWalk: the share has no extended attributes; a missing one reads
// as ENODATA (exec asks for security.capability, and any other error
// fails the exec), a listing as not supported.
func TestXattrWalk(t *testing.T) {
	_, d, _ := share(t, t.TempDir(), false)
	for name, want := range map[string]uint32{"security.capability": 61, "": 95} {
		r := d.Do(0, virtiotest.Buf{Data: msg(30, 9, uint32(1), uint32(77), name)}, virtiotest.Buf{WriteLen: 64})
		out := r.Bytes()
		if len(out) != 11 || out[4] != msgRlerror || binary.LittleEndian.Uint16(out[5:]) != 9 || binary.LittleEndian.Uint32(out[7:]) != want {
			t.Errorf("xattrwalk %q: response %x, want Rlerror %d", name, out, want)
		}
	}
}
