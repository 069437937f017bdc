/*
 * The smallest guests, for the VMM benchmark (bench/vm-bench.py):
 *   default:   resets the machine through the i8042 at its first instructions, so skiff's
 *              run time is its start-up plus tear-down;
 *   -DIDLE:    halts forever (HLT waits in KVM with the in-kernel irqchip), so skiff's
 *              resident memory can be read while the VM exists;
 *   -DFAULT:   reads unmapped memory (above the 1 GiB the boot page tables map) with no IDT
 *              to handle the page fault: a triple fault, which must end skiff non-zero.
 */
	.code64
	.text
	.globl _start
_start:
#if defined(IDLE)
	cli
1:	hlt
	jmp 1b
#elif defined(FAULT)
	mov $0x80000000, %rax
	mov (%rax), %rbx
3:	jmp 3b
#else
	mov $0xfe, %al
	out %al, $0x64
2:	jmp 2b
#endif
