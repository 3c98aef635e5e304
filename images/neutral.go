package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/cpio"
)

// NeutralMarker is the line the neutral init prints.
const NeutralMarker = "EMBER-BENCH-READY"

// NeutralInit is a static x86-64 Linux executable of a few hundred bytes
// that prints NeutralMarker and a newline on stdout and ends: as PID 1 it
// waits for the terminal to send the line (TCSBRK), then asks the kernel to
// power off (reboot(2)), which ends a VM, and is refused in a container
// without CAP_SYS_BOOT; then it exits with status 0. No runtime, no libc:
// the same program for every contender of a boot comparison, so none is
// measured on another's init. Not PID 1 (a test on the host), it only
// prints and exits.
func NeutralInit() []byte { return neutralProgram(false) }

// NeutralIdle is NeutralInit's twin for density measurements: it prints
// the marker and then waits for signals for ever (pause(2)), so a VM or
// container running it stays up, idle, until it is stopped from outside.
func NeutralIdle() []byte { return neutralProgram(true) }

func neutralProgram(idle bool) []byte {
	msg := []byte(NeutralMarker + "\n")
	var code []byte
	emit := func(b ...byte) { code = append(code, b...) }
	movEAX := func(v uint32) { emit(0xb8); code = binary.LittleEndian.AppendUint32(code, v) }
	movEDI := func(v uint32) { emit(0xbf); code = binary.LittleEndian.AppendUint32(code, v) }
	movESI := func(v uint32) { emit(0xbe); code = binary.LittleEndian.AppendUint32(code, v) }
	movEDX := func(v uint32) { emit(0xba); code = binary.LittleEndian.AppendUint32(code, v) }
	syscall := func() { emit(0x0f, 0x05) }

	movEAX(39) // getpid
	syscall()
	emit(0x89, 0xc3) // mov ebx, eax
	movEAX(1)        // write(1, msg, len)
	movEDI(1)
	emit(0x48, 0x8d, 0x35) // lea rsi, [rip+disp32]
	leaDisp := len(code)
	code = append(code, 0, 0, 0, 0)
	leaNext := len(code)
	movEDX(uint32(len(msg)))
	syscall()
	if idle {
		movEAX(34) // pause(), for ever
		syscall()
		emit(0xeb, 0xf7) // jmp back to the mov: -9 bytes
	}
	emit(0x83, 0xfb, 0x01) // cmp ebx, 1
	emit(0x75, 0)          // jne exit
	jneDisp := len(code) - 1
	jneNext := len(code)
	movEAX(16) // ioctl(1, TCSBRK, 1): wait until the line is sent
	movEDI(1)
	movESI(0x5409)
	movEDX(1)
	syscall()
	movEAX(169) // reboot(MAGIC1, MAGIC2, POWER_OFF, NULL)
	movEDI(0xfee1dead)
	movESI(0x28121969)
	movEDX(0x4321fedc)
	emit(0x45, 0x31, 0xd2) // xor r10d, r10d
	syscall()
	code[jneDisp] = byte(len(code) - jneNext)
	movEAX(231)      // exit_group(0)
	emit(0x31, 0xff) // xor edi, edi
	syscall()
	binary.LittleEndian.PutUint32(code[leaDisp:], uint32(len(code)-leaNext))
	code = append(code, msg...)

	// ELF64 header and one PT_LOAD segment mapping the whole file (ELF-64
	// Object File Format 1.5 §3, §5).
	const base, ehdr, phdr = 0x400000, 64, 56
	f := make([]byte, ehdr+phdr, ehdr+phdr+len(code))
	copy(f, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le := binary.LittleEndian
	le.PutUint16(f[16:], 2)    // ET_EXEC
	le.PutUint16(f[18:], 0x3e) // EM_X86_64
	le.PutUint32(f[20:], 1)    // EV_CURRENT
	le.PutUint64(f[24:], base+ehdr+phdr)
	le.PutUint64(f[32:], ehdr) // e_phoff
	le.PutUint16(f[52:], ehdr) // e_ehsize
	le.PutUint16(f[54:], phdr) // e_phentsize
	le.PutUint16(f[56:], 1)    // e_phnum
	p := f[ehdr:]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], 5) // PF_R|PF_X
	le.PutUint64(p[16:], base)
	le.PutUint64(p[24:], base)
	size := uint64(ehdr + phdr + len(code))
	le.PutUint64(p[32:], size)
	le.PutUint64(p[40:], size)
	le.PutUint64(p[48:], 0x1000)
	return append(f, code...)
}

