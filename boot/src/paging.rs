//! The descriptor tables and page tables the boot vCPU runs on at entry.
//!
//! GDT (Intel SDM vol. 3, 3.4.5), four entries at [`BOOT_GDT_START`]:
//!
//! | selector | [`Protocol::Linux64`]      | [`Protocol::Pvh`]            |
//! |----------|----------------------------|------------------------------|
//! | 0x00     | null                       | null                         |
//! | 0x08     | TSS (busy, for TR)         | TSS (busy, limit 0x67)       |
//! | 0x10     | 64-bit code (L=1)          | 32-bit code, 4 GiB flat      |
//! | 0x18     | data, 4 GiB flat           | data, 4 GiB flat             |
//!
//! Code at 0x10 and data at 0x18 because boot.rst's 64-bit protocol names those selectors
//! (`__BOOT_CS`, `__BOOT_DS`); Firecracker's order (code 0x08) works only because Linux
//! reloads its own GDT at once. The TSS takes the slot that is left.
//!
//! Page tables ([`Protocol::Linux64`] only: boot.rst wants the kernel, zero page and command
//! line identity-mapped): PML4[0] -> PDPT[0] -> one page directory of 512 2 MiB pages, the
//! first 1 GiB mapped virtual == physical.

use kvm_bindings::kvm_segment;
use vm_memory::GuestMemoryMmap;

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::params;
use crate::{Protocol, Result};

/// Selector of the TSS descriptor (GDT index 1).
pub(crate) const TSS_SELECTOR: u16 = 0x08;
/// Selector of the code segment (GDT index 2), `__BOOT_CS` in boot.rst.
pub(crate) const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (GDT index 3), `__BOOT_DS` in boot.rst.
pub(crate) const DATA_SELECTOR: u16 = 0x18;

// Page-table entry bits (SDM vol. 3, 4.5): present, writable, page size (2 MiB in a PDE).
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_PAGE_SIZE: u64 = 1 << 7;
const HUGE_PAGE: u64 = 2 << 20;
const ENTRIES_PER_TABLE: u64 = 512;

/// A segment descriptor from its access/flags word (bits 0-7: access byte, 12-15: G, D/B,
/// L, AVL: the layout of bytes 5-6 of the descriptor with the limit nibble taken out), base and
/// 20-bit limit.
pub(crate) const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The GDT for `protocol`, indexed by selector / 8.
pub(crate) fn gdt(protocol: Protocol) -> [u64; 4] {
    match protocol {
        // Access 0x9b: present, ring 0, code, execute/read, accessed; 0xa: G=1, L=1.
        // Access 0x93: present, ring 0, data, read/write, accessed; 0xc: G=1, D/B=1.
        // 0x8b: present, system, busy 64-bit TSS.
        Protocol::Linux64 => [
            0,
            gdt_entry(0x808b, 0, 0xfffff),
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
        ],
        // PVH (xen docs/misc/pvh.pandoc): CS 32-bit read/execute and DS/ES/SS 32-bit
        // read/write, base 0, limit 4 GiB; TR a 32-bit TSS, base 0, limit 0x67.
        Protocol::Pvh => [
            0,
            gdt_entry(0x008b, 0, 0x67),
            gdt_entry(0xc09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
        ],
    }
}

/// The `kvm_segment` (hidden segment-register state) that loading `selector` from `table`
/// would give: what KVM_SET_SREGS needs, kept consistent with the GDT in guest memory.
pub(crate) fn segment(table: &[u64; 4], selector: u16) -> kvm_segment {
    let entry = table[usize::from(selector >> 3)];
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages: KVM wants it in bytes.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT for `protocol` at [`BOOT_GDT_START`] and a one-entry null IDT at
/// [`BOOT_IDT_START`] (an exception before the kernel sets up its own then shuts the vCPU
/// down, which KVM reports, instead of running garbage).
pub(crate) fn write_gdt(mem: &GuestMemoryMmap, protocol: Protocol) -> Result<()> {
    let bytes: Vec<u8> = gdt(protocol).iter().flat_map(|e| e.to_le_bytes()).collect();
    params::write(mem, "GDT", BOOT_GDT_START, &bytes)?;
    params::write(mem, "IDT", BOOT_IDT_START, &0u64.to_le_bytes())
}

/// Writes identity page tables for the first 1 GiB with 2 MiB pages at [`PML4_START`],
/// [`PDPTE_START`] and [`PDE_START`].
pub(crate) fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let table = PTE_PRESENT | PTE_WRITABLE;
    params::write(
        mem,
        "PML4",
        PML4_START,
        &(PDPTE_START | table).to_le_bytes(),
    )?;
    params::write(mem, "PDPT", PDPTE_START, &(PDE_START | table).to_le_bytes())?;
    let pd: Vec<u8> = (0..ENTRIES_PER_TABLE)
        .flat_map(|i| ((i * HUGE_PAGE) | table | PDE_PAGE_SIZE).to_le_bytes())
        .collect();
    params::write(mem, "page directory", PDE_START, &pd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::mem;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn gdt_entries_encode_like_the_sdm() {
        // The well-known encodings (Firecracker's and Linux's boot GDTs use the same).
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x008b, 0x1234_5678, 0x67), 0x1200_8b34_5678_0067);
    }

    #[test]
    fn gdt_in_memory_and_segments_agree() {
        let m = mem(16 << 20);
        write_gdt(&m, Protocol::Linux64).unwrap();
        let table = gdt(Protocol::Linux64);
        for (i, want) in table.iter().enumerate() {
            let got: u64 = m
                .read_obj(GuestAddress(BOOT_GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *want);
        }
        assert_eq!(m.read_obj::<u64>(GuestAddress(BOOT_IDT_START)).unwrap(), 0);
        let cs = segment(&table, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.s, cs.type_, cs.present), (1, 0, 1, 0xb, 1));
        assert_eq!(
            (cs.base, cs.limit, cs.g, cs.selector),
            (0, 0xffff_ffff, 1, 0x10)
        );
        let ds = segment(&table, DATA_SELECTOR);
        assert_eq!(
            (ds.l, ds.db, ds.s, ds.type_, ds.limit),
            (0, 1, 1, 3, 0xffff_ffff)
        );
        let tr = segment(&table, TSS_SELECTOR);
        assert_eq!((tr.s, tr.type_, tr.present, tr.unusable), (0, 0xb, 1, 0));
        assert_eq!(segment(&table, 0).unusable, 1);
    }

    #[test]
    fn pvh_gdt_is_32_bit_flat() {
        let table = gdt(Protocol::Pvh);
        let cs = segment(&table, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.limit, cs.base), (0, 1, 0xffff_ffff, 0));
        let tr = segment(&table, TSS_SELECTOR);
        assert_eq!((tr.limit, tr.g, tr.type_), (0x67, 0, 0xb));
    }

    #[test]
    fn identity_map_of_the_first_gib() {
        let m = mem(16 << 20);
        write_page_tables(&m).unwrap();
        let at = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(at(PML4_START), PDPTE_START | 0x3);
        assert_eq!(at(PML4_START + 8), 0, "only PML4[0]");
        assert_eq!(at(PDPTE_START), PDE_START | 0x3);
        assert_eq!(at(PDPTE_START + 8), 0, "only the first GiB");
        for i in 0..512u64 {
            let pde = at(PDE_START + 8 * i);
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB page (PS)");
            assert_eq!(pde & !0xfff, i << 21, "identity");
        }
    }
}
