// Package configs is ember's VM description: a TOML schema decoded
// strictly (unknown keys are errors with file and line), an embedded
// default, and validation that names the key and what it expects.
package configs

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/pelletier/go-toml/v2"
)

//go:embed default.toml
var defaultTOML []byte

// VM is a whole VM description.
type VM struct {
	Boot    Boot    `toml:"boot"`
	Machine Machine `toml:"machine"`
	Run     Run     `toml:"run"`
	// Drives are virtio-blk disks ([[drive]] tables), in the guest's
	// order: /dev/vda, /dev/vdb, ...
	Drives []Drive `toml:"drive"`
	// RNG, when present ([rng]), gives the guest a virtio entropy device.
	RNG *RNG `toml:"rng"`
	// Nets are virtio-net interfaces ([[net]] tables): eth0, eth1, ...
	Nets []Net `toml:"net"`
	// Vsock, when present ([vsock]), gives the guest a virtio-vsock device.
	Vsock *Vsock `toml:"vsock"`
	// Shares are host directories the guest mounts ([[share]] tables).
	Shares []Share `toml:"share"`
	// Source is the file the config came from ("default" for the built-in).
	Source string `toml:"-"`
}

// Boot says what to boot.
type Boot struct {
	// Kernel is a bzImage or ELF vmlinux path, a kernel build tree,
	// "debian:<flavour>", or "minimal" (ember images kernel --minimal).
	Kernel string `toml:"kernel"`
	// Initrd is a path, "default" (ember's u-root image) or "none".
	Initrd string `toml:"initrd"`
	// Cmdline is appended to ember's own kernel command line.
	Cmdline string `toml:"cmdline"`
	// PanicOnWarn makes a kernel warning or oops a panic (exit 123), as
	// kernel CI wants: panic_on_warn=1 oops=panic.
	PanicOnWarn bool `toml:"panic_on_warn"`
	// Rootfs is the guest's root: "initramfs" (the default) or "host":
	// the host's / read-only over virtio-fs, with the working directory
	// writable and tmpfs where programs write.
	Rootfs string `toml:"rootfs"`
	// Tmpfs are directories of the host's root that the guest covers with
	// an empty writable tmpfs, with rootfs "host" ("~" is the caller's
	// home directory).
	Tmpfs []string `toml:"tmpfs"`
}

// Machine is the virtual hardware.
type Machine struct {
	CPUs   int    `toml:"cpus"`
	Memory Size   `toml:"memory"`
	Accel  string `toml:"accel"`
	// HugePages: true backs guest RAM with transparent huge pages (fewer
	// nested-paging misses, but a guest touching one byte of a 2 MiB
	// region costs the host all of it); false keeps it on 4 KiB pages,
	// touched lazily; unset follows the host's THP policy, as any other
	// program's memory would.
	HugePages *bool `toml:"huge_pages"`
}

// Run is what happens in the guest.
type Run struct {
	// Command runs when none is given and stdin is not a terminal.
	Command []string `toml:"command"`
	Env     []string `toml:"env"`
	// Timeout stops the guest after this long; 0 means never.
	Timeout Duration `toml:"timeout"`
}

// Drive is one virtio-blk disk backed by a raw image file.
type Drive struct {
	// Path is the raw image; the guest sees its size (whole 512-byte
	// sectors). A relative path in a config file is relative to the
	// file's directory.
	Path string `toml:"path"`
	// ReadOnly opens the image read-only; the device refuses writes.
	ReadOnly bool `toml:"read_only"`
	// ID is the drive's serial (GET_ID, /dev/disk/by-id), at most 20
	// bytes; it defaults to "ember<index>".
	ID string `toml:"id"`
}

// Net is one virtio-net interface over a host TAP device.
type Net struct {
	// Tap is the host interface: an existing tap is attached to, a name
	// no interface has is created for the VM's life; "" lets the kernel
	// name a new one.
	Tap string `toml:"tap"`
	// MAC is the guest's address ("" picks a locally administered one).
	MAC string `toml:"mac"`
	// Bridge, when set, is an existing bridge the tap joins.
	Bridge string `toml:"bridge"`
}

