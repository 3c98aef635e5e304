// Package images obtains what ember boots: Debian's stock kernel packages,
// unpacked into a cache outside the checkout (never installed on the host),
// the ELF vmlinux inside each bzImage, and initramfs images built with
// u-root's mkuimage around ember's guest init.
package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is $XDG_CACHE_HOME/ember, else ~/.cache/ember.
func DefaultDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ember")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "ember")
	}
	return filepath.Join(os.TempDir(), "ember-cache")
}

// Cache is a directory of fetched kernels and built images. Layout:
//
//	kernels/<flavour>.version           the ABI version last resolved for a flavour
//	kernels/<version>/vmlinuz           bzImage
//	kernels/<version>/config            the kernel's .config
//	kernels/<version>/vmlinux           ELF vmlinux (Vmlinux, on first use)
//	kernels/<version>/lib/modules/<version>/{modules.dep,modules.order,…,kernel/…}
//	                                    only the modules ember's images use
//	kernels/<version>/kernel.json       manifest (sizes and checksums), written last: marks the entry complete
//	initramfs/<name>-<version>-<key>.cpio
//	initramfs/<...>.cpio.sum            its size and checksum, written last
//	build/uroot-<u-root version>/       Go module from which u-root's commands are built
//	locks/                              flock(2) files serializing writers of an entry
type Cache struct {
	Dir string
	// Log receives diagnostics; nil discards them.
	Log *slog.Logger
	// Progress receives a human line when a long step starts and ends;
	// nil is quiet.
	Progress io.Writer
	// Verify makes every use check cached files' checksums, not only
	// their sizes and modification times (ember images fetch sets it).
	Verify bool

	swept sync.Once
}

// Kernel is an unpacked Debian kernel in the cache.
type Kernel struct {
	Flavour    string
	Version    string // e.g. 6.1.0-56-amd64
	Path       string // bzImage
	ModulesDir string // .../lib/modules/<Version>
	Config     string // the kernel's .config
	// deps are the modules' dependencies when ModulesDir has no
	// modules.dep (a kernel build tree), and treeSum the sum of those
	// modules' contents.
	deps    depGraph
	treeSum string
}

func (c *Cache) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// step runs f, telling Progress when a long step starts and how long it
// took.
func (c *Cache) step(what string, f func() error) error {
	start := time.Now()
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "ember: %s…\n", what)
	}
	err := f()
	d := time.Since(start).Round(100 * time.Millisecond)
	c.log().Info("images", "step", what, "duration", d, "err", err)
	if c.Progress != nil {
		if err != nil {
			fmt.Fprintf(c.Progress, "ember: %s: failed after %s\n", what, d)
		} else {
			fmt.Fprintf(c.Progress, "ember: %s: done in %s\n", what, d)
		}
	}
	return err
}

