package configs

import (
	"strings"
	"testing"
	"time"
)

func TestParseMatrix(t *testing.T) {
	m, err := ParseMatrix([]byte(`
parallel = 3
[[target]]
name = "a"
command = ["true"]
[[target]]
name = "b"
command = ["sh", "-c", "exit 1"]
kernel = "debian:amd64"
cpus = 2
memory = "1G"
timeout = "30s"
env = ["K=V"]
`), "/x/m.toml")
	if err != nil {
		t.Fatal(err)
	}
	if m.Parallel != 3 || len(m.Targets) != 2 {
		t.Fatalf("%+v", m)
	}
	v, err := m.VM(1)
	if err != nil {
		t.Fatal(err)
	}
	if v.Boot.Kernel != "debian:amd64" || v.Machine.CPUs != 2 || v.Machine.Memory != 1<<30 ||
		time.Duration(v.Run.Timeout) != 30*time.Second || strings.Join(v.Run.Command, " ") != "sh -c exit 1" {
		t.Fatalf("target b: %+v", v)
	}
	a, _ := m.VM(0)
	if d := Default(); a.Boot.Kernel != d.Boot.Kernel || a.Machine.CPUs != d.Machine.CPUs {
		t.Fatalf("target a does not default as ember run: %+v", a)
	}
}

func TestParseMatrixErrors(t *testing.T) {
	for _, c := range []struct{ toml, want string }{
		{`[[target]]` + "\n" + `command = ["true"]`, "target[0].name: missing"},
		{`[[target]]` + "\n" + `name = "a"`, `target[0] (a).command: missing`},
		{"[[target]]\nname = \"a\"\ncommand = [\"true\"]\n[[target]]\nname = \"a\"\ncommand = [\"true\"]", `"a" is used twice`},
		{"[[target]]\nname = \"a\"\ncommand = [\"true\"]\ncpus = 0\nmemory = \"1K\"", "memory"},
		{"[[target]]\nname = \"a\"\ncommand = [\"true\"]\nshares = 1", `m.toml:4: unknown key "target.shares"`},
		{"parallel = 100\n[[target]]\nname = \"a\"\ncommand = [\"true\"]", "parallel"},
		{"", "no [[target]]"},
	} {
		_, err := ParseMatrix([]byte(c.toml), "m.toml")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.toml, err, c.want)
		}
	}
}
