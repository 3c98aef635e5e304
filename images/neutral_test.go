package images

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestNeutralInitRuns(t *testing.T) {
	b := NeutralInit()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || len(f.Progs) != 1 {
		t.Fatalf("ELF header: %v %v %v, %d segments", f.Class, f.Machine, f.Type, len(f.Progs))
	}
	if len(b) > 512 {
		t.Errorf("neutral init is %d bytes; it is meant to be tiny", len(b))
	}
	// Not PID 1 here: it prints and exits, never asking for a power-off.
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(p).Output()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if string(out) != NeutralMarker+"\n" {
		t.Fatalf("printed %q", out)
	}
}

// The idle twin prints the marker and stays until it is killed.
func TestNeutralIdleWaits(t *testing.T) {
	p := filepath.Join(t.TempDir(), "idle")
	if err := os.WriteFile(p, NeutralIdle(), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != NeutralMarker+"\n" {
		t.Fatalf("printed %q, %v", line, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("idle program exited: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// Signals with no handler wake pause(2) and end the process.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("idle program ignored SIGTERM")
	}
}

func TestNeutralRootfs(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	n, err := c.NeutralRootfs()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(n.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]cpio.Record{}
	for _, r := range recs {
		names[r.Name] = r
	}
	if r, ok := names["dev/console"]; !ok || r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("no dev/console 5:1 in the initrd: %v", names)
	}
	if _, ok := names["init"]; !ok {
		t.Errorf("no init in the initrd")
	}
	if _, ok := names["idle"]; !ok {
		t.Errorf("no idle in the initrd")
	}
	if b, err := os.ReadFile(filepath.Join(n.IdleBundle, "config.json")); err != nil || !bytes.Contains(b, []byte(`"/idle"`)) {
		t.Errorf("idle bundle config: %s %v", b, err)
	}
	var cfg struct {
		Process struct {
			Args         []string            `json:"args"`
			Capabilities map[string][]string `json:"capabilities"`
		} `json:"process"`
	}
	b, err := os.ReadFile(filepath.Join(n.Bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Process.Args) != 1 || cfg.Process.Args[0] != "/init" || len(cfg.Process.Capabilities["bounding"]) != 0 {
		t.Errorf("bundle process: %+v", cfg.Process)
	}
	for _, d := range []string{"dev", "proc"} {
		if st, err := os.Stat(filepath.Join(n.Bundle, "rootfs", d)); err != nil || !st.IsDir() {
			t.Errorf("bundle rootfs lacks the mount point /%s: %v", d, err)
		}
	}
	if st, err := os.Stat(filepath.Join(n.Bundle, "rootfs", "init")); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("bundle init: %v %v", st, err)
	}
	// A second call finds the same files.
	n2, err := c.NeutralRootfs()
	if err != nil || *n2 != *n {
		t.Errorf("second call: %+v %v", n2, err)
	}
}