// lock takes an exclusive flock on locks/<name> so two ember processes never
// build the same entry at once; the returned function releases it.
func (c *Cache) lock(ctx context.Context, name string) (func(), error) {
	c.sweep()
	dir := filepath.Join(c.Dir, "locks")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("cache lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Flavours are the Debian kernel flavours ember fetches.
var Flavours = []string{"cloud-amd64", "amd64"}

// ResolveKernel turns "debian:<flavour>" into a fetched kernel.
func ResolveKernel(ctx context.Context, c *Cache, spec string) (*Kernel, error) {
	f, ok := strings.CutPrefix(spec, "debian:")
	if !ok {
		return nil, fmt.Errorf("kernel %q: expected debian:<flavour> (%s)", spec, strings.Join(Flavours, ", "))
	}
	return c.Kernel(ctx, f)
}

// kernelLayout changes when what Kernel extracts changes (the module lists
// above, the layout, the manifest), so older cache entries are fetched
// again.
const kernelLayout = "3"

// moduleSet names what a cache entry holds; a mismatch means refetch.
func moduleSet() string {
	return hashOf([]byte(kernelLayout), []byte(strings.Join(l2Modules, ",")), []byte(strings.Join(l1Modules, ",")))
}

// manifest is kernels/<version>/kernel.json.
type manifest struct {
	Flavour   string             `json:"flavour"`
	Version   string             `json:"version"`
	Package   string             `json:"package"`
	ModuleSet string             `json:"module_set"`
	Files     map[string]fileSum `json:"files"` // relative path → size and checksum
}

// kernelPkgRE matches the dependency of linux-image-<flavour> in
// `apt-cache depends` output.
var kernelPkgRE = regexp.MustCompile(`^\s*Depends:\s*linux-image-(\d[\w.+~-]*)\s*$`)

// abiRE is a Debian kernel ABI: upstream version and ABI number.
var abiRE = regexp.MustCompile(`^\d+\.\d+(\.\d+)?-\d+$`)

// Kernel returns the current kernel of a Debian flavour, fetching it with
// apt-get download the first time. Later calls use the cache and need no
// network; a missing or damaged entry is fetched again.
func (c *Cache) Kernel(ctx context.Context, flavour string) (*Kernel, error) {
	if !slices.Contains(Flavours, flavour) {
		return nil, fmt.Errorf("unknown Debian kernel flavour %q (expected %s)", flavour, strings.Join(Flavours, " or "))
	}
	pin := filepath.Join(c.Dir, "kernels", flavour+".version")
	pinned := func() *Kernel {
		v, err := os.ReadFile(pin)
		if err != nil {
			return nil
		}
		k, err := c.kernelAt(flavour, strings.TrimSpace(string(v)))
		if err != nil {
			c.log().Info("cached kernel unusable; fetching again", "flavour", flavour, "err", err)
			return nil
		}
		return k
	}
	if k := pinned(); k != nil {
		return k, nil
	}
	unlock, err := c.lock(ctx, "kernel-"+flavour)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if k := pinned(); k != nil { // another process fetched it meanwhile
		return k, nil
	}
	version, err := currentVersion(ctx, flavour)
	if err != nil {
		return nil, err
	}
	k, err := c.kernelAt(flavour, version)
	if err != nil {
		if err := c.fetch(ctx, flavour, version); err != nil {
			return nil, err
		}
		if k, err = c.kernelAt(flavour, version); err != nil {
			return nil, fmt.Errorf("kernel %s after fetching: %w", version, err)
		}
	}
	if err := writeAtomic(pin, func(w io.Writer) error { _, err := io.WriteString(w, version+"\n"); return err }); err != nil {
		return nil, err
	}
	return k, nil
}

// currentVersion asks apt which kernel ABI linux-image-<flavour> points to.
func currentVersion(ctx context.Context, flavour string) (string, error) {
	meta := "linux-image-" + flavour
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", meta).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %v (a Debian host with apt is needed; run apt-get update)", meta, err)
	}
	return parseDepends(out, flavour, meta)
}