// MaxNets bounds the interfaces of one VM.
const MaxNets = 8

// ParseNet parses the --net flag: "tap=NAME[,mac=MAC][,bridge=BR]".
func ParseNet(s string) (Net, error) {
	var n Net
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		switch {
		case k == "tap" && ok:
			n.Tap = v
		case k == "mac" && ok:
			n.MAC = v
		case k == "bridge" && ok:
			n.Bridge = v
		default:
			return n, fmt.Errorf("%q: unknown part %q (expected tap=NAME[,mac=MAC][,bridge=BRIDGE])", s, part)
		}
	}
	return n, nil
}

// ParseMAC parses a unicast Ethernet address.
func ParseMAC(s string) ([6]byte, error) {
	var m [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("%q is not a MAC address (expected six hex pairs, e.g. 06:00:ac:10:00:02)", s)
	}
	if hw[0]&1 != 0 {
		return m, fmt.Errorf("%q is a multicast address (the first octet must be even)", s)
	}
	copy(m[:], hw)
	return m, nil
}

// RNG is the virtio entropy device (it has no settings).
type RNG struct{}

// Vsock is a virtio-vsock device whose host side is a unix socket: host
// programs connect to UDS and write "CONNECT <port>\n"; guest connections
// to host port P reach a listener on "<UDS>_<P>".
type Vsock struct {
	// CID is the guest's context ID (3 or more).
	CID uint32 `toml:"cid"`
	// UDS is the socket ember creates (it must not exist); a relative
	// path in a config file is relative to the file's directory.
	UDS string `toml:"uds"`
}

// ParseVsock parses the --vsock flag: "cid=N,uds=PATH".
func ParseVsock(s string) (Vsock, error) {
	var v Vsock
	for _, part := range strings.Split(s, ",") {
		k, val, _ := strings.Cut(part, "=")
		switch k {
		case "cid":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return v, fmt.Errorf("%q: cid %q is not a number", s, val)
			}
			v.CID = uint32(n)
		case "uds", "path":
			v.UDS = val
		default:
			return v, fmt.Errorf("%q: unknown part %q (expected cid=N,uds=PATH)", s, part)
		}
	}
	return v, nil
}

// MaxDrives bounds the drives of one VM (each takes an interrupt line).
const MaxDrives = 16

// ParseDrive parses the --drive flag: "path=IMG[,ro][,id=ID]", or just
// "IMG".
func ParseDrive(s string) (Drive, error) {
	var d Drive
	for i, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		switch {
		case !ok && i == 0 && part != "ro" && part != "":
			d.Path = part
		case k == "path" && ok:
			d.Path = v
		case (k == "ro" || k == "read_only" || k == "readonly") && (!ok || v == "on" || v == "true"):
			d.ReadOnly = true
		case (k == "ro" || k == "read_only" || k == "readonly") && (v == "off" || v == "false"):
			d.ReadOnly = false
		case k == "id" && ok:
			d.ID = v
		default:
			return d, fmt.Errorf("%q: unknown part %q (expected path=IMAGE[,ro][,id=SERIAL])", s, part)
		}
	}
	if d.Path == "" {
		return d, fmt.Errorf("%q: no image path (expected path=IMAGE[,ro][,id=SERIAL])", s)
	}
	return d, nil
}

// Flavours are the Debian kernel flavours "debian:<flavour>" accepts.
var Flavours = []string{"cloud-amd64", "amd64"}

// Limits. (The CPU limit is the boot tables': APIC IDs 0..CPUs-1 and the
// I/O APIC's ID all below 255.)
const (
	MinMemory = 64 << 20
	MaxMemory = 1 << 40
	MaxCPUs   = boot.MaxCPUs
	// pageSize is the granularity of guest memory.
	pageSize = 4096
)

