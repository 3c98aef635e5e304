#include "textflag.h"

// func outb(port uint16, v uint8)
TEXT ·outb(SB), NOSPLIT, $0-3
	MOVW port+0(FP), DX
	MOVB v+2(FP), AX
	BYTE $0xee // out dx, al
	RET

// func outw(port uint16, v uint16)
TEXT ·outw(SB), NOSPLIT, $0-4
	MOVW port+0(FP), DX
	MOVW v+2(FP), AX
	BYTE $0x66; BYTE $0xef // out dx, ax
	RET

// func outl(port uint16, v uint32)
TEXT ·outl(SB), NOSPLIT, $0-8
	MOVW port+0(FP), DX
	MOVL v+4(FP), AX
	BYTE $0xef // out dx, eax
	RET

// func inb(port uint16) uint8
TEXT ·inb(SB), NOSPLIT, $0-9
	MOVW port+0(FP), DX
	BYTE $0xec // in al, dx
	MOVB AX, ret+8(FP)
	RET

// func inl(port uint16) uint32
TEXT ·inl(SB), NOSPLIT, $0-12
	MOVW port+0(FP), DX
	BYTE $0xed // in eax, dx
	MOVL AX, ret+8(FP)
	RET

// func outsb(port uint16, p *byte, n int)
TEXT ·outsb(SB), NOSPLIT, $0-24
	MOVW port+0(FP), DX
	MOVQ p+8(FP), SI
	MOVQ n+16(FP), CX
	BYTE $0xf3; BYTE $0x6e // rep outsb
	RET

// func insb(port uint16, p *byte, n int)
TEXT ·insb(SB), NOSPLIT, $0-24
	MOVW port+0(FP), DX
	MOVQ p+8(FP), DI
	MOVQ n+16(FP), CX
	BYTE $0xf3; BYTE $0x6c // rep insb
	RET
