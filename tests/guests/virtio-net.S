/*
 * A test guest for skiff's virtio-net device on the built-in NAT (TESTING.md, layer 4): a
 * virtio driver of a few hundred instructions that gets a DHCP OFFER through the device,
 * interrupt-driven. Entered in 64-bit mode (Linux 64-bit boot protocol, %rsi = boot_params),
 * it prints to COM1, one "virtio: ..." line per step:
 *
 *   1. maps 3-4 GiB (virtio-mmio at 0xd0000000, IOAPIC, local APIC): the boot page tables
 *      identity-map only the first GiB, so it adds a page directory of 2 MiB uncached pages
 *      (present|rw|PCD|PS) at PDPTE[3] and reloads CR3;
 *   2. interrupts: masks the 8259s, enables the local APIC (spurious vector 0xff, TPR 0),
 *      routes IOAPIC pin 5 to vector 0x30 (fixed, physical, edge, active high, APIC 0) and
 *      loads a 256-gate IDT: 0x30 the device, 0x31 a local-APIC timer that bounds the waits,
 *      0xff spurious, everything else a stub that prints the vector and resets;
 *   3. probes the device (MagicValue, Version 2, DeviceID 1), then initialises it as virtio
 *      1.2 §3.1.1 and §4.2.3 say: reset, ACKNOWLEDGE, DRIVER, DeviceFeatures (both words),
 *      DriverFeatures = VERSION_1 | MAC, FEATURES_OK (read back), the MAC, status and MTU
 *      from the configuration space, RX queue 0 and TX queue 1 with 8 entries each, DRIVER_OK;
 *   4. posts four 2048-byte device-writable receive buffers and notifies queue 0;
 *   5. transmits a DHCP DISCOVER (RFC 2131, broadcast flag) as one chain of two
 *      descriptors (the 12-byte virtio_net_hdr_v1, then the Ethernet frame) and notifies
 *      queue 1;
 *   6. `sti; hlt` until the interrupt handler (InterruptStatus read and acknowledged, EOI)
 *      has seen the TX chain come back and a receive buffer used; looks for UDP 67 -> 68,
 *      BOOTP op 2 with our xid and chaddr, option 53 = 2 (OFFER) and prints its yiaddr,
 *      option 54 and the sender's MAC. The wait is bounded by timer ticks (15 s);
 *      "virtio: timeout" on failure;
 *   7. resets the device (Status 0), then the machine through the i8042 (out 0xfe to 0x64).
 *
 * Every failure prints "virtio: FAIL ..." and resets the machine, so a test fails rather
 * than hangs. Plain integer instructions only: the emulating KVM here interprets guest
 * kernel code (no SSE, POPCNT, XSAVE, INT3). x86 keeps stores in order (TSO), so the ring
 * updates need no fence before the notifying MMIO write.
 * Built as an ELF (gcc -nostdlib -static -Wl,-Ttext=0x100000).
 */

/* virtio-mmio registers (virtio 1.2 §4.2.2) */
#define VIRTIO_BASE	0xd0000000
#define MAGIC		0x000
#define VERSION		0x004
#define DEVICE_ID	0x008
#define DEV_FEAT	0x010
#define DEV_FEAT_SEL	0x014
#define DRV_FEAT	0x020
#define DRV_FEAT_SEL	0x024
#define QUEUE_SEL	0x030
#define QUEUE_NUM_MAX	0x034
#define QUEUE_NUM	0x038
#define QUEUE_READY	0x044
#define QUEUE_NOTIFY	0x050
#define INT_STATUS	0x060
#define INT_ACK		0x064
#define STATUS		0x070
#define DESC_LO		0x080
#define DESC_HI		0x084
#define DRIVER_LO	0x090
#define DRIVER_HI	0x094
#define DEVICE_LO	0x0a0
#define DEVICE_HI	0x0a4
#define CONFIG		0x100

/* Status bits (§2.1) */
#define S_ACK		1
#define S_DRIVER	2
#define S_DRIVER_OK	4
#define S_FEATURES_OK	8
#define S_NEEDS_RESET	0x40
#define S_FAILED	0x80

/* Split virtqueues (§2.7): each queue in its own page. */
#define QSIZE		8
#define Q_DESC		0x000	/* 16 bytes per descriptor, 16-byte aligned */
#define Q_AVAIL		0x800	/* flags, idx, ring[QSIZE]: 2-byte aligned */
#define Q_USED		0xc00	/* flags, idx, {id, len}[QSIZE]: 4-byte aligned */
#define F_NEXT		1
#define F_WRITE		2
#define RX_BUFS		4
#define RX_BUF_LEN	2048	/* >= 12 + 1514 (§5.1.6.3.1) */
#define NET_HDR_LEN	12

/* Interrupts */
#define LAPIC_BASE	0xfee00000
#define LAPIC_TPR	0x080
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV	0x3e0
#define IOAPIC_BASE	0xfec00000
#define VIRTIO_PIN	5
#define VEC_VIRTIO	0x30
#define VEC_TIMER	0x31
#define VEC_SPURIOUS	0xff
/* Timer: 6250000 ticks of the 1 GHz APIC bus divided by 16 = 100 ms; the wait gives up
 * after WAIT_TICKS of them. */
