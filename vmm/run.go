package vmm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/ember-vmm/ember/vmm/kvm"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// ErrAlreadyRun is returned by a second call to Run.
var ErrAlreadyRun = errors.New("machine already ran")

// Run runs the VM until the guest ends it, ctx is done, or a host-side
// error occurs. Guest outcomes (exit status, panic, reset) are in the
// Result; the error is for host faults only.
func (m *Machine) Run(ctx context.Context) (*Result, error) {
	if m.ran {
		return nil, ErrAlreadyRun
	}
	m.ran = true
	g, gctx := errgroup.WithContext(context.Background())
	for i, c := range m.vcpus {
		g.Go(func() error { return m.vcpuLoop(i, c) })
	}
	if m.cfg.Input != nil {
		go m.feedInput()
	}
	go func() {
		select {
		case <-ctx.Done():
			o := OutcomeCanceled
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				o = OutcomeTimeout
			}
			m.end(Result{Outcome: o})
		case <-gctx.Done(): // a vCPU failed; its error ends the run below
			m.end(Result{Outcome: OutcomeError})
		case <-m.endCh:
		}
	}()
	err := g.Wait()
	if err != nil {
		m.end(Result{Outcome: OutcomeError, Err: err})
	}
	m.uart.Flush()

	m.mu.Lock()
	r := m.result
	m.mu.Unlock()
	r.Wall = time.Since(m.start)
	if r.Panic != "" && (r.Outcome == OutcomeReset || r.Outcome == OutcomePowerOff) {
		r.Outcome = OutcomePanic
	}
	r.Exits = map[string]uint64{}
	for i := range m.exits {
		if n := m.exits[i].Load(); n > 0 {
			r.Exits[kvm.ExitName(uint32(i))] = n
		}
	}
	r.Unclaimed = m.pio.Unclaimed() + m.mmio.Unclaimed()
	if r.Outcome == OutcomeError {
		if r.Err == nil {
			r.Err = err
		}
		return &r, r.Err
	}
	return &r, nil
}

func (m *Machine) stopped() bool {
	select {
	case <-m.endCh:
		return true
	default:
		return false
	}
}

func (m *Machine) vcpuLoop(i int, c *kvm.VCPU) error {
	// KVM requires every KVM_RUN of a vCPU from the thread that created
	// its state last; a locked thread also gives the signal a target.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m.tids[i].Store(int32(unix.Gettid()))
	for !m.stopped() {
		err := c.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			c.SetImmediateExit(false)
			continue
		}
		if err != nil {
			return err
		}
		reason := c.ExitReason()
		if reason < uint32(len(m.exits)) {
			m.exits[reason].Add(1)
		}
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
		mm := c.MMIO()
		if mm.Write {
			m.mmio.Write(mm.Addr, mm.Data)
		} else {
			m.mmio.Read(mm.Addr, mm.Data)
		}
	case kvm.ExitHLT:
		// With the in-kernel LAPIC a halted vCPU sleeps in the kernel; an
		// HLT exit means the guest stopped this CPU for good.
		m.log.Debug("vcpu halted", "vcpu", c.ID)
		if c.ID == 0 {
			m.end(Result{Outcome: OutcomePowerOff})
		}
	case kvm.ExitShutdown:
		// Triple fault: on real hardware the CPU resets.
		m.end(Result{Outcome: OutcomeReset})
	case kvm.ExitSystemEvent:
		m.end(Result{Outcome: OutcomeReset})
	case kvm.ExitIntr, kvm.ExitIRQWindowOpen:
	case kvm.ExitFailEntry:
		d := c.ExitDetail()
		return fmt.Errorf("vcpu %d: entry failed (hardware reason %#x)", c.ID, d[0])
	case kvm.ExitInternalError:
		d := c.ExitDetail()
		return fmt.Errorf("vcpu %d: KVM internal error (suberror %d)", c.ID, uint32(d[0]))
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

// feedInput copies host input to the UART, holding back while its FIFO is
// full.
func (m *Machine) feedInput() {
	buf := make([]byte, 256)
	for {
		n, err := m.cfg.Input.Read(buf)
		p := buf[:n]
		for len(p) > 0 && !m.stopped() {
			k := m.uart.Input(p)
			p = p[k:]
			if len(p) > 0 {
				time.Sleep(2 * time.Millisecond)
			}
		}
		if err != nil || m.stopped() {
			return
		}
	}
}
