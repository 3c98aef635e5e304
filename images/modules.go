package images

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/ember-vmm/ember/boot/elf64"
)

// l2Modules go into the default image when the flavour has them (absent
// ones are skipped): virtio over MMIO with its block, network, entropy,
// vsock and 9p drivers, and ext4 for block devices with the crc32c it
// loads by name (metadata checksums; not in modules.dep, and built in on
// some flavours only). Dependencies come from modules.dep.
var l2Modules = []string{
	"drivers/virtio/virtio_mmio.ko",
	"drivers/block/virtio_blk.ko",
	"drivers/net/virtio_net.ko",
	"drivers/char/hw_random/virtio-rng.ko",
	"net/vmw_vsock/vmw_vsock_virtio_transport.ko",
	"net/9p/9pnet_virtio.ko",
	"fs/9p/9p.ko",
	"fs/ext4/ext4.ko",
	"crypto/crc32c_generic.ko",
	"drivers/char/virtio_console.ko",
	"fs/fuse/virtiofs.ko",
}

// l1Modules give --accel nested's L1 guest /dev/kvm (AMD SVM, which QEMU's
// TCG emulates), 9p over virtio-pci for the host's files, and NICs, taps
// and bridges for the inner VMs' networks, in the load
// order of ../shared/nested-kvm.md. All are required.
var l1Modules = []string{
	"virt/lib/irqbypass.ko",
	"drivers/crypto/ccp/ccp.ko",
	"arch/x86/kvm/kvm.ko",
	"arch/x86/kvm/kvm-amd.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko",
	"drivers/virtio/virtio_pci.ko",
	"net/9p/9pnet.ko",
	"net/9p/9pnet_virtio.ko",
	"fs/netfs/netfs.ko",
	"fs/fscache/fscache.ko",
	"fs/9p/9p.ko",
	// Taps and bridges for virtio-net guests of the inner ember, and
	// L1's own NICs (host taps, the vsock relay).
	"drivers/net/tun.ko",
	"drivers/net/virtio_net.ko",
	"net/bridge/bridge.ko",
	// The command's standard streams (virtio-serial).
	"drivers/char/virtio_console.ko",
}

// modName is the kernel's name for a module file: the base name without
// .ko, with '-' read as '_' (as kmod compares them).
func modName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// stripCompression turns kernel/x.ko.xz into kernel/x.ko.
func stripCompression(p string) string {
	if i := strings.LastIndex(p, ".ko"); i >= 0 {
		return p[:i+3]
	}
	return p
}

// depGraph maps a module path (relative to lib/modules/<ver>, e.g.
// "kernel/fs/9p/9p.ko") to its dependencies as modules.dep lists them.
type depGraph map[string][]string

// parseModulesDep reads depmod's modules.dep(5): one "module: dep dep…"
// line per module, dependencies (direct and indirect) listed so that they
// load last to first. Compression suffixes are dropped: ember stores
// modules uncompressed.
func parseModulesDep(r io.Reader) (depGraph, error) {
	g := depGraph{}
	s := bufio.NewScanner(r)
	s.Buffer(nil, 1<<20)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" || strings.ContainsAny(mod, " \t") {
			return nil, fmt.Errorf("modules.dep line %d: expected \"module: deps\"", n)
		}
		var ds []string
		for _, d := range strings.Fields(deps) {
			ds = append(ds, stripCompression(d))
		}
		g[stripCompression(mod)] = ds
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return g, nil
}

// writeModulesDep writes g in modules.dep(5) form, sorted for stable output.
func writeModulesDep(w io.Writer, g depGraph) error {
	mods := make([]string, 0, len(g))
	for m := range g {
		mods = append(mods, m)
	}
	sort.Strings(mods)
	bw := bufio.NewWriter(w)
	for _, m := range mods {
		fmt.Fprintf(bw, "%s:", m)
		for _, d := range g[m] {
			fmt.Fprintf(bw, " %s", d)
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// depGraphFromModinfo builds what depmod would write from each module's
// direct dependencies (.modinfo "depends="): Debian's packages ship no
// modules.dep, depmod creates it at install time. direct maps a module path
// to the kernel names of its dependencies.
func depGraphFromModinfo(direct map[string][]string) (depGraph, error) {
	byName := map[string]string{}
	for p := range direct {
		byName[modName(p)] = p
	}
	g := depGraph{}
	for p := range direct {
		order, err := loadOrder([]string{p}, func(m string) ([]string, error) {
			var ds []string
			for _, n := range direct[m] {
				d, ok := byName[strings.ReplaceAll(n, "-", "_")]
				if !ok {
					return nil, fmt.Errorf("kernel module %s needs %s, which is not among the kernel's modules", m, n)
				}
				ds = append(ds, d)
			}
			return ds, nil
		})
		if err != nil {
			return nil, err
		}
		deps := order[:len(order)-1] // without p itself
		slices.Reverse(deps)         // modules.dep lists them last-loaded first
		g[p] = deps
	}
	return g, nil
}

// loadOrder returns roots and their dependencies, each after everything it
// depends on, each once. deps lists a module's dependencies.
func loadOrder(roots []string, deps func(string) ([]string, error)) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(m string, depth int) error
	visit = func(m string, depth int) error {
		switch state[m] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("kernel module %s: dependency cycle", m)
		}
		if depth > 64 {
			return fmt.Errorf("kernel module %s: dependency chain too deep", m)
		}
		state[m] = 1
		ds, err := deps(m)
		if err != nil {
			return err
		}
		for _, d := range ds {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		state[m] = 2
		out = append(out, m)
		return nil
	}
	for _, r := range roots {
		if err := visit(r, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// resolve expands wanted (paths under kernel/, matched by module name) to
// module paths in load order, dependencies first. A wanted module the
// kernel lacks is an error if required, else skipped.
func (g depGraph) resolve(wanted []string, required bool) ([]string, error) {
	byName := map[string]string{}
	for p := range g {
		byName[modName(p)] = p
	}
	var roots []string
	for _, w := range wanted {
		p, ok := byName[modName(w)]
		if !ok {
			if required {
				return nil, fmt.Errorf("kernel module %s not found in modules.dep", w)
			}
			continue
		}
		roots = append(roots, p)
	}
	return loadOrder(roots, func(m string) ([]string, error) {
		ds, ok := g[m]
		if !ok {
			return nil, fmt.Errorf("kernel module %s is listed as a dependency but not in modules.dep", m)
		}
		// Listed last-loaded first: walk backwards so ties keep depmod's order.
		rev := slices.Clone(ds)
		slices.Reverse(rev)
		return rev, nil
	})
}

// modinfoDepends reads "depends=a,b" from a module's .modinfo section,
// reading nothing but the section headers and that section (elf64 never
// inflates compressed sections; every read is bounded by the module's
// size).
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf64.Open(bytes.NewReader(ko), int64(len(ko)))
	if err != nil {
		return nil, err
	}
	ss, err := f.Sections()
	if err != nil {
		return nil, err
	}
	var b []byte
	for _, s := range ss {
		if s.Name == ".modinfo" {
			if b, err = f.Data(s, uint64(len(ko))); err != nil {
				return nil, err
			}
			break
		}
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var ds []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					ds = append(ds, d)
				}
			}
			return ds, nil
		}
	}
	return nil, nil
}