#define TIMER_COUNT	6250000
#define WAIT_TICKS	150

	.code64
	.text
	.globl _start
_start:
	cli
	mov %rsi, %rbx			/* boot_params */
	lea stack_top(%rip), %rsp
	mov $VIRTIO_BASE, %r15d		/* zero-extends: %r15 = 0xd0000000 */
	mov $LAPIC_BASE, %r14d
	mov $IOAPIC_BASE, %r13d
	lea m_hello(%rip), %rdi
	call puts
	lea m_cmdline(%rip), %rdi
	call puts
	mov 0x228(%rbx), %edi		/* boot_params.hdr.cmd_line_ptr */
	call puts
	call newline

	/* 1. Map 3-4 GiB: 512 entries of 2 MiB, present|rw|PCD|PS, at PDPTE[3]. */
	lea pd_high(%rip), %rdi
	mov $0xc0000093, %eax		/* 0xc0000000 | PS 0x80 | PCD 0x10 | RW 2 | P 1 */
	mov $512, %ecx
1:	mov %rax, (%rdi)
	add $0x200000, %rax
	add $8, %rdi
	dec %ecx
	jnz 1b
	lea pd_high(%rip), %rax
	or $3, %rax			/* present, writable */
	mov %rax, 0xa000 + 3 * 8	/* PDPTE[3]: 3-4 GiB */
	mov %cr3, %rax
	mov %rax, %cr3			/* flush the TLB */
	lea m_mapped(%rip), %rdi
	call puts

	/* 2. Interrupts. The 8259s: all masked (OCW1). */
	mov $0xff, %al
	out %al, $0x21
	out %al, $0xa1
	/* The IDT: every vector to its stub, then the three real handlers. */
	xor %ecx, %ecx
1:	mov %ecx, %edx
	shl $4, %edx
	lea stubs(%rip), %rsi
	add %rdx, %rsi
	mov %ecx, %edx
	call set_gate
	inc %ecx
	cmp $256, %ecx
	jne 1b
	mov $VEC_VIRTIO, %edx
	lea virtio_isr(%rip), %rsi
	call set_gate
	mov $VEC_TIMER, %edx
	lea timer_isr(%rip), %rsi
	call set_gate
	mov $VEC_SPURIOUS, %edx
	lea spurious_isr(%rip), %rsi
	call set_gate
	lea idt(%rip), %rax
	mov %rax, idtr_base(%rip)
	lidt idtr(%rip)
	/* Local APIC: software-enabled, spurious vector 0xff, accept every priority. */
	movl $0, LAPIC_TPR(%r14)
	mov LAPIC_SVR(%r14), %eax
	or $0x100 | VEC_SPURIOUS, %eax
	mov %eax, LAPIC_SVR(%r14)
	/* IOAPIC pin 5: high word first (destination APIC ID 0 in bits 56-63), then the low
	 * word, which unmasks it: vector 0x30, fixed, physical, active high, edge. */
	movl $0x10 + 2 * VIRTIO_PIN + 1, (%r13)
	movl $0, 0x10(%r13)
	movl $0x10 + 2 * VIRTIO_PIN, (%r13)
	movl $VEC_VIRTIO, 0x10(%r13)
	lea m_ioapic(%rip), %rdi
	call puts
	movl $0x10 + 2 * VIRTIO_PIN + 1, (%r13)
	mov 0x10(%r13), %eax
	shl $32, %rax
	movl $0x10 + 2 * VIRTIO_PIN, (%r13)
	mov 0x10(%r13), %edx
	or %rdx, %rax
	mov $16, %ecx
	call puthex
	call newline

	/* 3. Probe. */
	mov MAGIC(%r15), %eax
	cmp $0x74726976, %eax		/* "virt" */
	je 1f
	mov %eax, %r12d
	lea m_no_device(%rip), %rdi
	call puts
	mov %r12d, %eax
	mov $8, %ecx
	call puthex
	call newline
	jmp machine_reset