func parseDepends(out []byte, flavour, meta string) (string, error) {
	for _, l := range strings.Split(string(out), "\n") {
		m := kernelPkgRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		// The ABI (6.1.0-56) has no letters, so "-cloud-amd64" cannot pass
		// for the generic flavour.
		if abi, ok := strings.CutSuffix(m[1], "-"+flavour); ok && abiRE.MatchString(abi) {
			return m[1], nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s names no linux-image-<version>-%s package (run apt-get update)", meta, flavour)
}

// fetch downloads linux-image-<version>-unsigned and unpacks the files ember
// needs into kernels/<version>, replacing what was there.
func (c *Cache) fetch(ctx context.Context, flavour, version string) error {
	pkg := "linux-image-" + version + "-unsigned"
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	tmp, err := os.MkdirTemp(c.Dir, tempPrefix("fetch"))
	if err != nil {
		return fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	defer os.RemoveAll(tmp)
	what := "fetching " + pkg
	if size := packageSize(ctx, pkg); size > 0 {
		what += fmt.Sprintf(" (%d MB)", (size+500_000)/1_000_000)
	}
	err = c.step(what, func() error {
		// apt-get download writes into its working directory. As root
		// it warns that the _apt user cannot write there ("unsandboxed"):
		// harmless.
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			msg := lastLine(out)
			if bytes.Contains(out, []byte("Unable to locate")) || bytes.Contains(out, []byte("Can't select")) || bytes.Contains(out, []byte("has no installation candidate")) {
				return fmt.Errorf("apt-get download %s: package not found (run apt-get update): %s", pkg, msg)
			}
			return fmt.Errorf("apt-get download %s: %v: %s", pkg, err, msg)
		}
		return nil
	})
	if err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files, expected 1", pkg, len(debs))
	}
	stage := filepath.Join(tmp, "kernel")
	var m *manifest
	err = c.step("unpacking "+filepath.Base(debs[0]), func() error {
		m, err = extractKernel(debs[0], version, stage)
		return err
	})
	if err != nil {
		return err
	}
	m.Flavour, m.Package = flavour, pkg
	if err := m.sum(stage); err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(stage, "kernel.json"), b); err != nil {
		return err
	}
	if err := syncTree(stage); err != nil {
		return err
	}
	dir := filepath.Join(c.Dir, "kernels", version)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	// Move the old entry aside first: rename cannot replace a directory.
	old := filepath.Join(tmp, "old")
	if err := os.Rename(dir, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replacing %s: %w", dir, err)
	}
	if err := os.Rename(stage, dir); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// sum records every file's checksum and modification time.
func (m *manifest) sum(dir string) error {
	for rel := range m.Files {
		s, err := settleAndSum(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		m.Files[rel] = s
	}
	return nil
}

// syncTree syncs every directory under root (the files were synced as they
// were written), so a renamed entry survives a crash whole.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return syncDir(p)
	})
}

