package plan

import (
	"io"
	"sync"
)

// ConsoleInput is the guest console's input: what the user types, with
// messages for the guest init (the terminal's size, on every resize)
// slipped in between reads. One goroutine reads the source; Close stops
// it (the source must return from Read once closed, as hostio.Input does)
// and waits for it.
type ConsoleInput struct {
	src   io.ReadCloser
	data  chan []byte
	extra chan []byte
	done  chan struct{}
	quit  chan struct{}
	once  sync.Once
	rest  []byte
	free  chan []byte
}

func NewConsoleInput(src io.ReadCloser) *ConsoleInput {
	c := &ConsoleInput{src: src, data: make(chan []byte), extra: make(chan []byte, 4),
		done: make(chan struct{}), quit: make(chan struct{}), free: make(chan []byte, 2)}
	c.free <- make([]byte, 512)
	c.free <- make([]byte, 512)
	go c.pump()
	return c
}

func (c *ConsoleInput) pump() {
	defer close(c.done)
	for {
		var buf []byte
		select {
		case buf = <-c.free:
		case <-c.quit:
			return
		}
		n, err := c.src.Read(buf)
		if n > 0 {
			select {
			case c.data <- buf[:n]:
			case <-c.quit:
				return
			}
		} else {
			c.free <- buf
		}
		if err != nil {
			close(c.data)
			return
		}
	}
}

// Send queues a message for the guest, delivered between reads of the
// user's input. It never blocks: with four messages already waiting it
// drops the oldest (only the latest terminal size matters).
func (c *ConsoleInput) Send(msg []byte) {
	for {
		select {
		case c.extra <- msg:
			return
		default:
		}
		select {
		case <-c.extra:
		default:
		}
	}
}

// Read returns user input or a queued message.
func (c *ConsoleInput) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	select {
	case m := <-c.extra:
		n := copy(p, m)
		c.rest = m[n:]
		return n, nil
	case b, ok := <-c.data:
		if !ok {
			return 0, io.EOF
		}
		n := copy(p, b)
		if n < len(b) {
			c.rest = append(c.rest[:0], b[n:]...)
		}
		c.free <- b[:cap(b)]
		return n, nil
	case <-c.quit:
		return 0, io.EOF
	}
}

// Close stops reading the source and waits for the reader goroutine.
func (c *ConsoleInput) Close() error {
	var err error
	c.once.Do(func() {
		close(c.quit)
		err = c.src.Close()
		<-c.done
	})
	return err
}
