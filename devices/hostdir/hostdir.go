// Package hostdir is how ember's file-sharing devices (virtio-fs and
// virtio-9p) reach a host directory on a guest's behalf without leaving
// it: every file the guest knows is held as an O_PATH descriptor, and a
// name the guest sends is one path component resolved with openat2
// beneath its parent's descriptor, never following a symlink. Path
// strings, which a guest that swaps a directory for a symlink between two
// calls could steer outside the share, are never built.
package hostdir

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// FDBudget is one share's part of the descriptor limit, raised first as
// far as this process may: a guest keeps every inode it has seen in its
// cache (2000 new files are 2000 descriptors here), as virtiofsd's users
// know.
func FDBudget() int64 {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 256
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > l.Max {
			// Only a privileged process may raise the hard limit.
			if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}) == nil {
				l.Cur, l.Max = n, n
			}
		}
	}
	if l.Cur < l.Max && unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: l.Max, Max: l.Max}) == nil {
		l.Cur = l.Max
	}
	return min(1<<18, max(64, (int64(l.Cur)-1024)/4))
}

// ProcPath names fd's inode for the calls that have no *at form taking an
// O_PATH descriptor; the magic link leads to that inode, not to a path.
func ProcPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// ValidName accepts one path component.
func ValidName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return false
		}
	}
	return true
}

const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// OpenBeneath opens name in dir without leaving it or following links.
func OpenBeneath(dir int, name string, flags int, mode uint32) (int, error) {
	return unix.Openat2(dir, name, &unix.OpenHow{
		Flags: uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolve,
	})
}

// Stat is fstat of an O_PATH descriptor, not following a symlink.
func Stat(fd int, st *unix.Stat_t) error {
	return unix.Fstatat(fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

// special are the kernel's own file systems (statfs f_type), which a
// share of the host's / shows as empty directories.
var special = map[int64]bool{
	unix.PROC_SUPER_MAGIC: true, unix.SYSFS_MAGIC: true, unix.DEVPTS_SUPER_MAGIC: true,
	unix.CGROUP_SUPER_MAGIC: true, unix.CGROUP2_SUPER_MAGIC: true, unix.DEBUGFS_MAGIC: true,
	unix.TRACEFS_MAGIC: true, unix.SECURITYFS_MAGIC: true, unix.BPF_FS_MAGIC: true,
	unix.PSTOREFS_MAGIC: true, unix.EFIVARFS_MAGIC: true, unix.BINFMTFS_MAGIC: true,
	0x62656570: true, // configfs
	0x65735543: true, // fusectl
	0x19800202: true, // mqueue
}

// KernelFS reports whether fd is on one of the kernel's own file systems
// (or cannot be told).
func KernelFS(fd int) bool {
	var fs unix.Statfs_t
	return unix.Fstatfs(fd, &fs) != nil || special[int64(fs.Type)]
}

// SafeToOpen reports whether a file of mode may be opened for the guest:
// regular files and directories only. Device nodes would hand the guest a
// host device; FIFOs and sockets could block a worker for good.
func SafeToOpen(mode uint32) bool {
	t := mode & unix.S_IFMT
	return t == unix.S_IFREG || t == unix.S_IFDIR
}

// MknodAllowed reports whether the guest may create a node of mode:
// files, FIFOs and sockets, never device nodes on the host.
func MknodAllowed(mode uint32) bool {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK:
		return true
	}
	return false
}

// Link makes name in dir a hard link to the inode of the O_PATH
// descriptor target.
func Link(target, dir int, name string) error {
	err := unix.Linkat(target, "", dir, name, unix.AT_EMPTY_PATH)
	if err == unix.ENOENT || err == unix.EPERM {
		// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the magic link does not.
		err = unix.Linkat(unix.AT_FDCWD, ProcPath(target), dir, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}

// Budget bounds the descriptors a guest makes ember hold for one share
// (an O_PATH one per file it knows, one more per open file), so a guest
// cannot exhaust ember's descriptor table.
type Budget struct {
	n   atomic.Int64
	max int64
	// Refused counts what was refused: spent budget, and the devices'
	// confinement refusals (names, special files, read-only).
	Refused atomic.Uint64
}

// NewBudget is a budget of FDBudget descriptors.
func NewBudget() *Budget { return &Budget{max: FDBudget()} }

// Take reserves n descriptors; false (counted as refused) when the budget
// is spent.
func (b *Budget) Take(n int64) bool {
	if b.n.Add(n) > b.max {
		b.n.Add(-n)
		b.Refused.Add(1)
		return false
	}
	return true
}

// Put returns n descriptors.
func (b *Budget) Put(n int64) { b.n.Add(-n) }

// Held is the number of descriptors reserved.
func (b *Budget) Held() int64 { return b.n.Load() }

// CheckShare checks a share's tag (1 to maxTag bytes) and that dir is a
// directory.
func CheckShare(tag string, maxTag int, dir string) error {
	if tag == "" || len(tag) > maxTag {
		return fmt.Errorf("share tag %q: want 1 to %d bytes", tag, maxTag)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	return nil
}

// OpenRoot opens a share's directory as an O_PATH descriptor and returns
// it with the device of its file system.
func OpenRoot(dir string) (fd int, dev uint64, err error) {
	fd, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	var st unix.Stat_t
	if err := Stat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, st.Dev, nil
}

// Ino is st's inode number as a share shows it: inodes of other file
// systems mounted inside the share are mixed with their device, so they
// stay unique beside the root file system's.
func Ino(st *unix.Stat_t, rootDev uint64) uint64 {
	if st.Dev == rootDev {
		return st.Ino
	}
	return st.Ino ^ (st.Dev<<32 | st.Dev>>32)
}

// ErrNotRegular is CreateRegular finding something other than a regular
// file under the name.
var ErrNotRegular = errors.New("not a regular file")

// CreateRegular opens the regular file name in dir with flags (O_CREAT is
// added), creating it with mode, and returns it with an O_PATH
// descriptor of the same inode. It opens with O_NONBLOCK first, so an
// existing FIFO of that name cannot block the caller, then refuses
// anything but a regular file (ErrNotRegular).
func CreateRegular(dir int, name string, flags int, mode uint32) (fd, pathFD int, st unix.Stat_t, err error) {
	fd, err = OpenBeneath(dir, name, flags|unix.O_CREAT|unix.O_NONBLOCK, mode)
	if err != nil {
		return -1, -1, st, err
	}
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		err = ErrNotRegular
	}
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_CLOEXEC)
	}
	if err == nil {
		pathFD, err = unix.Open(ProcPath(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		unix.Close(fd)
		return -1, -1, st, err
	}
	return fd, pathFD, st, nil
}

// Truncate sets the size of the regular file whose O_PATH descriptor is
// pathFD (ftruncate needs a writable descriptor, which an O_PATH one is
// not).
func Truncate(pathFD int, size uint64) error {
	fd, err := unix.Open(ProcPath(pathFD), unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Ftruncate(fd, int64(size))
}