1:	lea m_magic(%rip), %rdi
	call puts
	mov VERSION(%r15), %eax
	mov %eax, %r12d
	call putdec
	lea m_device(%rip), %rdi
	call puts
	mov DEVICE_ID(%r15), %eax
	mov %eax, %ebp
	call putdec
	call newline
	lea m_bad_version(%rip), %rdi
	cmp $2, %r12d
	jne fail
	lea m_not_net(%rip), %rdi
	cmp $1, %ebp
	jne fail

	/* Initialisation, §3.1.1: reset, ACKNOWLEDGE, DRIVER. */
	movl $0, STATUS(%r15)
	mov STATUS(%r15), %eax
	lea m_reset_failed(%rip), %rdi
	test %eax, %eax
	jnz fail
	movl $S_ACK, STATUS(%r15)
	movl $S_ACK | S_DRIVER, STATUS(%r15)
	/* Device features, both words. */
	movl $1, DEV_FEAT_SEL(%r15)
	mov DEV_FEAT(%r15), %eax
	shl $32, %rax
	mov %rax, %r12
	movl $0, DEV_FEAT_SEL(%r15)
	mov DEV_FEAT(%r15), %eax
	or %rax, %r12
	lea m_dev_features(%rip), %rdi
	call puts
	mov %r12, %rax
	mov $16, %ecx
	call puthex
	call newline
	lea m_no_version1(%rip), %rdi
	bt $32, %r12			/* VIRTIO_F_VERSION_1 */
	jnc fail
	lea m_no_mac(%rip), %rdi
	bt $5, %r12			/* VIRTIO_NET_F_MAC */
	jnc fail
	/* Driver features: VERSION_1 and MAC, nothing else. */
	movl $0, DRV_FEAT_SEL(%r15)
	movl $1 << 5, DRV_FEAT(%r15)
	movl $1, DRV_FEAT_SEL(%r15)
	movl $1, DRV_FEAT(%r15)
	movl $S_ACK | S_DRIVER | S_FEATURES_OK, STATUS(%r15)
	mov STATUS(%r15), %eax
	mov %eax, %r12d
	lea m_features_refused(%rip), %rdi
	test $S_FEATURES_OK, %eax
	jz fail_status
	lea m_features_ok(%rip), %rdi
	call puts

	/* The configuration space (§5.1.4): mac[6], status (le16), max_virtqueue_pairs,
	 * mtu (le16 at 10), read a byte at a time. */
	xor %ecx, %ecx
	lea mac(%rip), %rdx
1:	movb CONFIG(%r15,%rcx), %al
	movb %al, (%rdx,%rcx)
	inc %ecx
	cmp $6, %ecx
	jne 1b
	lea m_mac(%rip), %rdi
	call puts
	lea mac(%rip), %rsi
	call putmac
	call newline
	lea m_config_status(%rip), %rdi
	call puts
	movzbl CONFIG + 7(%r15), %eax
	shl $8, %eax
	movb CONFIG + 6(%r15), %al
	mov $4, %ecx
	call puthex
	lea m_mtu(%rip), %rdi
	call puts
	movzbl CONFIG + 11(%r15), %eax
	shl $8, %eax
	movb CONFIG + 10(%r15), %al
	call putdec
	call newline

	/* Queues (§4.2.3.2): RX 0, TX 1. */
	xor %edi, %edi
	lea rxq(%rip), %rsi
	call setup_queue
	mov $1, %edi
	lea txq(%rip), %rsi
	call setup_queue

	/* DRIVER_OK, and the device did not ask for a reset. */
	movl $S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK, STATUS(%r15)
	mov STATUS(%r15), %eax
	mov %eax, %r12d
	lea m_driver_ok_refused(%rip), %rdi
	cmp $S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK, %eax
	jne fail_status
	lea m_driver_ok(%rip), %rdi
	call puts

	/* 4. Receive buffers: descriptors 0..RX_BUFS-1, one buffer each, device-writable. */
	lea rxq(%rip), %rdi
	lea rxbufs(%rip), %rax
	xor %ecx, %ecx
1:	mov %rax, Q_DESC(%rdi)
	movl $RX_BUF_LEN, Q_DESC + 8(%rdi)
	movw $F_WRITE, Q_DESC + 12(%rdi)
	movw $0, Q_DESC + 14(%rdi)
	lea rxq(%rip), %rdx
	movw %cx, Q_AVAIL + 4(%rdx, %rcx, 2)
	add $RX_BUF_LEN, %rax
	add $16, %rdi
	inc %ecx
	cmp $RX_BUFS, %ecx
	jne 1b
	movw %cx, rx_avail(%rip)
	movw %cx, rxq + Q_AVAIL + 2(%rip)	/* avail.idx, after the entries */
	movl $0, QUEUE_NOTIFY(%r15)
	lea m_rx_posted(%rip), %rdi
	call puts

	/* 5. The DHCP DISCOVER: our MAC as the frame's source and as chaddr, the IPv4
	 * header checksum, then a chain of header + frame. */
	mov mac(%rip), %eax
	mov %eax, eth_src(%rip)
	mov %eax, chaddr(%rip)
	movzwl mac + 4(%rip), %eax
	mov %ax, eth_src + 4(%rip)
	mov %ax, chaddr + 4(%rip)
	movw $0, ip_csum(%rip)
	lea ip_hdr(%rip), %rsi
	call ipv4_sum
	not %eax
	xchg %al, %ah			/* big-endian on the wire */
	mov %ax, ip_csum(%rip)
	lea ip_hdr(%rip), %rsi		/* verify: the sum over the header is now 0xffff */
	call ipv4_sum
	lea m_bad_csum(%rip), %rdi
	cmp $0xffff, %eax
	jne fail
	lea m_csum(%rip), %rdi
	call puts
	movzbl ip_csum(%rip), %eax
	shl $8, %eax
	movb ip_csum + 1(%rip), %al
	mov $4, %ecx
	call puthex
	call newline

	lea txq(%rip), %rdi
	lea tx_hdr(%rip), %rax
	mov %rax, Q_DESC(%rdi)		/* descriptor 0: the header, then 1 */
	movl $NET_HDR_LEN, Q_DESC + 8(%rdi)
	movw $F_NEXT, Q_DESC + 12(%rdi)
	movw $1, Q_DESC + 14(%rdi)
	lea tx_frame(%rip), %rax
	mov %rax, Q_DESC + 16(%rdi)	/* descriptor 1: the frame */
	movl $TX_FRAME_LEN, Q_DESC + 16 + 8(%rdi)
	movw $0, Q_DESC + 16 + 12(%rdi)
	movw $0, Q_DESC + 16 + 14(%rdi)
	movw $0, Q_AVAIL + 4(%rdi)	/* avail.ring[0] = head 0 */
	movw $1, Q_AVAIL + 2(%rdi)	/* avail.idx = 1 */
	movl $1, QUEUE_NOTIFY(%r15)
	lea m_discover(%rip), %rdi
	call puts
	mov xid(%rip), %eax
	bswap %eax
	mov $8, %ecx
	call puthex
	lea m_frame_len(%rip), %rdi
	call puts
	mov $TX_FRAME_LEN, %eax
	call putdec
	call newline

	/* 6. Wait for interrupts: a 100 ms periodic local-APIC timer bounds the wait. */
	movl $3, LAPIC_TIMER_DIV(%r14)	/* divide by 16 */
	movl $(1 << 17) | VEC_TIMER, LAPIC_LVT_TIMER(%r14)	/* periodic */
	movl $TIMER_COUNT, LAPIC_TIMER_INIT(%r14)
