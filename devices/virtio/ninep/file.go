package ninep

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/hugelgupf/p9/fsimpl/templatefs"
	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/hostdir"
)

// tree is one share's host side: every p9.File of it is an O_PATH
// descriptor reached from the root one component at a time (hostdir).
type tree struct {
	rootFD   int
	rootDev  uint64
	readOnly bool
	fds      *hostdir.Budget // one per fid, one more per open fid
}

func openTree(dir string, readOnly bool) (*tree, error) {
	fd, dev, err := hostdir.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &tree{rootFD: fd, rootDev: dev, readOnly: readOnly, fds: hostdir.NewBudget()}, nil
}

func (t *tree) close() error { return unix.Close(t.rootFD) }

func (t *tree) take(n int64) bool { return t.fds.Take(n) }

func (t *tree) refuse(e linux.Errno) error {
	t.fds.Refused.Add(1)
	return e
}

// mutate refuses a change to a read-only share.
func (t *tree) mutate() error {
	if t.readOnly {
		return t.refuse(linux.EROFS)
	}
	return nil
}

// Attach is a new fid for the share's root.
func (t *tree) Attach() (p9.File, error) {
	if !t.take(1) {
		return nil, linux.ENFILE
	}
	fd, err := unix.FcntlInt(uintptr(t.rootFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.fds.Put(1)
		return nil, err
	}
	return &file{t: t, fd: fd, open: -1}, nil
}

// file is one fid: an O_PATH descriptor and, once opened, a real one.
type file struct {
	p9.DefaultWalkGetAttr
	templatefs.NoopRenamed

	t    *tree
	fd   int // O_PATH, O_NOFOLLOW
	open int // -1 until Open or Create

	mu   sync.Mutex
	dirs []p9.Dirent // a directory's entries, read at offset 0
}

var _ p9.File = (*file)(nil)

// newFile takes ownership of fd (O_PATH), whose descriptor was reserved.
func (f *file) newFile(fd int) *file { return &file{t: f.t, fd: fd, open: -1} }

func (f *file) stat(st *unix.Stat_t) error { return hostdir.Stat(f.fd, st) }

// qid names an inode.
func (t *tree) qid(st *unix.Stat_t) p9.QID {
	return p9.QID{Type: p9.FileMode(st.Mode).QIDType(), Path: hostdir.Ino(st, t.rootDev)}
}

// childQID is the QID of name in f, not following a symlink.
func (f *file) childQID(name string) (p9.QID, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(f.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return p9.QID{}, err
	}
	return f.t.qid(&st), nil
}

func (f *file) Walk(names []string) ([]p9.QID, p9.File, error) {
	if len(names) > 1 {
		return nil, nil, linux.EINVAL // the p9 server walks one at a time
	}
	if !f.t.take(1) {
		return nil, nil, linux.ENFILE
	}
	var fd int
	var err error
	if len(names) == 0 {
		fd, err = unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	} else if !hostdir.ValidName(names[0]) {
		err = f.t.refuse(linux.EINVAL)
	} else {
		fd, err = hostdir.OpenBeneath(f.fd, names[0], unix.O_PATH, 0)
	}
	if err != nil {
		f.t.fds.Put(1)
		return nil, nil, err
	}
	c := f.newFile(fd)
	var st unix.Stat_t
	if err := c.stat(&st); err != nil {
		c.Close()
		return nil, nil, err
	}
	if len(names) == 0 {
		return nil, c, nil
	}
	return []p9.QID{f.t.qid(&st)}, c, nil
}

var statMask = p9.AttrMask{Mode: true, NLink: true, UID: true, GID: true, RDev: true, ATime: true,
	MTime: true, CTime: true, INo: true, Size: true, Blocks: true}

func (f *file) GetAttr(p9.AttrMask) (p9.QID, p9.AttrMask, p9.Attr, error) {
	var st unix.Stat_t
	if err := f.stat(&st); err != nil {
		return p9.QID{}, p9.AttrMask{}, p9.Attr{}, err
	}
	return f.t.qid(&st), statMask, p9.Attr{
		Mode: p9.FileMode(st.Mode), UID: p9.UID(st.Uid), GID: p9.GID(st.Gid), NLink: p9.NLink(st.Nlink),
		RDev: p9.Dev(st.Rdev), Size: uint64(st.Size), BlockSize: uint64(st.Blksize), Blocks: uint64(st.Blocks),
		ATimeSeconds: uint64(st.Atim.Sec), ATimeNanoSeconds: uint64(st.Atim.Nsec),
		MTimeSeconds: uint64(st.Mtim.Sec), MTimeNanoSeconds: uint64(st.Mtim.Nsec),
		CTimeSeconds: uint64(st.Ctim.Sec), CTimeNanoSeconds: uint64(st.Ctim.Nsec),
	}, nil
}

func (f *file) SetAttr(valid p9.SetAttrMask, attr p9.SetAttr) error {
	if err := f.t.mutate(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := f.stat(&st); err != nil {
		return err
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if valid.Permissions && !isLink {
		if err := unix.Fchmodat(unix.AT_FDCWD, hostdir.ProcPath(f.fd), uint32(attr.Permissions)&0o7777, 0); err != nil {
			return err
		}
	}
	if valid.UID || valid.GID {
		u, g := -1, -1
		if valid.UID {
			u = int(attr.UID)
		}
		if valid.GID {
			g = int(attr.GID)
		}
		if err := unix.Fchownat(f.fd, "", u, g, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	if valid.Size {
		if err := f.truncate(&st, attr.Size); err != nil {
			return err
		}
	}
	if (valid.ATime || valid.MTime) && !isLink {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		set := func(i int, on, given bool, sec, nsec uint64) {
			switch {
			case on && given:
				ts[i] = unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
			case on:
				ts[i] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		set(0, valid.ATime, valid.ATimeNotSystemTime, attr.ATimeSeconds, attr.ATimeNanoSeconds)
		set(1, valid.MTime, valid.MTimeNotSystemTime, attr.MTimeSeconds, attr.MTimeNanoSeconds)
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, hostdir.ProcPath(f.fd), ts, 0); err != nil {
			return err
		}
	}
	return nil
}

func (f *file) truncate(st *unix.Stat_t, size uint64) error {
	if f.open >= 0 {
		if err := unix.Ftruncate(f.open, int64(size)); err != unix.EBADF && err != unix.EINVAL {
			return err
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return linux.EINVAL
	}
	return hostdir.Truncate(f.fd, size)
}

func (f *file) Close() error {
	n := int64(1)
	unix.Close(f.fd)
	if f.open >= 0 {
		unix.Close(f.open)
		n++
	}
	f.t.fds.Put(n)
	return nil
}

// openFlags are what a guest's open flags may ask of the host file: the
// access mode, and append.
func (f *file) openFlags(mode p9.OpenFlags) (int, error) {
	flags := mode.OSFlags()
	if flags != unix.O_RDONLY {
		if err := f.t.mutate(); err != nil {
			return 0, err
		}
	}
	if uint32(mode)&unix.O_APPEND != 0 {
		flags |= unix.O_APPEND
	}
	return flags | unix.O_CLOEXEC, nil
}

func (f *file) Open(mode p9.OpenFlags) (p9.QID, uint32, error) {
	var st unix.Stat_t
	if err := f.stat(&st); err != nil {
		return p9.QID{}, 0, err
	}
	if !hostdir.SafeToOpen(st.Mode) {
		return p9.QID{}, 0, f.t.refuse(linux.ENXIO)
	}
	flags, err := f.openFlags(mode)
	if err != nil {
		return p9.QID{}, 0, err
	}
	if !f.t.take(1) {
		return p9.QID{}, 0, linux.ENFILE
	}
	var fd int
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		fd, err = hostdir.OpenBeneath(f.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	} else {
		// The O_PATH descriptor's inode, reopened: it cannot have been
		// swapped since the check above.
		fd, err = unix.Open(hostdir.ProcPath(f.fd), flags, 0)
	}
	if err != nil {
		f.t.fds.Put(1)
		return p9.QID{}, 0, err
	}
	f.open = fd
	return f.t.qid(&st), 0, nil
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	if f.open < 0 {
		return 0, linux.EBADF
	}
	n, err := unix.Pread(f.open, p, off)
	if n < 0 {
		n = 0
	}
	return n, err
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	if f.open < 0 {
		return 0, linux.EBADF
	}
	if err := f.t.mutate(); err != nil {
		return 0, err
	}
	n, err := unix.Pwrite(f.open, p, off)
	if n < 0 {
		n = 0
	}
	return n, err
}

func (f *file) FSync() error {
	if f.open < 0 {
		return nil
	}
	return unix.Fsync(f.open)
}

func (f *file) StatFS() (p9.FSStat, error) {
	var s unix.Statfs_t
	if err := unix.Fstatfs(f.fd, &s); err != nil {
		return p9.FSStat{}, err
	}
	return p9.FSStat{Type: uint32(s.Type), BlockSize: uint32(s.Bsize), Blocks: s.Blocks, BlocksFree: s.Bfree,
		BlocksAvailable: s.Bavail, Files: s.Files, FilesFree: s.Ffree,
		FSID: uint64(uint32(s.Fsid.Val[0])) | uint64(uint32(s.Fsid.Val[1]))<<32, NameLength: uint32(s.Namelen)}, nil
}

// Lock grants every lock without taking one on the host: a blocking host
// lock would hold the share's only worker. Locks between the guest's own
// processes are the guest kernel's.
func (f *file) Lock(int, p9.LockType, p9.LockFlags, uint64, uint64, string) (p9.LockStatus, error) {
	return p9.LockStatusOK, nil
}

func (f *file) Create(name string, mode p9.OpenFlags, perm p9.FileMode, _ p9.UID, _ p9.GID) (p9.File, p9.QID, uint32, error) {
	if err := f.creatable(name); err != nil {
		return nil, p9.QID{}, 0, err
	}
	flags, _ := f.openFlags(mode)
	if !f.t.take(2) {
		return nil, p9.QID{}, 0, linux.ENFILE
	}
	fd, pfd, st, err := hostdir.CreateRegular(f.fd, name, flags|int(uint32(mode)&unix.O_EXCL), uint32(perm)&0o7777)
	if err != nil {
		f.t.fds.Put(2)
		if errors.Is(err, hostdir.ErrNotRegular) {
			return nil, p9.QID{}, 0, f.t.refuse(linux.ENXIO)
		}
		return nil, p9.QID{}, 0, err
	}
	c := f.newFile(pfd)
	c.open = fd
	return c, f.t.qid(&st), 0, nil
}

// made is the QID of what a create-like call just made as name.
func (f *file) made(name string, err error) (p9.QID, error) {
	if err != nil {
		return p9.QID{}, err
	}
	return f.childQID(name)
}

// creatable checks a name for a new entry of a writable share.
func (f *file) creatable(name string) error {
	if !hostdir.ValidName(name) {
		return f.t.refuse(linux.EINVAL)
	}
	return f.t.mutate()
}

func (f *file) Mkdir(name string, perm p9.FileMode, _ p9.UID, _ p9.GID) (p9.QID, error) {
	if err := f.creatable(name); err != nil {
		return p9.QID{}, err
	}
	return f.made(name, unix.Mkdirat(f.fd, name, uint32(perm)&0o7777))
}

func (f *file) Symlink(target, name string, _ p9.UID, _ p9.GID) (p9.QID, error) {
	if err := f.creatable(name); err != nil {
		return p9.QID{}, err
	}
	// The target is only text: the host never follows links in a share.
	return f.made(name, unix.Symlinkat(target, f.fd, name))
}

func (f *file) Link(target p9.File, name string) error {
	if err := f.creatable(name); err != nil {
		return err
	}
	t, ok := target.(*file)
	if !ok || t.t != f.t {
		return linux.EXDEV
	}
	return hostdir.Link(t.fd, f.fd, name)
}

func (f *file) Mknod(name string, mode p9.FileMode, _, _ uint32, _ p9.UID, _ p9.GID) (p9.QID, error) {
	if err := f.creatable(name); err != nil {
		return p9.QID{}, err
	}
	if !hostdir.MknodAllowed(uint32(mode)) {
		return p9.QID{}, f.t.refuse(linux.EPERM)
	}
	return f.made(name, unix.Mknodat(f.fd, name, uint32(mode)&(unix.S_IFMT|0o7777), 0))
}

// Rename is 9P2000's rename of a fid, which needs the fid's name: the
// guest's kernel uses RenameAt, and falls back to this only when that is
// not supported.
func (f *file) Rename(p9.File, string) error { return linux.ENOSYS }

func (f *file) RenameAt(oldName string, newDir p9.File, newName string) error {
	if !hostdir.ValidName(oldName) || !hostdir.ValidName(newName) {
		return f.t.refuse(linux.EINVAL)
	}
	if err := f.t.mutate(); err != nil {
		return err
	}
	nd, ok := newDir.(*file)
	if !ok || nd.t != f.t {
		return linux.EXDEV
	}
	return unix.Renameat(f.fd, oldName, nd.fd, newName)
}

func (f *file) UnlinkAt(name string, flags uint32) error {
	if err := f.creatable(name); err != nil {
		return err
	}
	return unix.Unlinkat(f.fd, name, int(flags)&unix.AT_REMOVEDIR)
}

func (f *file) Readlink() (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(f.fd, "", buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// maxDirents bounds one directory's entries held for the guest.
const maxDirents = 1 << 20

// Readdir returns entries from offset (an entry's index plus one); the
// directory is read afresh whenever the guest starts at 0.
func (f *file) Readdir(offset uint64, count uint32) (p9.Dirents, error) {
	if f.open < 0 {
		return nil, linux.EBADF
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if offset == 0 || f.dirs == nil {
		ents, err := readDir(f.open)
		if err != nil {
			return nil, err
		}
		f.dirs = ents
	}
	if offset >= uint64(len(f.dirs)) {
		return nil, nil
	}
	// An entry takes at least 24 bytes on the wire (QID, offset, type,
	// name length): no more than count could hold.
	end := min(uint64(len(f.dirs)), offset+uint64(count/24)+1)
	return f.dirs[offset:end], nil
}

// readDir reads the whole directory open at fd.
func readDir(fd int) ([]p9.Dirent, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	var out []p9.Dirent
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		// struct linux_dirent64: ino[8] off[8] reclen[2] type[1] name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				return nil, linux.EIO
			}
			name := b[19:reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			typ := p9.QIDType(0)
			switch b[18] {
			case unix.DT_DIR:
				typ = p9.TypeDir
			case unix.DT_LNK:
				typ = p9.TypeSymlink
			}
			if len(out) >= maxDirents {
				return nil, linux.EMFILE
			}
			out = append(out, p9.Dirent{QID: p9.QID{Type: typ, Path: binary.NativeEndian.Uint64(b)},
				Offset: uint64(len(out) + 1), Type: typ, Name: string(name)})
			b = b[reclen:]
		}
	}
}

// The share keeps no extended attributes: every name reads as absent,
// which is what a kernel looking for security.capability wants to hear.
func (f *file) GetXattr(string) ([]byte, error)              { return nil, linux.ENODATA }
func (f *file) ListXattrs() ([]string, error)                { return nil, nil }
func (f *file) SetXattr(string, []byte, p9.XattrFlags) error { return linux.EOPNOTSUPP }
func (f *file) RemoveXattr(string) error                     { return linux.ENODATA }
