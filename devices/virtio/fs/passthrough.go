package fs

import (
	"context"
	"errors"
	"syscall"
	"unsafe"

	"github.com/ember-vmm/ember/devices/hostdir"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The passthrough file system reaches the share the hostdir way (O_PATH
// descriptors, one component at a time beneath its parent). go-fuse's own
// loopback works on path strings, which a guest could steer outside the
// share; this is the part of it written again over descriptors.

// root is what every node of one share refers to.
type root struct {
	readOnly    bool
	hideSpecial bool
	rootDev     uint64
	fds         *hostdir.Budget // an O_PATH one per inode, one per open file
}

func (r *root) take() bool { return r.fds.Take(1) }

// node is one inode of the share.
type node struct {
	gofs.Inode
	r   *root
	fd  int    // O_PATH, O_NOFOLLOW
	dev uint64 // the file system it is on (an inode's never changes)
	// hidden: a kernel file system's root in a share with HideSpecial;
	// it reads as an empty directory.
	hidden bool
}

var (
	_ gofs.NodeLookuper    = (*node)(nil)
	_ gofs.NodeGetattrer   = (*node)(nil)
	_ gofs.NodeSetattrer   = (*node)(nil)
	_ gofs.NodeOpener      = (*node)(nil)
	_ gofs.NodeCreater     = (*node)(nil)
	_ gofs.NodeMkdirer     = (*node)(nil)
	_ gofs.NodeMknoder     = (*node)(nil)
	_ gofs.NodeSymlinker   = (*node)(nil)
	_ gofs.NodeLinker      = (*node)(nil)
	_ gofs.NodeUnlinker    = (*node)(nil)
	_ gofs.NodeRmdirer     = (*node)(nil)
	_ gofs.NodeRenamer     = (*node)(nil)
	_ gofs.NodeReadlinker  = (*node)(nil)
	_ gofs.NodeReaddirer   = (*node)(nil)
	_ gofs.NodeStatfser    = (*node)(nil)
	_ gofs.NodeOnForgetter = (*node)(nil)
)

// newRoot opens dir as a share's root.
func newRoot(dir string, readOnly, hideSpecial bool) (*node, error) {
	fd, dev, err := hostdir.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	r := &root{readOnly: readOnly, hideSpecial: hideSpecial, rootDev: dev, fds: hostdir.NewBudget()}
	r.fds.Take(1)
	return &node{r: r, fd: fd, dev: dev}, nil
}

func (n *node) refuse(e syscall.Errno) syscall.Errno {
	n.r.fds.Refused.Add(1)
	return e
}

// mutate refuses a change to a read-only share.
func (n *node) mutate() syscall.Errno {
	if n.r.readOnly {
		return n.refuse(syscall.EROFS)
	}
	return 0
}

func (n *node) stableAttr(st *unix.Stat_t) gofs.StableAttr {
	return gofs.StableAttr{Mode: st.Mode, Ino: hostdir.Ino(st, n.r.rootDev)}
}

// child makes the node for fd (O_PATH, owned) found as name in n, or
// returns the node the tree already has for that inode.
func (n *node) child(ctx context.Context, fd int, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Close(fd)
		return nil, gofs.ToErrno(err)
	}
	if !n.r.take() {
		unix.Close(fd)
		return nil, syscall.ENFILE
	}
	out.Attr.FromStat(sysStat(&st))
	c := &node{r: n.r, fd: fd, dev: st.Dev}
	if n.r.hideSpecial && st.Dev != n.dev {
		c.hidden = hostdir.KernelFS(fd)
	}
	in := n.NewInode(ctx, c, n.stableAttr(&st))
	if in.Operations() != c {
		// The inode is known already (a hard link, or a lookup racing
		// another): keep the existing node's descriptor.
		c.OnForget()
	}
	return in, 0
}

func (n *node) OnForget() {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
		n.r.fds.Put(1)
	}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, n.refuse(syscall.EINVAL)
	}
	if n.hidden {
		return nil, syscall.ENOENT
	}
	fd, err := hostdir.OpenBeneath(n.fd, name, unix.O_PATH, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return n.child(ctx, fd, out)
}

func (n *node) stat(st *unix.Stat_t) syscall.Errno {
	return gofs.ToErrno(unix.Fstatat(n.fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW))
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.Getattr(ctx, out)
	}
	var st unix.Stat_t
	if e := n.stat(&st); e != 0 {
		return e
	}
	out.FromStat(sysStat(&st))
	return 0
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if e := n.mutate(); e != 0 {
		return e
	}
	var st unix.Stat_t
	if e := n.stat(&st); e != 0 {
		return e
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if mode, ok := in.GetMode(); ok && !isLink {
		if err := unix.Fchmodat(unix.AT_FDCWD, hostdir.ProcPath(n.fd), mode&07777, 0); err != nil {
			return gofs.ToErrno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := unix.Fchownat(n.fd, "", u, g, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return gofs.ToErrno(err)
		}
	}
	if size, ok := in.GetSize(); ok {
		if err := n.truncate(f, &st, size); err != 0 {
			return err
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if (mok || aok) && !isLink {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, hostdir.ProcPath(n.fd), ts, 0); err != nil {
			return gofs.ToErrno(err)
		}
	}
	return n.Getattr(ctx, f, out)
}

func (n *node) truncate(f gofs.FileHandle, st *unix.Stat_t, size uint64) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.ftruncate(size)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return syscall.EINVAL
	}
	return gofs.ToErrno(hostdir.Truncate(n.fd, size))
}