wait:
	cli
	cmpb $0, tx_flag(%rip)
	je 1f
	movb $0, tx_flag(%rip)
	call tx_complete
1:	cmpb $0, rx_flag(%rip)
	je 2f
	movb $0, rx_flag(%rip)
	cmpb $0, rx_irq_seen(%rip)
	jne 3f
	movb $1, rx_irq_seen(%rip)
	lea m_rx_irq(%rip), %rdi
	call puts
3:	call rx_process
2:	cmpb $0, offer_found(%rip)
	je 4f
	cmpb $0, tx_done(%rip)
	jne waited
4:	cmpl $WAIT_TICKS, ticks(%rip)
	jae timeout
	sti
	hlt				/* the sti shadow covers the hlt: no wake-up is lost */
	jmp wait

timeout:
	lea m_timeout(%rip), %rdi
	call puts
	call print_counters
	lea m_timeout2(%rip), %rdi
	jmp fail

waited:
	movl $0, LAPIC_TIMER_INIT(%r14)	/* timer off */
	movl $0x10000, LAPIC_LVT_TIMER(%r14)
	lea m_offer(%rip), %rdi
	call puts
	lea offer_yiaddr(%rip), %rsi
	call putip
	call newline
	lea m_server(%rip), %rdi
	call puts
	lea offer_server(%rip), %rsi
	call putip
	call newline
	lea m_from(%rip), %rdi
	call puts
	lea offer_src(%rip), %rsi
	call putmac
	call newline
	call print_counters

	/* 7. Reset the device, then the machine. */
	movl $0, STATUS(%r15)
	mov STATUS(%r15), %eax
	lea m_reset_failed(%rip), %rdi
	test %eax, %eax
	jnz fail
	lea m_device_reset(%rip), %rdi
	call puts
	lea m_done(%rip), %rdi
	call puts
machine_reset:
	cli
	lea m_reset(%rip), %rdi
	call puts
	mov $0xfe, %al
	out %al, $0x64
1:	jmp 1b

/* fail_status: the message at %rdi, then Status (%r12d). */
fail_status:
	lea m_fail(%rip), %rax
	push %rdi
	mov %rax, %rdi
	call puts
	pop %rdi
	call puts
	lea m_status(%rip), %rdi
	call puts
	mov %r12d, %eax
	mov $2, %ecx
	call puthex
	call newline
	jmp 1f
/* fail: "virtio: FAIL <message at %rdi>", FAILED to the device, reset the machine. */
fail:
	push %rdi
	lea m_fail(%rip), %rdi
	call puts
	pop %rdi
	call puts
	call newline
1:	mov $VIRTIO_BASE, %eax
	cmpl $0x74726976, MAGIC(%rax)
	jne machine_reset
	mov STATUS(%rax), %edx
	or $S_FAILED, %edx
	mov %edx, STATUS(%rax)
	jmp machine_reset

/* setup_queue: queue %edi with its rings in the page at %rsi (§4.2.3.2). */
setup_queue:
	mov %edi, QUEUE_SEL(%r15)
	mov %edi, %r12d
	lea m_queue_busy(%rip), %rdi
	cmpl $0, QUEUE_READY(%r15)
	jne fail
	mov QUEUE_NUM_MAX(%r15), %ebp
	lea m_queue_small(%rip), %rdi
	cmp $QSIZE, %ebp
	jb fail
	movl $QSIZE, QUEUE_NUM(%r15)
	lea Q_DESC(%rsi), %rax
	mov %eax, DESC_LO(%r15)
	shr $32, %rax
	mov %eax, DESC_HI(%r15)
	lea Q_AVAIL(%rsi), %rax
	mov %eax, DRIVER_LO(%r15)
	shr $32, %rax
	mov %eax, DRIVER_HI(%r15)
	lea Q_USED(%rsi), %rax
	mov %eax, DEVICE_LO(%r15)
	shr $32, %rax
	mov %eax, DEVICE_HI(%r15)
	movl $1, QUEUE_READY(%r15)
	lea m_queue_not_ready(%rip), %rdi
	cmpl $1, QUEUE_READY(%r15)
	jne fail
	lea m_queue(%rip), %rdi
	call puts
	mov %r12d, %eax
	call putdec
	lea m_queue_size(%rip), %rdi
	call puts
	mov $QSIZE, %eax
	call putdec
	lea m_queue_max(%rip), %rdi
	call puts
	mov %ebp, %eax
	call putdec
	call newline
	ret

