package plan

import (
	"os"
	"path/filepath"
	"testing"
)

func TestIsNull(t *testing.T) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if !isNull(null) {
		t.Error("/dev/null not recognised")
	}
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, f := range []*os.File{zero, file} {
		if isNull(f) {
			t.Errorf("%s taken for /dev/null", f.Name())
		}
	}
}