// Default returns the built-in config.
func Default() *VM {
	v, err := Parse(defaultTOML, "default")
	if err != nil {
		// A test decodes default.toml; reaching this is a build mistake.
		panic("configs: built-in default.toml: " + err.Error())
	}
	return v
}

// maxConfigSize bounds a config file: TOML for one VM is a few hundred
// bytes.
const maxConfigSize = 1 << 20

// Load reads path over the defaults, strictly. It does not validate: the
// caller applies command-line overrides first and validates the result
// once (Validate).
func Load(path string) (*VM, error) {
	b, err := readSmall(path, "config", "; not a VM config")
	if err != nil {
		return nil, err
	}
	return Parse(b, path)
}

// readSmall reads a regular file of at most maxConfigSize bytes; errors
// start with what (and the path), a file too large ends with hint.
func readSmall(path, what, hint string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s: not a regular file", what, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("%s %s: larger than %d KiB%s", what, path, maxConfigSize>>10, hint)
	}
	return b, nil
}

// Parse decodes data (named name in messages) over the defaults.
func Parse(data []byte, name string) (*VM, error) {
	v := &VM{}
	if name != "default" {
		v = Default()
	}
	d := toml.NewDecoder(strings.NewReader(string(data)))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return nil, decodeError(name, data, err)
	}
	v.Source = name
	// Relative image and socket paths are the config file's neighbours.
	if name != "default" {
		rel := func(p *string) {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(filepath.Dir(name), *p)
			}
		}
		for i := range v.Drives {
			rel(&v.Drives[i].Path)
		}
		if v.Vsock != nil {
			rel(&v.Vsock.UDS)
		}
		for i := range v.Shares {
			rel(&v.Shares[i].Path)
		}
	}
	return v, nil
}

// decodeError turns go-toml's errors into "file:line: what".
func decodeError(name string, data []byte, err error) error {
	var sme *toml.StrictMissingError
	if errors.As(err, &sme) && len(sme.Errors) > 0 {
		e := sme.Errors[0]
		row, _ := e.Position()
		return fmt.Errorf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), "."))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		key := strings.Join(de.Key(), ".")
		if key == "" {
			key = keyAt(data, row)
		}
		if key != "" {
			msg = key + ": " + msg
		}
		return fmt.Errorf("%s:%d: %s", name, row, msg)
	}
	return fmt.Errorf("%s: %v", name, err)
}

// keyAt names the dotted key assigned on line row (1-based), from the
// nearest table header above it; "" when the line has no assignment.
func keyAt(data []byte, row int) string {
	lines := strings.Split(string(data), "\n")
	if row < 1 || row > len(lines) {
		return ""
	}
	k, _, ok := strings.Cut(lines[row-1], "=")
	if !ok {
		return ""
	}
	key := strings.Trim(strings.TrimSpace(k), `"`)
	for i := row - 2; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			return strings.Trim(l, "[] ") + "." + key
		}
	}
	return key
}