/* tx_complete: the TX chain came back (used.idx moved): check it was head 0. */
tx_complete:
	movzwl txq + Q_USED + 2(%rip), %eax
	cmp $1, %ax
	jne 1f
	movw %ax, tx_last(%rip)
	lea m_tx_bad_id(%rip), %rdi
	cmpl $0, txq + Q_USED + 4(%rip)	/* used.ring[0].id */
	jne fail
	movb $1, tx_done(%rip)
	lea m_tx_used(%rip), %rdi
	call puts
	ret
1:	lea m_tx_bad_idx(%rip), %rdi
	jmp fail

/* rx_process: every new used RX entry: look for the OFFER, give the buffer back. */
rx_process:
	push %rbx
1:	movzwl rxq + Q_USED + 2(%rip), %eax
	movzwl rx_last(%rip), %ebx
	cmp %ax, %bx
	je 9f
	mov %ebx, %ecx
	and $QSIZE - 1, %ecx
	lea rxq(%rip), %rdx
	mov Q_USED + 4(%rdx, %rcx, 8), %eax	/* id */
	mov Q_USED + 8(%rdx, %rcx, 8), %ecx	/* len: header + frame */
	inc %ebx
	mov %bx, rx_last(%rip)
	lea m_rx_bad_id(%rip), %rdi
	cmp $RX_BUFS, %eax
	jae fail
	incl rx_frames(%rip)
	push %rax
	mov %eax, %esi
	shl $11, %esi			/* * RX_BUF_LEN */
	lea rxbufs(%rip), %rdx
	add %rdx, %rsi
	call check_offer
	pop %rax
	/* Give the buffer back: avail.ring[rx_avail % QSIZE] = id, avail.idx++. */
	movzwl rx_avail(%rip), %ecx
	mov %ecx, %edx
	and $QSIZE - 1, %edx
	lea rxq(%rip), %rdi
	mov %ax, Q_AVAIL + 4(%rdi, %rdx, 2)
	inc %ecx
	mov %cx, rx_avail(%rip)
	mov %cx, Q_AVAIL + 2(%rdi)
	movl $0, QUEUE_NOTIFY(%r15)
	jmp 1b
9:	pop %rbx
	ret

/* check_offer: the buffer at %rsi holds %ecx bytes (virtio-net header + frame). If it
 * is our DHCP OFFER, sets offer_found and keeps yiaddr, option 54 and the source MAC;
 * otherwise prints what it was. */
check_offer:
	push %rbx
	push %r12
	mov %ecx, %r11d			/* kept for the message */
	lea m_rx_short(%rip), %rdi
	cmp $NET_HDR_LEN + 14 + 20 + 8 + 240, %ecx
	jb 8f
	lea m_rx_long(%rip), %rdi
	cmp $RX_BUF_LEN, %ecx
	ja 8f
	lea NET_HDR_LEN(%rsi), %r12	/* the frame */
	lea (%rsi, %rcx), %r8		/* its end */
	lea m_rx_not_udp(%rip), %rdi
	cmpw $0x0008, 12(%r12)		/* EtherType 0x0800, big-endian */
	jne 8f
	movzbl 14(%r12), %eax		/* version, IHL */
	mov %eax, %edx
	shr $4, %edx
	cmp $4, %edx
	jne 8f
	and $0xf, %eax
	shl $2, %eax
	cmp $20, %eax
	jb 8f
	cmpb $17, 14 + 9(%r12)		/* protocol UDP */
	jne 8f
	lea 14(%r12, %rax), %rbx	/* UDP header */
	lea 8 + 240(%rbx), %rax
	cmp %r8, %rax
	ja 8f
	lea m_rx_not_dhcp(%rip), %rdi
	cmpw $0x4300, (%rbx)		/* source port 67 */
	jne 8f
	cmpw $0x4400, 2(%rbx)		/* destination port 68 */
	jne 8f
	add $8, %rbx			/* BOOTP */
	lea m_rx_not_ours(%rip), %rdi
	cmpb $2, (%rbx)			/* op BOOTREPLY */
	jne 8f
	mov 4(%rbx), %eax		/* xid */
	cmp xid(%rip), %eax
	jne 8f
	mov 28(%rbx), %eax		/* chaddr */
	cmp mac(%rip), %eax
	jne 8f
	movzwl 32(%rbx), %eax
	cmp mac + 4(%rip), %ax
	jne 8f
	cmpl $0x63538263, 236(%rbx)	/* magic cookie 99.130.83.99 */
	jne 8f
	/* Options: 53 (message type) and 54 (server identifier). */
	lea 240(%rbx), %rdi
	xor %r9d, %r9d			/* message type */
	xor %r10d, %r10d		/* server identifier */