// openFlags are what a guest's open flags may ask of the host file.
func (n *node) openFlags(flags uint32) (int, syscall.Errno) {
	f := int(flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_NOFOLLOW | unix.O_DIRECTORY | unix.O_PATH)
	if f&unix.O_ACCMODE != unix.O_RDONLY || f&unix.O_TRUNC != 0 {
		if e := n.mutate(); e != 0 {
			return 0, e
		}
	}
	return f | unix.O_CLOEXEC, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	var st unix.Stat_t
	if e := n.stat(&st); e != 0 {
		return nil, 0, e
	}
	// Device nodes would hand the guest a host device; FIFOs and sockets
	// could block a worker for good.
	if st.Mode&unix.S_IFMT != unix.S_IFREG || n.hidden {
		return nil, 0, n.refuse(syscall.ENXIO)
	}
	f, e := n.openFlags(flags)
	if e != 0 {
		return nil, 0, e
	}
	if !n.r.take() {
		return nil, 0, syscall.ENFILE
	}
	fd, err := unix.Open(hostdir.ProcPath(n.fd), f, 0)
	if err != nil {
		n.r.fds.Put(1)
		return nil, 0, gofs.ToErrno(err)
	}
	return n.r.newFile(fd), 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, nil, 0, n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return nil, nil, 0, e
	}
	f, _ := n.openFlags(flags)
	if !n.r.take() {
		return nil, nil, 0, syscall.ENFILE
	}
	fd, pfd, _, err := hostdir.CreateRegular(n.fd, name, f|int(flags&unix.O_EXCL), mode&07777)
	if err != nil {
		n.r.fds.Put(1)
		if errors.Is(err, hostdir.ErrNotRegular) {
			return nil, nil, 0, n.refuse(syscall.ENXIO)
		}
		return nil, nil, 0, gofs.ToErrno(err)
	}
	release := func() { unix.Close(fd); n.r.fds.Put(1) }
	in, e := n.child(ctx, pfd, out)
	if e != 0 {
		release()
		return nil, nil, 0, e
	}
	return in, n.r.newFile(fd), 0, 0
}

// made looks up what a create-like call just made as name.
func (n *node) made(ctx context.Context, name string, err error, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return n.Lookup(ctx, name, out)
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return nil, e
	}
	return n.made(ctx, name, unix.Mkdirat(n.fd, name, mode&07777), out)
}

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return nil, e
	}
	if !hostdir.MknodAllowed(mode) {
		return nil, n.refuse(syscall.EPERM)
	}
	return n.made(ctx, name, unix.Mknodat(n.fd, name, mode&(unix.S_IFMT|07777), 0), out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return nil, e
	}
	// The target is only text: the host never follows links in a share.
	return n.made(ctx, name, unix.Symlinkat(target, n.fd, name), out)
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !hostdir.ValidName(name) {
		return nil, n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return nil, e
	}
	t, ok := target.(*node)
	if !ok || t.r != n.r {
		return nil, syscall.EXDEV
	}
	return n.made(ctx, name, hostdir.Link(t.fd, n.fd, name), out)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if !hostdir.ValidName(name) {
		return n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return e
	}
	return gofs.ToErrno(unix.Unlinkat(n.fd, name, 0))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if !hostdir.ValidName(name) {
		return n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return e
	}
	return gofs.ToErrno(unix.Unlinkat(n.fd, name, unix.AT_REMOVEDIR))
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if !hostdir.ValidName(name) || !hostdir.ValidName(newName) {
		return n.refuse(syscall.EINVAL)
	}
	if e := n.mutate(); e != 0 {
		return e
	}
	p, ok := newParent.(*node)
	if !ok || p.r != n.r {
		return syscall.EXDEV
	}
	return gofs.ToErrno(unix.Renameat2(n.fd, name, p.fd, newName, uint(flags)))
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	buf := make([]byte, unix.PathMax)
	k, err := unix.Readlinkat(n.fd, "", buf)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return buf[:k], 0
}

func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	if n.hidden {
		return gofs.NewListDirStream(nil), 0
	}
	fd, err := hostdir.OpenBeneath(n.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return gofs.NewLoopbackDirStreamFd(fd)
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s unix.Statfs_t
	if err := unix.Fstatfs(n.fd, &s); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStatfsT((*syscall.Statfs_t)(unsafe.Pointer(&s)))
	return 0
}

// file is an open host file. It offers go-fuse's loopback file operations
// except locks (blocking ones would hold a worker; the guest kernel keeps
// locks itself when the server has none), ioctls and kernel passthrough.
type file struct {
	lf *gofs.LoopbackFile
	r  *root
}

func (r *root) newFile(fd int) *file {
	return &file{lf: gofs.NewLoopbackFile(fd).(*gofs.LoopbackFile), r: r}
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return f.lf.Read(ctx, dest, off)
}
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return f.lf.Write(ctx, data, off)
}
func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	return f.lf.Writev(ctx, data, off)
}
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.r.fds.Put(1)
	return f.lf.Release(ctx)
}
func (f *file) Flush(ctx context.Context) syscall.Errno { return f.lf.Flush(ctx) }
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return f.lf.Fsync(ctx, flags)
}
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return f.lf.Getattr(ctx, out)
}
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.lf.Lseek(ctx, off, whence)
}
func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return f.lf.Allocate(ctx, off, size, mode)
}
func (f *file) ftruncate(size uint64) syscall.Errno {
	return f.lf.Setattr(context.Background(), sizeOnly(size), &fuse.AttrOut{})
}

func sizeOnly(size uint64) *fuse.SetAttrIn {
	in := &fuse.SetAttrIn{}
	in.Valid = fuse.FATTR_SIZE
	in.Size = size
	return in
}

// sysStat views x/sys's stat as the standard library's, which go-fuse
// takes: both are the kernel's struct stat.
func sysStat(st *unix.Stat_t) *syscall.Stat_t { return (*syscall.Stat_t)(unsafe.Pointer(st)) }