// Validate checks every value; the error names the key and the expectation.
func (v *VM) Validate() error {
	src := v.Source
	if src == "" {
		src = "config"
	}
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%s: %s: %s", src, key, fmt.Sprintf(format, a...))
	}
	if err := checkKernel(v.Boot.Kernel); err != nil {
		return bad("boot.kernel", "%v", err)
	}
	switch v.Boot.Initrd {
	case "default", "none", "":
	default:
		if err := checkFile(v.Boot.Initrd); err != nil {
			return bad("boot.initrd", "%v", err)
		}
	}
	if strings.ContainsAny(v.Boot.Cmdline, "\x00\n") {
		return bad("boot.cmdline", "must be one line")
	}
	if v.Machine.CPUs < 1 || v.Machine.CPUs > MaxCPUs {
		return bad("machine.cpus", "%d is out of range (expected 1..%d)", v.Machine.CPUs, MaxCPUs)
	}
	if v.Machine.Memory < MinMemory || v.Machine.Memory > MaxMemory {
		return bad("machine.memory", "%s is out of range (expected 64M..1T)", v.Machine.Memory)
	}
	if v.Machine.Memory%pageSize != 0 {
		return bad("machine.memory", "%s is not a multiple of 4K", v.Machine.Memory)
	}
	switch v.Machine.Accel {
	case "auto", "kvm", "nested":
	default:
		return bad("machine.accel", "%q (expected auto, kvm or nested)", v.Machine.Accel)
	}
	for _, e := range v.Run.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return bad("run.env", "%q (expected KEY=VALUE)", e)
		}
	}
	if v.Run.Timeout < 0 {
		return bad("run.timeout", "%s must not be negative", time.Duration(v.Run.Timeout))
	}
	if len(v.Drives) > MaxDrives {
		return bad("drive", "%d drives (at most %d)", len(v.Drives), MaxDrives)
	}
	var images []os.FileInfo
	for i, d := range v.Drives {
		key := fmt.Sprintf("drive[%d]", i)
		st, err := checkImage(d)
		if err != nil {
			return bad(key+".path", "%v", err)
		}
		if len(d.ID) > 20 || strings.IndexFunc(d.ID, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			return bad(key+".id", "%q (expected at most 20 printable ASCII characters, no spaces)", d.ID)
		}
		for j, o := range images {
			if os.SameFile(st, o) {
				return bad(key+".path", "%s is also drive[%d] (one image, one drive)", d.Path, j)
			}
		}
		images = append(images, st)
	}
	if len(v.Nets) > MaxNets {
		return bad("net", "%d interfaces (at most %d)", len(v.Nets), MaxNets)
	}
	for i, n := range v.Nets {
		key := fmt.Sprintf("net[%d]", i)
		if len(n.Tap) > 15 || strings.ContainsAny(n.Tap, "/ \t:") {
			return bad(key+".tap", "%q (expected an interface name: at most 15 characters, no '/', ':' or spaces)", n.Tap)
		}
		if n.MAC != "" {
			if _, err := ParseMAC(n.MAC); err != nil {
				return bad(key+".mac", "%v", err)
			}
		}
		if n.Bridge != "" {
			if _, err := net.InterfaceByName(n.Bridge); err != nil {
				return bad(key+".bridge", "%s: no such interface (create the bridge first)", n.Bridge)
			}
		}
	}
	if v.Vsock != nil {
		if err := checkVsock(*v.Vsock); err != nil {
			return bad("vsock."+err.key, "%s", err.msg)
		}
	}
	switch v.Boot.Rootfs {
	case "", "initramfs", "host":
	default:
		return bad("boot.rootfs", "%q (expected initramfs or host)", v.Boot.Rootfs)
	}
	if len(v.Boot.Tmpfs) > 0 && v.Boot.Rootfs != "host" {
		return bad("boot.tmpfs", "needs rootfs = \"host\" (ember's own image is writable memory already)")
	}
	if len(v.Boot.Tmpfs) > MaxShares {
		return bad("boot.tmpfs", "%d directories (at most %d)", len(v.Boot.Tmpfs), MaxShares)
	}
	for _, d := range v.Boot.Tmpfs {
		if err := checkTmpfs(d); err != "" {
			return bad("boot.tmpfs", "%q: %s", d, err)
		}
	}
	if len(v.Shares) > MaxShares {
		return bad("share", "%d shares (at most %d)", len(v.Shares), MaxShares)
	}
	for i, sh := range v.Shares {
		if err := checkShare(sh, v.Shares[:i]); err != nil {
			return bad(fmt.Sprintf("share[%d].%s", i, err.key), "%s", err.msg)
		}
	}
	return nil
}

// Share is a host directory the guest mounts with virtio-fs.
type Share struct {
	// Path is the host directory; a relative path in a config file is
	// relative to the file's directory.
	Path string `toml:"path"`
	// Guest is where the guest mounts it (default: the same path).
	Guest string `toml:"guest"`
	// ReadOnly refuses every change on the host side.
	ReadOnly bool `toml:"read_only"`
	// Transport is "virtiofs" (the default) or "9p" (virtio-9p, for
	// kernels with 9p and without virtiofs).
	Transport string `toml:"transport"`
}