1:	cmp %r8, %rdi
	jae 3f
	movzbl (%rdi), %eax
	cmp $255, %eax
	je 3f
	test %eax, %eax
	jnz 2f
	inc %rdi			/* pad */
	jmp 1b
2:	lea 1(%rdi), %rdx
	cmp %r8, %rdx
	jae 3f
	movzbl 1(%rdi), %ecx
	lea 2(%rdi, %rcx), %rdx		/* next option */
	cmp %r8, %rdx
	ja 3f
	cmp $53, %eax
	jne 4f
	cmp $1, %ecx
	jne 4f
	movzbl 2(%rdi), %r9d
4:	cmp $54, %eax
	jne 5f
	cmp $4, %ecx
	jne 5f
	mov 2(%rdi), %r10d
5:	mov %rdx, %rdi
	jmp 1b
3:	lea m_rx_not_offer(%rip), %rdi
	cmp $2, %r9d			/* DHCPOFFER */
	jne 8f
	mov 16(%rbx), %eax		/* yiaddr */
	mov %eax, offer_yiaddr(%rip)
	mov %r10d, offer_server(%rip)
	mov 6(%r12), %eax		/* Ethernet source */
	mov %eax, offer_src(%rip)
	movzwl 10(%r12), %eax
	mov %ax, offer_src + 4(%rip)
	movb $1, offer_found(%rip)
	jmp 9f
8:	call puts			/* "virtio: rx frame: <why>" */
	lea m_len(%rip), %rdi
	call puts
	mov %r11d, %eax
	call putdec
	call newline
9:	pop %r12
	pop %rbx
	ret

/* print_counters: interrupts taken, InterruptStatus bits seen, frames, timer ticks. */
print_counters:
	lea m_irqs(%rip), %rdi
	call puts
	mov irq_count(%rip), %eax
	call putdec
	lea m_isr_bits(%rip), %rdi
	call puts
	mov isr_bits(%rip), %eax
	mov $1, %ecx
	call puthex
	lea m_rx_frames(%rip), %rdi
	call puts
	mov rx_frames(%rip), %eax
	call putdec
	lea m_ticks(%rip), %rdi
	call puts
	mov ticks(%rip), %eax
	call putdec
	call newline
	ret

/* ipv4_sum: the ones'-complement sum (folded, not inverted) of the 20-byte header at
 * %rsi, in %eax. */
ipv4_sum:
	xor %edx, %edx
	mov $10, %ecx
1:	movzbl (%rsi), %eax
	shl $8, %eax
	movb 1(%rsi), %al
	add %eax, %edx
	add $2, %rsi
	dec %ecx
	jnz 1b
2:	mov %edx, %eax
	shr $16, %eax
	jz 3f
	and $0xffff, %edx
	add %eax, %edx
	jmp 2b
3:	mov %edx, %eax
	ret

/* set_gate: IDT gate %edx -> handler %rsi: 64-bit interrupt gate (type 0x8e), selector
 * the current CS. */
set_gate:
	push %rax
	push %rdi
	lea idt(%rip), %rdi
	shl $4, %edx
	add %rdx, %rdi
	mov %rsi, %rax
	mov %ax, (%rdi)			/* offset 15:0 */
	mov %cs, %ax
	mov %ax, 2(%rdi)		/* selector */
	movw $0x8e00, 4(%rdi)		/* IST 0, present, DPL 0, interrupt gate */
	mov %rsi, %rax
	shr $16, %rax
	mov %ax, 6(%rdi)		/* offset 31:16 */
	shr $16, %rax
	mov %eax, 8(%rdi)		/* offset 63:32 */
	movl $0, 12(%rdi)
	pop %rdi
	pop %rax
	ret

/* The device's interrupt: read InterruptStatus, acknowledge it, note which rings moved,
 * EOI. */
virtio_isr:
	push %rax
	push %rdx
	mov $VIRTIO_BASE, %edx
	mov INT_STATUS(%rdx), %eax
	mov %eax, INT_ACK(%rdx)
	or %eax, isr_bits(%rip)
	incl irq_count(%rip)
	movzwl rxq + Q_USED + 2(%rip), %eax
	cmp rx_last(%rip), %ax
	je 1f
	movb $1, rx_flag(%rip)
1:	movzwl txq + Q_USED + 2(%rip), %eax
	cmp tx_last(%rip), %ax
	je 2f
	movb $1, tx_flag(%rip)
2:	mov $LAPIC_BASE + LAPIC_EOI, %edx
	movl $0, (%rdx)
	pop %rdx
	pop %rax
	iretq

timer_isr:
	push %rax
	incl ticks(%rip)
	mov $LAPIC_BASE + LAPIC_EOI, %eax
	movl $0, (%rax)
	pop %rax
	iretq

spurious_isr:				/* no EOI for the spurious vector */
	iretq

/* Every other vector: print it (and the error code, RIP, CR2) and reset. */
	.balign 16
stubs:
	.set vec, 0
	.rept 256
	.balign 16
	pushq $vec
	jmp unexpected
	.set vec, vec + 1
	.endr
