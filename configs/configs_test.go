package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultDecodes(t *testing.T) {
	d := Default()
	if d.Machine.CPUs != 1 || d.Machine.Memory != 512<<20 || d.Boot.Kernel != "debian:cloud-amd64" || len(d.Run.Command) == 0 {
		t.Fatalf("default = %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	// Unset, so guest RAM follows the host's THP policy.
	if d.Machine.HugePages != nil {
		t.Errorf("default huge_pages = %v, want unset", *d.Machine.HugePages)
	}
}

func TestExamplesLoad(t *testing.T) {
	files, _ := filepath.Glob("examples/*.toml")
	if len(files) < 2 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		v, err := Load(f)
		if err == nil {
			// The drives an example names are the user's to create.
			for _, d := range v.Drives {
				if _, serr := os.Stat(d.Path); serr != nil {
					if werr := os.WriteFile(d.Path, nil, 0o644); werr != nil {
						t.Fatal(werr)
					}
					defer os.Remove(d.Path)
				}
			}
			err = v.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestDrives(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vm.toml")
	os.WriteFile(cfg, []byte("[[drive]]\npath = \"a.img\"\n[[drive]]\npath = \"/abs/b.img\"\nread_only = true\nid = \"b\"\n[rng]\n"), 0o644)
	v, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Drives) != 2 || v.Drives[0].Path != filepath.Join(dir, "a.img") || v.Drives[1].Path != "/abs/b.img" || !v.Drives[1].ReadOnly || v.RNG == nil {
		t.Fatalf("decoded %+v rng %v", v.Drives, v.RNG)
	}
	for in, want := range map[string]Drive{
		"disk.img":                 {Path: "disk.img"},
		"path=a.img,ro":            {Path: "a.img", ReadOnly: true},
		"path=a.img,ro=off,id=x-1": {Path: "a.img", ID: "x-1"},
		"path=a,b.img,read_only":   {},
	} {
		got, err := ParseDrive(in)
		if want == (Drive{}) {
			if err == nil {
				t.Errorf("%q accepted as %+v", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, toml, want string }{
		{"unknown", "[machine]\ncpus = 2\ncpu = 1\n", `:3: unknown key "machine.cpu"`},
		{"unknown table", "[vm]\n", `:1: unknown key "vm"`},
		{"memory", "[machine]\nmemory = \"abc\"\n", `machine.memory`},
		{"memory small", "[machine]\nmemory = \"1M\"\n", `machine.memory: 1M is out of range`},
		{"cpus", "[machine]\ncpus = 0\n", `machine.cpus: 0 is out of range`},
		{"cpus type", "[machine]\ncpus = \"two\"\n", `:2:`},
		{"accel", "[machine]\naccel = \"fast\"\n", `machine.accel: "fast"`},
		{"kernel", "[boot]\nkernel = \"/no/such\"\n", `boot.kernel: /no/such: no such file`},
		{"flavour", "[boot]\nkernel = \"debian:arm64\"\n", `unknown Debian flavour "arm64"`},
		{"timeout", "[run]\ntimeout = \"soon\"\n", `run.timeout`},
		{"env", "[run]\nenv = [\"NOEQUALS\"]\n", `run.env`},
		{"syntax", "[machine\n", `:1:`},
		{"tmpfs without host root", "[boot]\ntmpfs = [\"~\"]\n", `boot.tmpfs: needs rootfs = "host"`},
		{"tmpfs relative", "[boot]\nrootfs = \"host\"\ntmpfs = [\"home\"]\n", `boot.tmpfs: "home": not absolute`},
		{"tmpfs other home", "[boot]\nrootfs = \"host\"\ntmpfs = [\"~bob\"]\n", `boot.tmpfs: "~bob": expected ~ or ~/DIR`},
		{"tmpfs root", "[boot]\nrootfs = \"host\"\ntmpfs = [\"/.\"]\n", `boot.tmpfs: "/.": the whole root`},
		{"tmpfs proc", "[boot]\nrootfs = \"host\"\ntmpfs = [\"/proc/sys\"]\n", `boot.tmpfs: "/proc/sys": the guest's kernel interfaces`},
		{"memory not page-sized", "[machine]\nmemory = \"67108865\"\n", `machine.memory: 67108865 is not a multiple of 4K`},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name+".toml")
		os.WriteFile(p, []byte(c.toml), 0o644)
		v, err := Load(p)
		if err == nil {
			err = v.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v, want it to name %s and contain %q", c.name, err, p, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error spans lines: %q", c.name, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"512M": 512 << 20, "2G": 2 << 30, "4g": 4 << 30, "1024K": 1 << 20, "1Gi": 1 << 30, "65536": 65536} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "abc", "-1G", "0", "1.5G", "99999999999999999999G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
	if s := Size(4 << 30).String(); s != "4G" {
		t.Errorf("String = %s", s)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("[machine]\ncpus = 2\nmemory = \"1G\"\n"))
	f.Add([]byte("[boot]\nkernel = 3\n"))
	f.Add([]byte("[[x]]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Parse(b, "fuzz.toml")
		if err == nil {
			_ = v.Validate()
		}
	})
}

// TestLoadDoesNotValidate: flags may still fix what the file leaves
// invalid, so Load only parses.
func TestLoadDoesNotValidate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.toml")
	os.WriteFile(p, []byte("[boot]\nkernel = \"/no/such/kernel\"\n"), 0o644)
	v, err := Load(p)
	if err != nil {
		t.Fatalf("Load validated: %v", err)
	}
	if err := v.Validate(); err == nil {
		t.Fatal("Validate accepted a missing kernel")
	}
}

func TestLoadRefusesSpecialFiles(t *testing.T) {
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Load(dir) = %v", err)
	}
}

func TestKernelInTree(t *testing.T) {
	dir := t.TempDir()
	if _, err := KernelInTree(dir); err == nil || !strings.Contains(err.Error(), "without a built kernel") {
		t.Fatalf("empty tree: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("elf"), 0o644)
	if p, err := KernelInTree(dir); err != nil || p != filepath.Join(dir, "vmlinux") {
		t.Fatalf("vmlinux only: %q %v", p, err)
	}
	os.MkdirAll(filepath.Join(dir, "arch/x86/boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "arch/x86/boot/bzImage"), []byte("bz"), 0o644)
	if p, err := KernelInTree(dir); err != nil || p != filepath.Join(dir, "arch/x86/boot/bzImage") {
		t.Fatalf("bzImage first: %q %v", p, err)
	}
	if err := checkKernel(dir); err != nil {
		t.Fatalf("a built tree as boot.kernel: %v", err)
	}
}

func TestShares(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	cfg := filepath.Join(dir, "vm.toml")
	os.WriteFile(cfg, []byte("[[share]]\npath = \"src\"\nguest = \"/mnt/src\"\nread_only = true\n[[share]]\npath = \""+dir+"\"\n"), 0o644)
	v, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(v.Shares) != 2 || v.Shares[0].Path != filepath.Join(dir, "src") || !v.Shares[0].ReadOnly || v.Shares[1].GuestPath() != dir {
		t.Fatalf("decoded %+v", v.Shares)
	}
	for in, want := range map[string]Share{
		"/a":         {Path: "/a"},
		"/a:/b,ro":   {Path: "/a", Guest: "/b", ReadOnly: true},
		"rel:/x":     {Path: "rel", Guest: "/x"},
		"/a,rw":      {},
		":/b":        {},
		"/a:/b,ro,x": {},
		"/a,9p":      {Path: "/a", Transport: "9p"},
		"/a,ro,9p":   {Path: "/a", ReadOnly: true, Transport: "9p"},
		"/a,9p,nfs":  {},
	} {
		got, err := ParseShare(in)
		if want == (Share{}) {
			if err == nil {
				t.Errorf("%q accepted as %+v", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, c := range []struct {
		shares []Share
		want   string
	}{
		{[]Share{{Path: filepath.Join(dir, "none")}}, "share[0].path: stat"},
		{[]Share{{Path: filepath.Join(dir, "file")}}, "share[0].path: " + filepath.Join(dir, "file") + " is not a directory"},
		{[]Share{{Path: dir, Guest: "rel"}}, `share[0].guest: "rel"`},
		{[]Share{{Path: dir, Guest: "/"}}, `share[0].guest: "/"`},
		{[]Share{{Path: dir, Guest: "/a/../b"}}, `share[0].guest`},
		{[]Share{{Path: dir, Guest: "/m"}, {Path: dir, Guest: "/m"}}, "share[1].guest: /m is also share[0]'s mount point"},
		{[]Share{{Path: dir, Transport: "nfs"}}, `share[0].transport: "nfs" (expected virtiofs or 9p)`},
	} {
		v := Default()
		v.Shares = c.shares
		err := v.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.shares, err, c.want)
		}
	}
}

func TestTmpfs(t *testing.T) {
	v := Default()
	v.Boot.Rootfs = "host"
	v.Boot.Tmpfs = []string{"~", "~/.cache", "/srv"}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
}
