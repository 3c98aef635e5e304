package proto

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/u-root/mkuimage/cpio"
)

func TestArchive(t *testing.T) {
	want := Run{Args: []string{"sh", "-c", "echo hi"}, Env: []string{"A=b"}, Dir: "/tmp",
		Nested: &Nested{RootTag: "root", IOTag: "io"}}
	b, err := Archive(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4 != 0 {
		t.Errorf("archive is %d bytes; newc pads to 4", len(b))
	}
	rr, _ := cpio.Format("newc")
	recs, err := cpio.ReadAllRecords(rr.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	var got Run
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		wantMode := uint64(newcDir | 0o755)
		if "/"+r.Name == RunFile {
			wantMode = newcFile | 0o644
		}
		if r.Mode != wantMode {
			t.Errorf("%s: mode %o, want %o", r.Name, r.Mode, wantMode)
		}
		if "/"+r.Name == RunFile {
			if err := json.Unmarshal(recordBytes(t, r), &got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip: %+v, want %+v (records %q)", got, want, names)
	}
	// Parent directories come first so the kernel can create the file.
	if !slices.Equal(names, []string{"etc", "etc/ember", "etc/ember/run.json"}) {
		t.Errorf("records %q", names)
	}
}

func recordBytes(t *testing.T, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