unexpected:
	lea m_unexpected(%rip), %rdi
	call puts
	mov (%rsp), %rax
	mov %eax, %ebx
	mov $2, %ecx
	call puthex
	/* Exceptions 8, 10-14, 17, 21, 29 and 30 push an error code. */
	lea 8(%rsp), %rsi
	cmp $32, %ebx
	jae 1f
	mov $0x60227d00, %eax
	bt %ebx, %eax
	jnc 1f
	lea m_error(%rip), %rdi
	call puts
	mov 8(%rsp), %rax
	mov $8, %ecx
	call puthex
	lea 16(%rsp), %rsi
1:	lea m_rip(%rip), %rdi
	call puts
	mov (%rsi), %rax
	mov $16, %ecx
	call puthex
	lea m_cr2(%rip), %rdi
	call puts
	mov %cr2, %rax
	mov $16, %ecx
	call puthex
	call newline
	jmp machine_reset

/* putc: %al to COM1 once the transmitter holding register is empty. Keeps every register. */
putc:
	push %rdx
	push %rax
	mov $0x3fd, %dx
1:	in %dx, %al
	test $0x20, %al
	jz 1b
	pop %rax
	mov $0x3f8, %dx
	out %al, %dx
	pop %rdx
	ret

/* puts: the NUL-terminated string at %rdi (at most 4096 bytes). Clobbers %rax, %rcx, %rdi. */
puts:
	mov $4096, %ecx
1:	movb (%rdi), %al
	test %al, %al
	jz 2f
	call putc
	inc %rdi
	dec %ecx
	jnz 1b
2:	ret

newline:
	push %rax
	mov $'\n', %al
	call putc
	pop %rax
	ret

/* puthex: the low %ecx (1-16) hex digits of %rax. Clobbers %rax, %rcx, %rdx. */
puthex:
	mov %rax, %rdx
	push %rcx
	mov $16, %eax
	sub %ecx, %eax
	shl $2, %eax
	mov %eax, %ecx
	shl %cl, %rdx			/* the first digit to print at the top */
	pop %rcx
1:	rol $4, %rdx
	mov %dl, %al
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 2f
	add $'a' - '9' - 1, %al
2:	call putc
	dec %ecx
	jnz 1b
	ret

/* putdec: %eax in decimal. Clobbers %rax, %rcx, %rdx. */
putdec:
	push %rbx
	mov $10, %ebx
	xor %ecx, %ecx
1:	xor %edx, %edx
	div %ebx
	add $'0', %dl
	push %rdx
	inc %ecx
	test %eax, %eax
	jnz 1b
2:	pop %rax
	call putc
	dec %ecx
	jnz 2b
	pop %rbx
	ret

/* putip: the IPv4 address at %rsi, dotted decimal. Clobbers %rax, %rcx, %rdx, %r8. */
putip:
	xor %r8d, %r8d
1:	movzbl (%rsi, %r8), %eax
	call putdec
	inc %r8d
	cmp $4, %r8d
	je 2f
	mov $'.', %al
	call putc
	jmp 1b
2:	ret

/* putmac: the MAC address at %rsi, xx:xx:xx:xx:xx:xx. Clobbers %rax, %rcx, %rdx, %r8. */
putmac:
	xor %r8d, %r8d
1:	movzbl (%rsi, %r8), %eax
	mov $2, %ecx
	call puthex
	inc %r8d
	cmp $6, %r8d
	je 2f
	mov $':', %al
	call putc
	jmp 1b
2:	ret

	.data
/* The DISCOVER: virtio_net_hdr_v1 (all zero: no offloads; num_buffers is the device's),
 * then the Ethernet frame. */
	.balign 16
tx_hdr:	.skip NET_HDR_LEN
tx_frame:
	.byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff	/* to everyone */
eth_src: .skip 6				/* from the device MAC */
	.byte 0x08, 0x00			/* IPv4 */
ip_hdr:	.byte 0x45, 0x00			/* version 4, IHL 5, DSCP 0 */
	.byte (IP_LEN >> 8), (IP_LEN & 0xff)	/* total length */
	.byte 0x00, 0x00, 0x00, 0x00		/* id 0, no fragments */
	.byte 64, 17				/* TTL, UDP */
ip_csum: .byte 0x00, 0x00			/* computed at run time */
	.byte 0, 0, 0, 0			/* 0.0.0.0 */
	.byte 255, 255, 255, 255		/* 255.255.255.255 */
udp_hdr: .byte 0, 68, 0, 67			/* 68 -> 67 */
	.byte (UDP_LEN >> 8), (UDP_LEN & 0xff)
	.byte 0, 0				/* no checksum (RFC 768) */
bootp:	.byte 1, 1, 6, 0			/* BOOTREQUEST, Ethernet, hlen 6, hops 0 */
xid:	.byte 0x73, 0x6b, 0x69, 0x66		/* "skif" */
	.byte 0, 0				/* secs */
	.byte 0x80, 0x00			/* flags: broadcast */
	.skip 16				/* ciaddr, yiaddr, siaddr, giaddr */
chaddr:	.skip 16
	.skip 64				/* sname */
	.skip 128				/* file */
	.byte 99, 130, 83, 99			/* magic cookie */
	.byte 53, 1, 1				/* DHCP message type: DISCOVER */
	.byte 55, 3, 1, 3, 54			/* parameter request: mask, router, server id */
	.byte 255				/* end */
	.skip 300 - (. - bootp)			/* BOOTP's 300-byte minimum (RFC 1542) */
