package plan

import (
	"slices"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm"
)

func TestPhases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	marks := []vmm.Mark{
		{Name: vmm.MarkCreated, At: at(40), Exits: 0},
		{Name: vmm.MarkFirstRun, At: at(41), Exits: 0},
		{Name: vmm.MarkInit, At: at(300), Exits: 350},
		{Name: vmm.MarkCommand, At: at(320), Exits: 380},
		{Name: vmm.MarkCommandExit, At: at(330), Exits: 390},
		{Name: vmm.MarkEnded, At: at(340), Exits: 400},
	}
	got := phases(t0, nil, marks, at(345), 401)
	want := []Phase{
		{"setup", 0, 40, 0}, {"vcpu start", 40, 1, 0}, {"kernel", 41, 259, 350}, {"init", 300, 20, 30},
		{"command", 320, 10, 10}, {"power-off", 330, 10, 10}, {"teardown", 340, 5, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("phases %+v", got)
	}
	var sum float64
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("phase %d: %+v, want %+v", i, got[i], want[i])
		}
		sum += got[i].MS
	}
	if sum != 345 {
		t.Errorf("phases add up to %v ms, want 345", sum)
	}
	// A guest of its own: no init mark, and no process start given.
	got = phases(time.Time{}, nil, []vmm.Mark{{Name: vmm.MarkCreated, At: at(0)}, {Name: vmm.MarkFirstRun, At: at(1)}, {Name: vmm.MarkEnded, At: at(200), Exits: 190}}, at(210), 190)
	if len(got) != 3 || got[0].Name != "vcpu start" || got[1].Name != "guest" || got[1].Exits != 190 || got[2].Name != "teardown" {
		t.Fatalf("own init: %+v", got)
	}
	if phases(t0, nil, nil, at(1), 0) != nil {
		t.Error("no marks, yet phases")
	}
	// Handed to ember-vmm: ember's part, the exec, then the VMM's setup.
	got = phases(t0, []vmm.Mark{{Name: markHandoff, At: at(10)}, {Name: markVMMStart, At: at(15)}}, marks, at(345), 401)
	names := []string{}
	for _, p := range got {
		names = append(names, p.Name)
	}
	if !slices.Equal(names[:4], []string{"resolve", "exec", "setup", "vcpu start"}) || got[0].MS != 10 || got[1].MS != 5 || got[2].MS != 25 {
		t.Fatalf("handed off: %+v", got)
	}
}
