/*
 * A test guest for skiff's boot protocol (TESTING.md, layer 4): entered in 64-bit mode
 * with %rsi pointing at boot_params (the Linux x86 64-bit boot protocol), it prints to COM1
 *   boot: hello
 *   boot: cmdline=<the command line at boot_params.hdr.cmd_line_ptr>
 *   boot: e820 entries=N
 *   boot: e820 ADDR SIZE TYPE        (each entry, hex)
 * then resets the machine through the i8042 (out 0xfe to port 0x64). Plain integer
 * instructions only: the emulating KVM here interprets guest kernel code.
 * Built as an ELF (gcc -nostdlib -static -Wl,-Ttext=0x100000), or with -DBZIMAGE as the
 * flat payload of a bzImage, whose 64-bit entry is 0x200 bytes into the protected-mode code.
 */
	.code64
	.text
	.globl _start
#ifdef BZIMAGE
	.skip 0x200
#endif
_start:
	mov %rsi, %rbx
	lea msg_hello(%rip), %rdi
	call puts
	lea msg_cmd(%rip), %rdi
	call puts
	mov 0x228(%rbx), %edi		/* boot_params.hdr.cmd_line_ptr */
	call puts
	call newline
	lea msg_e820(%rip), %rdi
	call puts
	movzbq 0x1e8(%rbx), %r12	/* boot_params.e820_entries */
	mov %r12, %rax
	call puthex
	call newline
	lea 0x2d0(%rbx), %r13		/* boot_params.e820_table: {u64 addr, u64 size, u32 type} */
1:	test %r12, %r12
	jz 2f
	lea msg_entry(%rip), %rdi
	call puts
	mov (%r13), %rax
	call puthex
	call space
	mov 8(%r13), %rax
	call puthex
	call space
	mov 16(%r13), %eax
	call puthex
	call newline
	add $20, %r13
	dec %r12
	jmp 1b
2:	lea msg_reset(%rip), %rdi
	call puts
	mov $0xfe, %al
	out %al, $0x64
3:	jmp 3b

/* putc: %al to COM1, waiting for the transmitter holding register to be empty. */
putc:
	push %rdx
	push %rax
	mov $0x3fd, %dx
4:	in %dx, %al
	test $0x20, %al
	jz 4b
	pop %rax
	mov $0x3f8, %dx
	out %al, %dx
	pop %rdx
	ret

/* puts: the NUL-terminated string at %rdi (at most 4096 bytes). */
puts:
	mov $4096, %rcx
5:	movb (%rdi), %al
	test %al, %al
	jz 6f
	call putc
	inc %rdi
	dec %rcx
	jnz 5b
6:	ret

newline:
	mov $'\n', %al
	jmp putc
space:
	mov $' ', %al
	jmp putc

/* puthex: %rax as 16 hex digits. */
puthex:
	mov %rax, %rdx
	mov $16, %rcx
7:	rol $4, %rdx
	mov %dl, %al
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 8f
	add $('a' - '9' - 1), %al
8:	push %rdx
	push %rcx
	call putc
	pop %rcx
	pop %rdx
	dec %rcx
	jnz 7b
	ret

	.section .rodata
msg_hello:	.asciz "boot: hello\n"
msg_cmd:	.asciz "boot: cmdline="
msg_e820:	.asciz "boot: e820 entries="
msg_entry:	.asciz "boot: e820 "
msg_reset:	.asciz "boot: reset\n"
