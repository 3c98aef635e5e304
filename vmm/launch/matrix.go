package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/hostio"
	"github.com/ember-vmm/ember/vmm/plan"
)

// Results of an `ember test` target.
const (
	ResultPassed     = "passed"
	ResultFailed     = "failed"
	ResultPanicked   = "panicked"
	ResultTimedOut   = "timed-out"
	ResultBootFailed = "boot-failed"
	ResultError      = "error"
)

// maxTargetLog bounds each target's kept log (its end is kept).
const maxTargetLog = 256 << 10

// TargetResult is one target's outcome.
type TargetResult struct {
	Name   string `json:"name"`
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	// Result is one of the Result* values.
	Result string `json:"result"`
	// Status is what `ember run` would have exited with.
	Status  int     `json:"status"`
	Seconds float64 `json:"seconds"`
	Message string  `json:"message,omitempty"`
	// Log is the target's serial console, stdout and stderr, interleaved
	// as they came (the last maxTargetLog bytes).
	Log string `json:"log,omitempty"`
}

// MatrixReport is what `ember test` produced.
type MatrixReport struct {
	Source   string         `json:"source"`
	Accel    string         `json:"accel"`
	Seconds  float64        `json:"seconds"`
	L1BootMS float64        `json:"l1_boot_ms,omitempty"`
	Targets  []TargetResult `json:"targets"`
}

// Passed reports whether every target passed.
func (r *MatrixReport) Passed() bool {
	for _, t := range r.Targets {
		if t.Result != ResultPassed {
			return false
		}
	}
	return true
}

// TestPlans is the inner ember's input on the nested path: the resolved
// targets of a matrix.
type TestPlans struct {
	Parallel int          `json:"parallel"`
	Names    []string     `json:"names"`
	Kernels  []string     `json:"kernels"`
	Plans    []*plan.Plan `json:"plans"`
}