tx_end:
	.set IP_LEN, tx_end - ip_hdr
	.set UDP_LEN, tx_end - udp_hdr
	.set TX_FRAME_LEN, tx_end - tx_frame
	.if (tx_end - bootp) != 300 || (chaddr - bootp) != 28 || TX_FRAME_LEN != 342
	.error "DHCP DISCOVER layout"
	.endif

	.balign 16
idtr:	.word 256 * 16 - 1
idtr_base: .quad 0

mac:	.skip 8
offer_yiaddr: .long 0
offer_server: .long 0
offer_src: .skip 8
ticks:	.long 0
irq_count: .long 0
isr_bits: .long 0
rx_frames: .long 0
rx_last: .word 0			/* RX used entries consumed */
rx_avail: .word 0			/* RX avail.idx written */
tx_last: .word 0
rx_flag: .byte 0			/* set by the interrupt handler */
tx_flag: .byte 0
rx_irq_seen: .byte 0
tx_done: .byte 0
offer_found: .byte 0

	.section .rodata
m_hello:	.asciz "virtio: hello\n"
m_cmdline:	.asciz "virtio: cmdline="
m_mapped:	.asciz "virtio: mapped 3-4 GiB\n"
m_ioapic:	.asciz "virtio: ioapic pin 5 redirection "
m_no_device:	.asciz "virtio: no device at 0xd0000000, magic "
m_magic:	.asciz "virtio: magic ok version "
m_device:	.asciz " device "
m_bad_version:	.asciz "version is not 2"
m_not_net:	.asciz "not a network card"
m_reset_failed:	.asciz "Status is not 0 after a reset"
m_dev_features:	.asciz "virtio: device features "
m_no_version1:	.asciz "no VIRTIO_F_VERSION_1"
m_no_mac:	.asciz "no VIRTIO_NET_F_MAC"
m_features_refused: .asciz "FEATURES_OK did not stick"
m_features_ok:	.asciz "virtio: features ok (driver features 0000000100000020)\n"
m_mac:		.asciz "virtio: mac "
m_config_status: .asciz "virtio: config status "
m_mtu:		.asciz " mtu "
m_queue_busy:	.asciz "queue ready before set-up"
m_queue_small:	.asciz "QueueNumMax below 8"
m_queue_not_ready: .asciz "QueueReady did not stick"
m_queue:	.asciz "virtio: queue "
m_queue_size:	.asciz " size "
m_queue_max:	.asciz " max "
m_driver_ok_refused: .asciz "DRIVER_OK refused"
m_driver_ok:	.asciz "virtio: driver ok\n"
m_rx_posted:	.asciz "virtio: rx buffers posted 4\n"
m_bad_csum:	.asciz "IPv4 header checksum does not verify"
m_csum:		.asciz "virtio: ipv4 checksum "
m_discover:	.asciz "virtio: discover sent xid "
m_frame_len:	.asciz " frame "
m_rx_irq:	.asciz "virtio: rx interrupt\n"
m_tx_used:	.asciz "virtio: tx used\n"
m_tx_bad_idx:	.asciz "TX used.idx is not 1"
m_tx_bad_id:	.asciz "TX used id is not 0"
m_rx_bad_id:	.asciz "RX used id is not a posted buffer"
m_rx_short:	.asciz "virtio: rx frame: too short"
m_rx_long:	.asciz "virtio: rx frame: longer than its buffer"
m_rx_not_udp:	.asciz "virtio: rx frame: not IPv4/UDP"
m_rx_not_dhcp:	.asciz "virtio: rx frame: not UDP 67 -> 68"
m_rx_not_ours:	.asciz "virtio: rx frame: not a BOOTREPLY to our xid and chaddr"
m_rx_not_offer:	.asciz "virtio: rx frame: not a DHCPOFFER"
m_len:		.asciz ", length "
m_offer:	.asciz "virtio: offer yiaddr="
m_server:	.asciz "virtio: offer server="
m_from:		.asciz "virtio: offer from "
m_irqs:		.asciz "virtio: interrupts "
m_isr_bits:	.asciz " status bits "
m_rx_frames:	.asciz " rx frames "
m_ticks:	.asciz " timer ticks "
m_timeout:	.asciz "virtio: timeout\n"
m_timeout2:	.asciz "no OFFER and TX completion within 15 s"
m_device_reset:	.asciz "virtio: device reset\n"
m_done:		.asciz "virtio: done\n"
m_reset:	.asciz "virtio: reset\n"
m_fail:		.asciz "virtio: FAIL "
m_status:	.asciz ", Status "
m_unexpected:	.asciz "virtio: FAIL unexpected vector "
m_error:	.asciz " error "
m_rip:		.asciz " rip "
m_cr2:		.asciz " cr2 "

	.bss
	.balign 4096
pd_high: .skip 4096
idt:	.skip 4096
rxq:	.skip 4096
txq:	.skip 4096
rxbufs:	.skip RX_BUFS * RX_BUF_LEN
	.skip 16384
stack_top:
