package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/ember-vmm/ember/vmm/bus"
	"github.com/ember-vmm/ember/vmm/kvm"
	"golang.org/x/sys/unix"
)

// Errors of Run.
var (
	ErrAlreadyRun = errors.New("machine already ran")
	ErrClosed     = errors.New("machine closed")
)

// group runs goroutines, turns a panic in any of them into an error, and
// calls fail with the first error.
type group struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
	fail func(error)
}

func (g *group) Go(name string, f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("internal error in %s: %v\n%s", name, r, debug.Stack())
				}
			}()
			return f()
		}()
		if err != nil {
			g.mu.Lock()
			first := g.err == nil
			if first {
				g.err = err
			}
			g.mu.Unlock()
			if first && g.fail != nil {
				g.fail(err)
			}
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Run runs the VM until the guest ends it, ctx is done, or a host-side
// error occurs. Guest outcomes (exit status, panic, reset) are in the
// Result; the error is for host faults only, and a panic in any goroutine
// of the run is one: the Result is still complete. Run owns every
// goroutine it starts and returns after all of them have ended.
func (m *Machine) Run(ctx context.Context) (*Result, error) {
	m.mu.Lock()
	switch m.state {
	case stateNew:
	case stateClosed:
		m.mu.Unlock()
		return nil, ErrClosed
	default:
		m.mu.Unlock()
		return nil, ErrAlreadyRun
	}
	m.state = stateRunning
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.state = stateDone
		m.mu.Unlock()
		close(m.runDone)
	}()

	m.console.start()
	g := &group{fail: func(err error) { m.end(Result{Outcome: OutcomeError, Err: err}) }}
	for i, c := range m.vcpus {
		g.Go(fmt.Sprintf("vcpu %d", i), func() error { return m.vcpuLoop(i, c) })
	}
	if m.cfg.Input != nil {
		if cl, ok := m.cfg.Input.(io.Closer); ok {
			m.atEnd(func() { _ = cl.Close() })
		}
		g.Go("console input", m.feedInput)
	}
	for _, l := range m.lines {
		if l.rfd != nil {
			m.atEnd(l.stopResample)
			g.Go(fmt.Sprintf("gsi %d resample", l.gsi), l.resample)
		}
	}
	m.startVirtio(g)
	g.Go("watchdog", func() error { return m.watch(ctx) })
	err := g.Wait()

	drain := m.cfg.ConsoleDrain
	if drain <= 0 {
		drain = defaultDrain
	}
	m.console.stop(drain)

	m.mu.Lock()
	r := m.result
	r.Marks = slices.Clone(r.Marks)
	m.mu.Unlock()
	r.Wall = time.Since(m.start)
	if r.Panic != "" && (r.Outcome == OutcomeReset || r.Outcome == OutcomePowerOff) {
		r.Outcome = OutcomePanic
	}
	r.Exits = map[string]uint64{}
	for _, e := range m.exitCounts {
		e.mergeInto(r.Exits)
	}
	r.Unclaimed = m.pio.Unclaimed() + m.mmio.Unclaimed()
	r.ExitsByDevice = map[string]uint64{}
	for kind, b := range map[string]*bus.Bus{"pio": m.pio, "mmio": m.mmio} {
		for name, n := range b.Accesses() {
			r.ExitsByDevice[kind+":"+name] = n
		}
	}
	r.Devices = m.deviceStats()
	if r.Outcome == OutcomeTimeout || r.Outcome == OutcomeCanceled || r.Outcome == OutcomeCrash {
		// Where each queue stood tells a driver waiting on a buffer the
		// device never saw from one whose buffer came back unnoticed.
		for _, v := range m.virtio {
			if v.mmio != nil && r.Devices[v.name] != nil {
				maps.Copy(r.Devices[v.name], v.mmio.QueueIndices())
			}
		}
		for _, c := range m.vcpus {
			if regs, err := c.GetRegs(); err == nil {
				r.StoppedAt = append(r.StoppedAt, regs.RIP)
				if sr, err := c.GetSregs(); err == nil {
					m.log.Debug("vcpu stopped", "vcpu", c.ID, "rip", fmt.Sprintf("%#x", regs.RIP),
						"rsp", fmt.Sprintf("%#x", regs.RSP), "code", fmt.Sprintf("%x", codeAt(m.mem, sr.CR0, sr.CR4, sr.CR3, regs.RIP, 32)))
				}
			}
		}
	}
	r.ConsoleDropped = m.console.Dropped()
	if r.Outcome == OutcomeError {
		if r.Err == nil {
			r.Err = err
		}
		return &r, r.Err
	}
	return &r, nil
}

// watch ends the run when ctx is done and looks for vCPUs halted for good.
func (m *Machine) watch(ctx context.Context) error {
	tick := time.NewTicker(haltPoll)
	defer tick.Stop()
	var hinted time.Time
	for {
		var hint <-chan time.Time
		if !hinted.IsZero() && time.Since(hinted) < haltHintWindow {
			hint = time.After(haltHintRetry)
		}
		select {
		case <-ctx.Done():
			o := OutcomeCanceled
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				o = OutcomeTimeout
			}
			m.end(Result{Outcome: o})
			return nil
		case <-m.endCh:
			return nil
		case <-m.haltCh:
			hinted = time.Now()
			continue
		case <-hint:
		case <-tick.C:
		}
		if m.haltedForGood() {
			m.end(Result{Outcome: OutcomePowerOff, Reason: "all vCPUs halted with interrupts off"})
			return nil
		}
	}
}

// vcpuLoop runs vCPU i until the machine stops.
func (m *Machine) vcpuLoop(i int, c *kvm.VCPU) error {
	// KVM requires every KVM_RUN of a vCPU from the thread that created
	// its state last; a locked thread also gives the signal a target.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m.tids[i].Store(int32(unix.Gettid()))
	defer m.tids[i].Store(-1)
	counts := &m.exitCounts[i]
	if i == 0 {
		m.mark(MarkFirstRun)
	}
	for !m.stopped() {
		err := c.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			c.SetImmediateExit(false)
			if m.probe[i].Swap(false) {
				m.probeCh <- sampleVCPU(c)
			}
			continue
		}
		if err != nil {
			return err
		}
		reason := c.ExitReason()
		counts.add(reason)
		m.exitTotal.Add(1)
		if err := m.handleExit(c, reason); err != nil {
			return err
		}
	}
	return nil
}

func (m *Machine) handleExit(c *kvm.VCPU, reason uint32) error {
	switch reason {
	case kvm.ExitIO:
		io, err := c.IO()
		if err != nil {
			return err
		}
		for k := 0; k < io.Count; k++ {
			d := io.Data[k*io.Size : (k+1)*io.Size]
			if io.Out {
				m.pio.Write(uint64(io.Port), d)
			} else {
				m.pio.Read(uint64(io.Port), d)
			}
		}
	case kvm.ExitMMIO:
		mm, err := c.MMIO()
		if err != nil {
			return err
		}
		if mm.Write {
			m.mmio.Write(mm.Addr, mm.Data)
		} else {
			m.mmio.Read(mm.Addr, mm.Data)
		}
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC does HLT exit; ember always has
		// one, so this is a guest that stopped its boot CPU.
		m.glog.Debug("vcpu halted", "vcpu", c.ID)
		if c.ID == 0 {
			m.end(Result{Outcome: OutcomePowerOff, Reason: "boot CPU halted"})
		}
	case kvm.ExitShutdown:
		// Triple fault: on real hardware the CPU resets.
		m.end(Result{Outcome: OutcomeCrash, Reason: fmt.Sprintf("vcpu %d triple-faulted", c.ID)})
	case kvm.ExitSystemEvent:
		m.end(systemEventResult(c.SystemEvent()))
	case kvm.ExitIntr, kvm.ExitIRQWindowOpen:
	case kvm.ExitFailEntry:
		return fmt.Errorf("vcpu %d: entry failed (hardware reason %#x)", c.ID, c.FailEntryReason())
	case kvm.ExitInternalError:
		return fmt.Errorf("vcpu %d: KVM internal error (suberror %d)", c.ID, c.InternalSuberror())
	default:
		regs, _ := c.GetRegs()
		rip := uint64(0)
		if regs != nil {
			rip = regs.RIP
		}
		return fmt.Errorf("vcpu %d: unexpected exit %s at rip %#x", c.ID, kvm.ExitName(reason), rip)
	}
	return nil
}

// systemEventResult maps KVM_EXIT_SYSTEM_EVENT's type to an outcome.
func systemEventResult(e kvm.SystemEvent) Result {
	switch e.Type {
	case kvm.SystemEventShutdown:
		return Result{Outcome: OutcomePowerOff, Reason: "KVM shutdown event"}
	case kvm.SystemEventReset:
		return Result{Outcome: OutcomeReset, Reason: "KVM reset event"}
	case kvm.SystemEventCrash:
		return Result{Outcome: OutcomePanic, Reason: "the guest reported a crash (KVM crash event)"}
	}
	return Result{Outcome: OutcomeError, Err: fmt.Errorf("unexpected KVM system event type %d (data %v)", e.Type, e.Data)}
}

// kickAll makes every vCPU leave KVM_RUN: immediate_exit first, then a
// signal to its thread, so a vCPU between checks cannot miss it.
func (m *Machine) kickAll() {
	pid := unix.Getpid()
	for i, c := range m.vcpus {
		c.SetImmediateExit(true)
		if tid := m.tids[i].Load(); tid > 0 {
			_ = unix.Tgkill(pid, int(tid), unix.SIGURG)
		}
	}
}

// feedInput copies host input to the UART, holding back while its buffer
// is full. It returns when the input ends or the VM does (Run closes the
// input, which must then return from Read).
func (m *Machine) feedInput() error {
	buf := make([]byte, 256)
	for {
		n, err := m.cfg.Input.Read(buf)
		p := buf[:n]
		for len(p) > 0 && !m.stopped() {
			k := m.uart.Input(p)
			p = p[k:]
			if len(p) > 0 {
				select {
				case <-m.endCh:
				case <-time.After(2 * time.Millisecond):
				}
			}
		}
		if err != nil || m.stopped() {
			return nil
		}
	}
}
