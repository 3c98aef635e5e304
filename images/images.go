// Package images obtains what ember boots: Debian's stock kernel packages,
// unpacked into a cache outside the checkout (never installed on the host),
// the ELF vmlinux inside each bzImage, and initramfs images built with
// u-root's mkuimage around ember's guest init.
package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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

// Cache is the image cache.
type Cache struct {
	Dir      string
	Log      *slog.Logger
	Progress io.Writer // human progress lines; nil = quiet
}

// Kernel is an unpacked Debian kernel.
type Kernel struct {
	Flavour    string
	Version    string // e.g. 6.1.0-56-amd64
	Path       string // bzImage
	ModulesDir string // .../lib/modules/<Version>
}

func (c *Cache) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// step runs f, telling Progress when a long step starts and ends.
func (c *Cache) step(what string, f func() error) error {
	start := time.Now()
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "ember: %s…\n", what)
	}
	err := f()
	if c.Progress != nil && err == nil {
		fmt.Fprintf(c.Progress, "ember: %s: done in %s\n", what, time.Since(start).Round(100*time.Millisecond))
	}
	return err
}

// lock serializes cache writers (two embers building the same entry).
func (c *Cache) lock() (func(), error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, ".lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// Flavours ember knows how to fetch.
var Flavours = []string{"cloud-amd64", "amd64"}

// ResolveKernel turns "debian:<flavour>" into a fetched kernel.
func ResolveKernel(ctx context.Context, c *Cache, spec string) (*Kernel, error) {
	f, ok := strings.CutPrefix(spec, "debian:")
	if !ok {
		return nil, fmt.Errorf("kernel %q: expected debian:<flavour>", spec)
	}
	return c.Kernel(ctx, f)
}

var depRE = regexp.MustCompile(`Depends: (linux-image-(\d[\w.-]*))\s*$`)

// Kernel returns the newest kernel of a flavour, fetching it with apt-get
// the first time. Later calls use the cache and need no network.
func (c *Cache) Kernel(ctx context.Context, flavour string) (*Kernel, error) {
	known := false
	for _, f := range Flavours {
		known = known || f == flavour
	}
	if !known {
		return nil, fmt.Errorf("unknown Debian kernel flavour %q (expected %s)", flavour, strings.Join(Flavours, " or "))
	}
	pin := filepath.Join(c.Dir, "kernels", flavour+".version")
	if v, err := os.ReadFile(pin); err == nil {
		if k, err := c.kernelAt(flavour, strings.TrimSpace(string(v))); err == nil {
			return k, nil
		}
	}
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-"+flavour).Output()
	if err != nil {
		return nil, fmt.Errorf("finding Debian's current %s kernel: apt-cache: %v (is this a Debian host with package lists? run apt-get update)", flavour, err)
	}
	var version string
	for _, l := range strings.Split(string(out), "\n") {
		if m := depRE.FindStringSubmatch(strings.TrimSpace(l)); m != nil && strings.HasSuffix(m[2], flavour) {
			version = m[2]
			break
		}
	}
	if version == "" {
		return nil, fmt.Errorf("apt-cache depends linux-image-%s names no kernel package (run apt-get update)", flavour)
	}
	if k, err := c.kernelAt(flavour, version); err == nil {
		return k, os.WriteFile(pin, []byte(version+"\n"), 0o644)
	}
	pkg := "linux-image-" + version + "-unsigned"
	dir := filepath.Join(c.Dir, "kernels", version)
	tmp, err := os.MkdirTemp(filepath.Join(c.Dir), "fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	err = c.step("fetching "+pkg, func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s: %v: %s", pkg, err, lastLine(out))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	unpacked := filepath.Join(tmp, "root")
	err = c.step("unpacking "+filepath.Base(debs[0]), func() error {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], unpacked).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, lastLine(out))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	stage := filepath.Join(tmp, "kernel")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return nil, err
	}
	for from, to := range map[string]string{
		"boot/vmlinuz-" + version:    "vmlinuz",
		"boot/config-" + version:     "config",
		"lib/modules/" + version:     "modules",
		"boot/System.map-" + version: "System.map",
	} {
		if err := os.Rename(filepath.Join(unpacked, from), filepath.Join(stage, to)); err != nil {
			return nil, fmt.Errorf("%s: package lacks %s: %w", pkg, from, err)
		}
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(stage, dir); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pin, []byte(version+"\n"), 0o644); err != nil {
		return nil, err
	}
	return c.kernelAt(flavour, version)
}

func (c *Cache) kernelAt(flavour, version string) (*Kernel, error) {
	dir := filepath.Join(c.Dir, "kernels", version)
	k := &Kernel{Flavour: flavour, Version: version, Path: filepath.Join(dir, "vmlinuz"), ModulesDir: filepath.Join(dir, "modules")}
	for _, p := range []string{k.Path, filepath.Join(k.ModulesDir, "kernel")} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	return k, nil
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

// writeAtomic writes via a temporary file so readers never see a partial
// cache entry.
func writeAtomic(path string, write func(w io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
