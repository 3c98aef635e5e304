package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// guard stands between go-fuse's protocol server and its node file system
// where go-fuse trusts the kernel: FUSE's peer is normally the host's own
// kernel, here it is the guest's. go-fuse panics (with locks held) on a
// FORGET of more lookups than it handed out; guard counts the entries the
// guest was given and passes on only FORGETs that match them.
type guard struct {
	fuse.RawFileSystem
	faults func(string)

	mu      sync.Mutex
	lookups map[uint64]uint64
}

func newGuard(fs fuse.RawFileSystem, faults func(string)) *guard {
	return &guard{RawFileSystem: fs, faults: faults, lookups: map[uint64]uint64{}}
}

func (g *guard) count(st fuse.Status, out *fuse.EntryOut) fuse.Status {
	if st.Ok() && out.NodeId != 0 {
		g.mu.Lock()
		g.lookups[out.NodeId]++
		g.mu.Unlock()
	}
	return st
}

func (g *guard) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return g.count(g.RawFileSystem.Lookup(cancel, h, name, out), out)
}

func (g *guard) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return g.count(g.RawFileSystem.Mknod(cancel, in, name, out), out)
}

func (g *guard) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return g.count(g.RawFileSystem.Mkdir(cancel, in, name, out), out)
}

func (g *guard) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return g.count(g.RawFileSystem.Link(cancel, in, name, out), out)
}

func (g *guard) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return g.count(g.RawFileSystem.Symlink(cancel, h, target, name, out), out)
}

func (g *guard) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return g.count(g.RawFileSystem.Create(cancel, in, name, out), &out.EntryOut)
}

func (g *guard) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return fuse.ENOSYS
}

// ReadDirPlus would hand out lookups inside a directory listing; the
// capability is not offered, and a guest that sends it anyway is refused.
func (g *guard) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	g.faults("READDIRPLUS without the capability")
	return fuse.ENOSYS
}

func (g *guard) Forget(node, nlookup uint64) {
	g.mu.Lock()
	have := g.lookups[node]
	n := min(have, nlookup)
	if have == n {
		delete(g.lookups, node)
	} else {
		g.lookups[node] = have - n
	}
	g.mu.Unlock()
	if n < nlookup {
		g.faults("FORGET of lookups never handed out")
	}
	if n > 0 {
		g.RawFileSystem.Forget(node, n)
	}
}
