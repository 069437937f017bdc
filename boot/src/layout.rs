//! Where things live in guest-physical memory: the one table of addresses that the boot code,
//! the VMM and the devices share.
//!
//! Everything the guest finds at entry sits below 1 MiB, in the "low memory" that real-mode
//! BIOSes left free; the kernel goes at or above [`HIMEM_START`]. All values are guest-physical
//! addresses in bytes unless a name says otherwise.
//!
//! ```text
//! 0x0500  GDT (4 entries)          0x6000  PVH hvm_start_info, modlist, memmap
//! 0x0520  IDT (one null entry)     0x7000  zero page (boot_params)
//! 0x8ff0  boot stack (grows down)  0x9000  PML4, 0xa000 PDPTE, 0xb000 PDE
//! 0x20000 kernel command line      0x9fc00 EBDA: MP table .. 0x100000 reserved
//! 0x100000 kernel (bzImage code32_start, vmlinux p_paddr)
//! 0xd000_0000 .. 0x1_0000_0000 MMIO gap: virtio-mmio, IOAPIC, LAPIC; RAM resumes at 4 GiB
//! ```

use std::mem::size_of;

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

/// GDT base: four 8-byte descriptors, null, TSS (selector 0x08), code (0x10), data (0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT base: one null gate, so that an early exception triple-faults instead of jumping to junk.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info` (xen `arch-x86/hvm/start_info.h`), handed to the guest in `%ebx`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (`hvm_modlist_entry`, 32 bytes each): the initrd when there is one.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry`, 24 bytes each), up to the zero page.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// How many PVH memmap entries fit between [`PVH_MEMMAP_START`] and [`ZERO_PAGE_START`].
pub const PVH_MEMMAP_MAX_ENTRIES: usize =
    (ZERO_PAGE_START - PVH_MEMMAP_START) as usize / size_of::<hvm_memmap_table_entry>();

// The PVH structures fit their slots: hvm_start_info before the module list, one module
// (the initrd) before the memory map.
const _: () = assert!(PVH_INFO_START + size_of::<hvm_start_info>() as u64 <= PVH_MODLIST_START);
const _: () =
    assert!(PVH_MODLIST_START + size_of::<hvm_modlist_entry>() as u64 <= PVH_MEMMAP_START);

/// The zero page (`struct boot_params`, 4096 bytes), handed to the guest in `%rsi`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial `%rsp`/`%rbp` for the 64-bit entry; the stack grows down into 0x8000..0x8ff0,
/// just above the zero page.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity page tables for the 64-bit entry: one page each for PML4, PDPT and PD.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table (first 512 GiB).
pub const PDPTE_START: u64 = 0xa000;
/// Page directory: 512 entries of 2 MiB, the first 1 GiB identity-mapped.
pub const PDE_START: u64 = 0xb000;

/// The kernel command line, NUL-terminated.
pub const CMDLINE_START: u64 = 0x20000;
/// Size in bytes of the command-line buffer, terminating NUL included: the longest command
/// line is `CMDLINE_MAX - 1` bytes (and a bzImage's own `cmdline_size` may lower that).
pub const CMDLINE_MAX: usize = 4096;

/// Extended BIOS data area: the last KiB of the 640 KiB of conventional memory. Linux scans
/// it (`smp_scan_config(639 * 0x400, 0x400)`) for the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// Intel MP spec 1.4 floating pointer and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;

/// First byte above the legacy 1 MiB: kernels are loaded here or above.
pub const HIMEM_START: u64 = 0x10_0000;

/// Highest address (inclusive) the initrd may reach: below 1 GiB, inside the identity map and
/// below every x86-64 kernel's `initrd_addr_max` (0x7fffffff; boot.rst's default 0x37ffffff
/// only applies to protocol < 2.03, which we refuse).
pub const INITRD_ADDR_MAX: u64 = 0x3fff_ffff;

/// Start of the hole below 4 GiB where no RAM is mapped: device MMIO lives here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End (exclusive) of the MMIO gap: RAM beyond [`MMIO_GAP_START`] resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Base of the first virtio-mmio device; device `i` is at `VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Bytes of register space per virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC pin of the first virtio-mmio device; device `i` uses `VIRTIO_MMIO_IRQ_BASE + i`
/// (5 onward: 0-4 are the PIT, keyboard, cascade and the two UARTs).
pub const VIRTIO_MMIO_IRQ_BASE: u32 = 5;

/// IOAPIC register window (the PC default, Intel 82093AA).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC register window (the architectural default `IA32_APIC_BASE`).
pub const LAPIC_START: u64 = 0xfee0_0000;

/// Guest-physical address of virtio-mmio device `index`.
pub const fn virtio_mmio_addr(index: u32) -> u64 {
    VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE * index as u64
}

/// IOAPIC pin (GSI) of virtio-mmio device `index`.
pub const fn virtio_mmio_irq(index: u32) -> u32 {
    VIRTIO_MMIO_IRQ_BASE + index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap() {
        // (start, end exclusive) of each structure, in address order.
        let regions = [
            (BOOT_GDT_START, BOOT_IDT_START),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_MODLIST_START),
            (PVH_MODLIST_START, PVH_MEMMAP_START),
            (PVH_MEMMAP_START, ZERO_PAGE_START),
            (ZERO_PAGE_START, ZERO_PAGE_START + 4096),
            (ZERO_PAGE_START + 4096, BOOT_STACK_POINTER), // the stack
            (PML4_START, PDPTE_START),
            (PDPTE_START, PDE_START),
            (PDE_START, PDE_START + 4096),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX as u64),
            (MPTABLE_START, HIMEM_START),
        ];
        for w in regions.windows(2) {
            assert!(w[0].0 < w[0].1 && w[0].1 <= w[1].0, "{w:x?}");
        }
    }

    #[test]
    fn mmio_devices_sit_in_the_gap() {
        assert_eq!(virtio_mmio_addr(0), 0xd000_0000);
        assert_eq!(virtio_mmio_addr(2), 0xd000_2000);
        assert_eq!(virtio_mmio_irq(0), 5);
        assert!(virtio_mmio_addr(16) < IOAPIC_START && IOAPIC_START < MMIO_GAP_END);
    }
}