// Neutral is the neutral root file system (NeutralInit at /init) in the
// forms a boot comparison needs, in one cache directory.
type Neutral struct {
	// Initrd is a newc cpio for VMs: /init, /idle and /dev/console, which
	// the kernel opens as init's stdin, stdout and stderr (rdinit=/idle
	// starts the idle one).
	Initrd string
	// Bundle is an OCI runtime bundle (config.json, rootfs/) running
	// /init with no capabilities, for crun and runc; IdleBundle runs
	// /idle (NeutralIdle) instead.
	Bundle, IdleBundle string
	// Tar is the root file system as a tar archive, for docker import.
	Tar string
	// Key names this content (an image tag for docker).
	Key string
}

// NeutralRootfs writes the neutral root file system's forms under the
// cache (once per content) and returns where they are.
func (c *Cache) NeutralRootfs() (*Neutral, error) {
	init, idle := NeutralInit(), NeutralIdle()
	h := sha256.New()
	// The layout's version counts too: the directories below.
	for _, b := range [][]byte{[]byte("layout 2"), init, idle, bundleConfig("/init"), bundleConfig("/idle")} {
		h.Write(b)
	}
	key := hex.EncodeToString(h.Sum(nil)[:8])
	dir := filepath.Join(c.Dir, "neutral", key)
	n := &Neutral{
		Initrd: filepath.Join(dir, "initrd.cpio"), Bundle: filepath.Join(dir, "bundle"),
		IdleBundle: filepath.Join(dir, "bundle-idle"), Tar: filepath.Join(dir, "rootfs.tar"), Key: key,
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return n, nil
	}
	for _, b := range []string{n.Bundle, n.IdleBundle} {
		// The mount points the runtimes mount on: a read-only root cannot
		// get them made at start.
		for _, d := range []string{"dev", "proc"} {
			if err := os.MkdirAll(filepath.Join(b, "rootfs", d), 0o755); err != nil {
				return nil, fmt.Errorf("neutral root file system: %w", err)
			}
		}
	}
	var cp bytes.Buffer
	err := writeCPIO(&cp, []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticFile("init", string(init), 0o755),
		cpio.StaticFile("idle", string(idle), 0o755),
	})
	if err != nil {
		return nil, fmt.Errorf("neutral initrd: %w", err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755})
	_ = tw.WriteHeader(&tar.Header{Name: "proc/", Typeflag: tar.TypeDir, Mode: 0o755})
	for _, f := range []struct {
		name string
		b    []byte
	}{{"init", init}, {"idle", idle}} {
		_ = tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(f.b))})
		_, _ = tw.Write(f.b)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("neutral tar: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{n.Initrd, cp.Bytes(), 0o644},
		{n.Tar, tb.Bytes(), 0o644},
		{filepath.Join(n.Bundle, "rootfs", "init"), init, 0o755},
		{filepath.Join(n.Bundle, "rootfs", "idle"), idle, 0o755},
		{filepath.Join(n.Bundle, "config.json"), bundleConfig("/init"), 0o644},
		{filepath.Join(n.IdleBundle, "rootfs", "init"), init, 0o755},
		{filepath.Join(n.IdleBundle, "rootfs", "idle"), idle, 0o755},
		{filepath.Join(n.IdleBundle, "config.json"), bundleConfig("/idle"), 0o644},
		{filepath.Join(dir, "done"), nil, 0o644},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("neutral root file system: %w", err)
		}
	}
	return n, nil
}

// bundleConfig is the OCI runtime configuration (runtime-spec 1.0) of a
// neutral bundle: prog as root without capabilities, a read-only root,
// new pid, mount, ipc, uts and network namespaces, /proc and a /dev tmpfs
// (where the runtime creates the standard device nodes).
func bundleConfig(prog string) []byte {
	type mount struct {
		Destination string   `json:"destination"`
		Type        string   `json:"type"`
		Source      string   `json:"source"`
		Options     []string `json:"options,omitempty"`
	}
	type ns struct {
		Type string `json:"type"`
	}
	cfg := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false,
			"user":     map[string]int{"uid": 0, "gid": 0},
			"args":     []string{prog},
			"env":      []string{"PATH=/"},
			"cwd":      "/",
			"capabilities": map[string][]string{
				"bounding": {}, "effective": {}, "permitted": {},
			},
			"noNewPrivileges": true,
		},
		"root":     map[string]any{"path": "rootfs", "readonly": true},
		"hostname": "ember-bench",
		"mounts": []mount{
			{"/proc", "proc", "proc", nil},
			{"/dev", "tmpfs", "tmpfs", []string{"nosuid", "strictatime", "mode=755", "size=64k"}},
		},
		"linux": map[string]any{
			"namespaces": []ns{{"pid"}, {"mount"}, {"ipc"}, {"uts"}, {"network"}},
		},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return b
}
