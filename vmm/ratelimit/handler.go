package ratelimit

import (
	"context"
	"log/slog"
	"time"
)

// Handler is a slog.Handler that passes at most Burst records per Interval
// to the next handler and drops the rest; the first record let through
// after a drop carries "suppressed=N". The VMM gives every device a logger
// built on its own Handler, so nothing a guest does to a device can flood
// the host's log, whatever the device logs. WithAttrs and WithGroup share
// the limit.
type Handler struct {
	next slog.Handler
	l    *Limiter
}

// NewHandler limits next to burst records per interval.
func NewHandler(next slog.Handler, burst int, interval time.Duration) *Handler {
	return &Handler{next: next, l: New(burst, interval)}
}

// NewLogger is slog.New over a fresh Handler on l's handler.
func NewLogger(l *slog.Logger, burst int, interval time.Duration) *slog.Logger {
	return slog.New(NewHandler(l.Handler(), burst, interval))
}

// Enabled reports whether next handles the level; it does not consume the
// budget.
func (h *Handler) Enabled(ctx context.Context, lvl slog.Level) bool { return h.next.Enabled(ctx, lvl) }

// Handle passes r on if the budget allows.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	ok, dropped := h.l.Allow()
	if !ok {
		return nil
	}
	if dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Uint64("suppressed", dropped))
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs shares the limiter.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(as), l: h.l}
}

// WithGroup shares the limiter.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), l: h.l}
}

// Suppressed is how many records were dropped in the current interval.
func (h *Handler) Suppressed() uint64 {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	return h.l.suppressed
}
