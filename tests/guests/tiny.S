/*
 * The smallest guests, for the VMM benchmark (bench/vm-bench.py):
 *   default:   resets the machine through the i8042 at its first instructions, so skiff's
 *              run time is its start-up plus tear-down;
 *   -DIDLE:    halts forever (HLT waits in KVM with the in-kernel irqchip), so skiff's
 *              resident memory can be read while the VM exists.
 */
	.code64
	.text
	.globl _start
_start:
#ifdef IDLE
	cli
1:	hlt
	jmp 1b
#else
	mov $0xfe, %al
	out %al, $0x64
2:	jmp 2b
#endif