// RunMatrix runs every target of m, up to m.Parallel at once, on one
// accelerator (accel: auto, kvm or nested); under nested, all of them
// inside one L1 guest. done is called as each target ends. The error is
// for failures before any target runs.
func RunMatrix(ctx context.Context, m *configs.Matrix, accel string, o Options, done func(TargetResult)) (*MatrixReport, error) {
	o = withLog(o)
	start := time.Now()
	cache := &images.Cache{Dir: o.CacheDir, Log: o.Log, Progress: o.Progress}
	mp := &TestPlans{Parallel: m.Parallel}
	for i, t := range m.Targets {
		vm, err := m.VM(i)
		if err != nil {
			return nil, err
		}
		to := o
		to.Config, to.Command, to.Interactive = vm, vm.Run.Command, false
		p, err := makePlan(ctx, cache, vm, to)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", t.Name, err)
		}
		p.Timeout = time.Duration(vm.Run.Timeout)
		k, _, err := p.Check()
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", t.Name, err)
		}
		k.Close()
		mp.Plans = append(mp.Plans, p)
		mp.Names = append(mp.Names, t.Name)
		mp.Kernels = append(mp.Kernels, vm.Boot.Kernel)
	}
	acc, err := PickAccel(accel, o)
	if err != nil {
		return nil, err
	}
	rep := &MatrixReport{Source: m.Source, Accel: acc}
	if acc == AccelNested {
		if err := runMatrixNested(ctx, cache, o, mp, rep, done); err != nil {
			return nil, err
		}
	} else {
		rep.Targets = RunPlans(ctx, mp, o, done)
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

func withLog(o Options) Options {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// RunPlans runs the plans on KVM, up to mp.Parallel at once.
func RunPlans(ctx context.Context, mp *TestPlans, o Options, done func(TargetResult)) []TargetResult {
	o = withLog(o)
	out := make([]TargetResult, len(mp.Plans))
	sem := make(chan struct{}, max(mp.Parallel, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, p := range mp.Plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				out[i] = TargetResult{Name: mp.Names[i], Kernel: mp.Kernels[i], CPUs: p.CPUs, Result: ResultError,
					Status: plan.ExitSignal, Message: "canceled before it started"}
				return
			}
			defer func() { <-sem }()
			log := &hostio.Tail{Max: maxTargetLog}
			to := o
			to.Stdout, to.Stderr, to.CommandStdin, to.Terminal, to.Stdin = log, log, nil, nil, nil
			start := time.Now()
			rep, err := plan.Run(ctx, p, to.PlanOptions())
			r := classify(rep, err)
			r.Name, r.Kernel, r.CPUs = mp.Names[i], mp.Kernels[i], p.CPUs
			r.Seconds = time.Since(start).Seconds()
			r.Log = log.String()
			out[i] = r
			if done != nil {
				mu.Lock()
				done(r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// classify turns a run's report into a target result.
func classify(rep *plan.Report, err error) TargetResult {
	if err != nil {
		return TargetResult{Result: ResultError, Status: plan.ExitError, Message: err.Error()}
	}
	r := TargetResult{Status: rep.ExitStatus, Message: rep.Message}
	booted := rep.BootMS > 0
	switch rep.Outcome {
	case vmm.OutcomeExited:
		r.Result = ResultPassed
		if rep.ExitStatus != 0 {
			r.Result = ResultFailed
			r.Message = fmt.Sprintf("exit status %d", rep.ExitStatus)
		}
	case vmm.OutcomeInitFailed:
		r.Result = ResultFailed
	case vmm.OutcomePanic, vmm.OutcomeCrash:
		r.Result = ResultPanicked
	case vmm.OutcomeTimeout:
		r.Result = ResultTimedOut
		if !booted {
			r.Result, r.Message = ResultBootFailed, "the guest did not reach its init before the timeout"
		}
	case vmm.OutcomePowerOff, vmm.OutcomeReset:
		r.Result, r.Status = ResultFailed, plan.ExitError
		r.Message = fmt.Sprintf("the guest ended (%s) without the command's status", rep.Outcome)
		if !booted {
			r.Result = ResultBootFailed
		}
	default:
		r.Result = ResultError
	}
	return r
}

// testPlansFile is the matrix in the nested IO share.
const testPlansFile = "test-plans.json"

// runMatrixNested runs every plan inside one L1 guest: the ember there
// runs them as on KVM and writes their results to the IO share.
func runMatrixNested(ctx context.Context, cache *images.Cache, o Options, mp *TestPlans, rep *MatrixReport, done func(TargetResult)) error {
	b, err := json.Marshal(mp)
	if err != nil {
		return err
	}
	var files []string
	var mounts []proto.NestedMount
	// L1 holds the largest Parallel guests at once.
	var mems []uint64
	for _, p := range mp.Plans {
		files = append(files, p.Kernel, p.Initrd)
		mounts, files = shareMounts(mounts, files, p)
		mems = append(mems, p.Memory)
	}
	var need uint64
	for range min(mp.Parallel, len(mems)) {
		k := 0
		for j := range mems {
			if mems[j] > mems[k] {
				k = j
			}
		}
		need += mems[k]
		mems[k] = 0
	}
	res, err := InL1(ctx, cache, o, L1Run{
		Args:  []string{"test-plans", filepath.Join(proto.IOMount, testPlansFile)},
		Files: files, Mounts: mounts, IOFiles: map[string][]byte{testPlansFile: b}, MemoryMiB: L1MemoryMiB(need),
	})
	if err != nil {
		return err
	}
	rep.L1BootMS = plan.Millis(res.L1Boot)
	if len(res.ResultJSON) == 0 {
		return fmt.Errorf("nested: the ember inside L1 ended (status %d) without results", res.ExitStatus)
	}
	if err := json.Unmarshal(res.ResultJSON, &rep.Targets); err != nil {
		return fmt.Errorf("nested: results from L1: %w", err)
	}
	if len(rep.Targets) != len(mp.Plans) {
		return errors.New("nested: L1 returned results for a different set of targets")
	}
	for _, t := range rep.Targets {
		if done != nil {
			done(t)
		}
	}
	return nil
}

// ReadTestPlans reads the nested matrix file (the inner ember's input).
func ReadTestPlans(path string) (*TestPlans, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var mp TestPlans
	if err := json.Unmarshal(b, &mp); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(mp.Names) != len(mp.Plans) || len(mp.Kernels) != len(mp.Plans) {
		return nil, fmt.Errorf("%s: names, kernels and plans differ in number", path)
	}
	return &mp, nil
}