// Is9P reports whether sh goes over virtio-9p.
func (sh Share) Is9P() bool { return sh.Transport == "9p" }

// MaxShares bounds the shares of one VM (each takes an interrupt line).
const MaxShares = 8

// shareSyntax is the --share flag's form, for messages.
const shareSyntax = "HOSTDIR[:GUESTDIR][,ro][,9p]"

// ParseShare parses the --share flag: "HOSTDIR[:GUESTDIR][,ro][,9p]".
func ParseShare(s string) (Share, error) {
	var sh Share
	spec, opts, _ := strings.Cut(s, ",")
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "ro":
				sh.ReadOnly = true
			case "9p", "virtiofs":
				sh.Transport = o
			default:
				return sh, fmt.Errorf("%q: unknown option %q (expected %s)", s, o, shareSyntax)
			}
		}
	}
	sh.Path, sh.Guest, _ = strings.Cut(spec, ":")
	if sh.Path == "" {
		return sh, fmt.Errorf("%q: no host directory (expected %s)", s, shareSyntax)
	}
	return sh, nil
}

// GuestPath is where the guest mounts sh.
func (sh Share) GuestPath() string {
	if sh.Guest != "" {
		return sh.Guest
	}
	abs, _ := filepath.Abs(sh.Path)
	return abs
}

func checkShare(sh Share, before []Share) *keyError {
	st, err := os.Stat(sh.Path)
	switch {
	case sh.Path == "":
		return &keyError{"path", "empty (expected a host directory)"}
	case err != nil:
		return &keyError{"path", err.Error()}
	case !st.IsDir():
		return &keyError{"path", fmt.Sprintf("%s is not a directory", sh.Path)}
	}
	switch sh.Transport {
	case "", "virtiofs", "9p":
	default:
		return &keyError{"transport", fmt.Sprintf("%q (expected virtiofs or 9p)", sh.Transport)}
	}
	g := sh.GuestPath()
	if !filepath.IsAbs(g) || filepath.Clean(g) != g || g == "/" || strings.ContainsAny(g, "\x00\n") {
		return &keyError{"guest", fmt.Sprintf("%q (expected an absolute, clean path other than /)", g)}
	}
	for j, o := range before {
		if o.GuestPath() == g {
			return &keyError{"guest", fmt.Sprintf("%s is also share[%d]'s mount point", g, j)}
		}
	}
	return nil
}

type keyError struct{ key, msg string }

// checkVsock checks a vsock device's settings (what the device would
// refuse when it opens).
func checkVsock(v Vsock) *keyError {
	if v.CID < 3 || v.CID == ^uint32(0) {
		return &keyError{"cid", fmt.Sprintf("%d (expected 3 to 4294967294; 0-2 are reserved)", v.CID)}
	}
	switch {
	case v.UDS == "":
		return &keyError{"uds", "empty (expected the path of a unix socket for ember to create)"}
	case len(v.UDS) > 100:
		return &keyError{"uds", fmt.Sprintf("%s is too long for a unix socket (at most 100 bytes, leaving room for _PORT)", v.UDS)}
	}
	if _, err := os.Lstat(v.UDS); err == nil {
		return &keyError{"uds", fmt.Sprintf("%s already exists (ember creates the socket; remove a stale one)", v.UDS)}
	}
	if st, err := os.Stat(filepath.Dir(v.UDS)); err != nil || !st.IsDir() {
		return &keyError{"uds", fmt.Sprintf("%s: directory %s does not exist", v.UDS, filepath.Dir(v.UDS))}
	}
	return nil
}