// packageSize is the download size apt reports, or 0.
func packageSize(ctx context.Context, pkg string) int64 {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Size: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// extractKernel unpacks from a kernel .deb into stage: vmlinuz, config,
// modules.* and the modules ember's images use with their dependencies.
// Which modules are needed is known only once every module's dependencies
// have been read, so one pass keeps the wanted modules and whatever they are
// seen to depend on in memory; a second pass over the package picks up any
// dependency that appeared in the archive before its dependent.
func extractKernel(deb, version, stage string) (*manifest, error) {
	modRoot := "lib/modules/" + version + "/"
	m := &manifest{Version: version, ModuleSet: moduleSet(), Files: map[string]fileSum{}}
	direct := map[string][]string{} // module → .modinfo depends
	kept := map[string][]byte{}     // module → ELF bytes
	wantName := map[string]bool{}
	for _, w := range append(slices.Clone(l2Modules), l1Modules...) {
		wantName[modName(w)] = true
	}
	var shippedDep depGraph
	write := func(rel string, b []byte) error {
		dst := filepath.Join(stage, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		m.Files[rel] = fileSum{Size: int64(len(b))}
		return writeFileSync(dst, b)
	}
	err := walkDeb(deb, func(name string, r io.Reader, size int64) error {
		var dst string
		switch {
		case name == "boot/vmlinuz-"+version:
			dst = "vmlinuz"
		case name == "boot/config-"+version:
			dst = "config"
		case strings.HasPrefix(name, modRoot+"kernel/") && strings.Contains(path.Base(name), ".ko"):
		case strings.HasPrefix(name, modRoot+"modules.") && !strings.Contains(strings.TrimPrefix(name, modRoot), "/"):
			dst = name
		default:
			return nil
		}
		b, err := readEntry(name, r, size)
		if err != nil {
			return err
		}
		if dst != "" {
			if path.Base(dst) == "modules.dep" {
				shippedDep, err = parseModulesDep(bytes.NewReader(b))
				return err // rewritten below
			}
			return write(dst, b)
		}
		rel, ko, err := decompressModule(strings.TrimPrefix(name, modRoot), b)
		if err != nil {
			return err
		}
		ds, err := modinfoDepends(ko)
		if err != nil {
			return fmt.Errorf("kernel module %s: %w", rel, err)
		}
		direct[rel] = ds
		if wantName[modName(rel)] {
			kept[rel] = ko
			for _, d := range ds {
				wantName[strings.ReplaceAll(d, "-", "_")] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", deb, err)
	}
	for _, f := range []string{"vmlinuz", "config"} {
		if _, ok := m.Files[f]; !ok {
			return nil, fmt.Errorf("%s: no %s for kernel %s in the package", deb, f, version)
		}
	}
	g := shippedDep
	if g == nil {
		if g, err = depGraphFromModinfo(direct); err != nil {
			return nil, fmt.Errorf("%s: %w", deb, err)
		}
	}
	var dep bytes.Buffer
	if err := writeModulesDep(&dep, g); err != nil {
		return nil, err
	}
	if err := write(modRoot+"modules.dep", dep.Bytes()); err != nil {
		return nil, err
	}
	l2, err := g.resolve(l2Modules, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", deb, err)
	}
	l1, err := g.resolve(l1Modules, false) // required only when an L1 image is built
	if err != nil {
		return nil, fmt.Errorf("%s: %w", deb, err)
	}
	need := map[string]bool{}
	for _, rel := range append(l2, l1...) {
		if _, ok := kept[rel]; !ok {
			need[rel] = true
		}
	}
	if len(need) > 0 {
		err := walkDeb(deb, func(name string, r io.Reader, size int64) error {
			rel, ok := strings.CutPrefix(name, modRoot)
			if !ok || !need[stripCompression(rel)] {
				return nil
			}
			b, err := readEntry(name, r, size)
			if err != nil {
				return err
			}
			rel, ko, err := decompressModule(rel, b)
			if err != nil {
				return err
			}
			kept[rel] = ko
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", deb, err)
		}
	}
	for _, rel := range append(l2, l1...) {
		ko, ok := kept[rel]
		if !ok {
			return nil, fmt.Errorf("%s: kernel module %s is in modules.dep but not in the package", deb, rel)
		}
		if err := write(modRoot+rel, ko); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// walkDeb calls fn for each regular file in a Debian package's data.tar,
// with its cleaned relative path.
func walkDeb(deb string, fn func(name string, r io.Reader, size int64) error) error {
	f, err := os.Open(deb)
	if err != nil {
		return err
	}
	defer f.Close()
	tr, closeData, err := debData(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return err
	}
	defer closeData()
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data.tar: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := fn(cleanTarPath(h.Name), tr, h.Size); err != nil {
			return err
		}
	}
}

// readEntry reads one archive member of plausible size.
func readEntry(name string, r io.Reader, size int64) ([]byte, error) {
	if size < 0 || size > maxModule {
		return nil, fmt.Errorf("%s is implausibly large (%d bytes)", name, size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%s: %w", name, noEOF(err))
	}
	return b, nil
}

// kernelAt returns the cached kernel version if its entry is complete: the
// manifest exists, matches this ember's module set, and every file it lists
// is as recorded (verifyFile).
func (c *Cache) kernelAt(flavour, version string) (*Kernel, error) {
	if version == "" || strings.ContainsAny(version, "/\x00") || version == "." || version == ".." {
		return nil, fmt.Errorf("bad kernel version %q", version)
	}
	dir := filepath.Join(c.Dir, "kernels", version)
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "kernel.json"), err)
	}
	if m.Version != version || m.ModuleSet != moduleSet() {
		return nil, fmt.Errorf("%s: made for another module set", dir)
	}
	for rel, sum := range m.Files {
		if err := verifyFile(filepath.Join(dir, rel), sum, c.Verify); err != nil {
			return nil, err
		}
	}
	return &Kernel{
		Flavour:    flavour,
		Version:    version,
		Path:       filepath.Join(dir, "vmlinuz"),
		ModulesDir: filepath.Join(dir, "lib", "modules", version),
		Config:     filepath.Join(dir, "config"),
	}, nil
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// hashOf names cache entries by their inputs.
func hashOf(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