// checkImage checks that a drive's image is a regular file ember may open
// as the drive needs (read-write unless read-only), and returns it.
func checkImage(d Drive) (os.FileInfo, error) {
	if d.Path == "" {
		return nil, errors.New("empty (expected a raw disk image file)")
	}
	mode := os.O_RDWR
	if d.ReadOnly {
		mode = os.O_RDONLY
	}
	return openable(d.Path, mode, fmt.Sprintf(" (create one with e.g. truncate -s 1G %s)", d.Path), " (a raw disk image is expected)")
}

func checkKernel(k string) error {
	if f, ok := strings.CutPrefix(k, "debian:"); ok {
		for _, x := range Flavours {
			if f == x {
				return nil
			}
		}
		return fmt.Errorf("unknown Debian flavour %q (expected debian:%s)", f, strings.Join(Flavours, " or debian:"))
	}
	if k == "" {
		return errors.New("empty (expected a kernel path, debian:<flavour> or minimal)")
	}
	if k == "minimal" {
		// Built by ember images kernel --minimal; launch says if it is not.
		return nil
	}
	if st, err := os.Stat(k); err == nil && st.IsDir() {
		_, err := KernelInTree(k)
		return err
	}
	return checkFile(k)
}

// treeKernels are where a kernel build tree has its kernel, best first:
// the bzImage (what `make` builds), then the ELF vmlinux (PVH).
var treeKernels = []string{"arch/x86/boot/bzImage", "arch/x86_64/boot/bzImage", "vmlinux"}

// KernelInTree returns the kernel built in the kernel source or build
// directory dir.
func KernelInTree(dir string) (string, error) {
	for _, rel := range treeKernels {
		p := filepath.Join(dir, rel)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, checkFile(p)
		}
	}
	return "", fmt.Errorf("%s: a directory without a built kernel (looked for %s; run make in the tree first)", dir, strings.Join(treeKernels, ", "))
}

func checkFile(p string) error {
	_, err := openable(p, os.O_RDONLY, "", "")
	return err
}

// openable checks that p is a regular file that opens with flag; the
// hints end the "no such file" and "not a regular file" messages.
func openable(p string, flag int, missingHint, kindHint string) (os.FileInfo, error) {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such file%s", p, missingHint)
		}
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file%s", p, kindHint)
	}
	f, err := os.OpenFile(p, flag, 0)
	if err != nil {
		return nil, err
	}
	return st, f.Close()
}

// Size is a byte count written with a binary suffix: 512M, 2G.
type Size uint64

// ParseSize parses "512M", "2G", "1024K", "1T" or a plain byte count.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if n := len(t); n > 1 && (t[n-1] == 'i' || t[n-1] == 'I') {
		t = t[:n-1] // "Gi" means the same as "G"
	}
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch strings.ToUpper(t[n-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (expected a number with K, M or G, e.g. 512M)", s)
	}
	return Size(n * mult), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s Size) String() string {
	for _, u := range []struct {
		shift uint
		sfx   string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if s != 0 && uint64(s)%(1<<u.shift) == 0 {
			return strconv.FormatUint(uint64(s)>>u.shift, 10) + u.sfx
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

// Duration is a time.Duration written as a Go duration string.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (expected e.g. 30s or 5m)", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// checkTmpfs says what is wrong with a tmpfs directory of a host root:
// "~", "~/DIR" or an absolute path other than / and the guest's own
// mounts.
func checkTmpfs(d string) string {
	rest, home := strings.CutPrefix(d, "~")
	switch {
	case d == "":
		return "empty (expected an absolute directory or ~)"
	case home && rest != "" && !strings.HasPrefix(rest, "/"):
		return "expected ~ or ~/DIR (another user's home is not known here)"
	case !home && !filepath.IsAbs(d):
		return "not absolute (expected /DIR or ~)"
	case !home && filepath.Clean(d) == "/":
		return "the whole root cannot be a tmpfs"
	}
	for _, own := range []string{"/proc", "/sys", "/dev"} {
		if c := filepath.Clean(d); c == own || strings.HasPrefix(c, own+"/") {
			return "the guest's kernel interfaces are there"
		}
	}
	return ""
}
