//! What the kernel reads about its machine at entry: the command line, the e820 memory map,
//! and the structure that carries them: the zero page (`struct boot_params`, boot.rst
//! "Zero page" and "64-bit boot protocol") or PVH's `hvm_start_info` (xen
//! `arch-x86/hvm/start_info.h`, version 1).

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::GuestMemoryRegion;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{
    CMDLINE_MAX, CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::{BootSpec, Error, Result};

/// e820 type of usable RAM (also `XEN_HVM_MEMMAP_TYPE_RAM`: PVH uses the e820 numbering).
pub(crate) const E820_RAM: u32 = 1;
/// e820 type of reserved memory (`XEN_HVM_MEMMAP_TYPE_RESERVED`).
pub(crate) const E820_RESERVED: u32 = 2;

/// boot.rst: `type_of_loader` 0xff means "undefined" (no ID assigned to us).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// boot.rst: `boot_flag` at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// boot.rst: `HdrS` at 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// boot.rst: `cmdline_size` exists from protocol 2.06.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// boot.rst: `initrd_addr_max` exists from protocol 2.03.
const PROTOCOL_INITRD_ADDR_MAX: u16 = 0x0203;

/// One memory-map entry: `[addr, addr + size)` in bytes, of e820 type `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map the guest is told about, from the regions of guest memory: RAM below the
/// EBDA, the EBDA..1 MiB hole reserved (the MP table lives there; Linux keeps out of it
/// anyway), then RAM for the rest of the first region and for each further region (the RAM
/// above the MMIO gap).
pub(crate) fn e820_map(mem: &GuestMemoryMmap) -> Result<Vec<E820Entry>> {
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect();
    regions.sort_unstable();
    let low_end = match regions.first() {
        Some(&(0, len)) if len > HIMEM_START => len,
        _ => {
            return Err(Error::MemoryLayout(
                "guest RAM must start at 0 and reach past 1 MiB".into(),
            ))
        }
    };
    let ram = |addr, size| E820Entry {
        addr,
        size,
        kind: E820_RAM,
    };
    let mut map = vec![
        ram(0, EBDA_START),
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
        ram(HIMEM_START, low_end - HIMEM_START),
    ];
    map.extend(regions[1..].iter().map(|&(start, len)| ram(start, len)));
    let max = E820_MAX_ENTRIES_ZEROPAGE.min(PVH_MEMMAP_MAX_ENTRIES);
    if map.len() > max {
        return Err(Error::MemoryLayout(format!(
            "{} memory regions make {} e820 entries; at most {max} fit",
            regions.len(),
            map.len()
        )));
    }
    Ok(map)
}

/// Writes the command line at [`CMDLINE_START`], NUL-terminated. Its limit is our buffer
/// ([`CMDLINE_MAX`] - 1 bytes) or a bzImage's own `cmdline_size`, whichever is smaller.
pub(crate) fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    hdr: Option<&setup_header>,
) -> Result<()> {
    let mut max = CMDLINE_MAX - 1;
    if let Some(h) = hdr {
        if { h.version } >= PROTOCOL_CMDLINE_SIZE {
            max = max.min(h.cmdline_size as usize);
        }
    }
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    write(mem, "command line", CMDLINE_START, &bytes)
}

/// Writes the zero page at [`ZERO_PAGE_START`]: zeroed, then the bzImage's setup header (as
/// boot.rst asks of a 64-bit loader) or, for an ELF, a fresh one; then what the loader fills
/// in: `type_of_loader`, the command line pointer, the initrd, the e820 table.
pub(crate) fn write_boot_params(
    mem: &GuestMemoryMmap,
    hdr: Option<&setup_header>,
    spec: &BootSpec,
    e820: &[E820Entry],
) -> Result<()> {
    let mut bp = boot_params {
        hdr: match hdr {
            Some(h) => *h,
            None => setup_header {
                boot_flag: BOOT_FLAG,
                header: HDRS_MAGIC,
                // Tells the kernel how long the line is; ours is checked against CMDLINE_MAX.
                cmdline_size: spec.cmdline.len() as u32,
                ..Default::default()
            },
        },
        ..Default::default()
    };
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // Both addresses are below 4 GiB by construction (layout, load_initrd); the ext_ fields
    // carry the high halves all the same.
    bp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    bp.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    if let Some((addr, size)) = spec.initrd {
        let addr = addr.raw_value();
        if let Some(h) = hdr.filter(|h| { h.version } >= PROTOCOL_INITRD_ADDR_MAX) {
            let (end, max) = (addr + size.saturating_sub(1), u64::from(h.initrd_addr_max));
            if end > max {
                return Err(Error::InitrdTooHigh { end, max });
            }
        }
        bp.hdr.ramdisk_image = addr as u32;
        bp.ext_ramdisk_image = (addr >> 32) as u32;
        bp.hdr.ramdisk_size = size as u32;
        bp.ext_ramdisk_size = (size >> 32) as u32;
    }
    for (slot, e) in bp.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    // e820_map keeps the count within E820_MAX_ENTRIES_ZEROPAGE (128).
    bp.e820_entries = e820.len() as u8;
    write(mem, "zero page", ZERO_PAGE_START, bp.as_slice())
}

/// Writes `hvm_start_info` (version 1) at [`PVH_INFO_START`], the initrd as module 0 at
/// [`PVH_MODLIST_START`] and the memory map at [`PVH_MEMMAP_START`].
pub(crate) fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    spec: &BootSpec,
    e820: &[E820Entry],
) -> Result<()> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = spec.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        write(mem, "PVH module list", PVH_MODLIST_START, module.as_slice())?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + i as u64 * entry_size;
        write(mem, "PVH memory map", at, entry.as_slice())?;
    }
    write(mem, "PVH start info", PVH_INFO_START, info.as_slice())
}

/// Writes `bytes` at guest address `addr`, naming `what` on failure.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use crate::test_util::{mem, mem_with_gap};

    fn spec(cmdline: &str) -> BootSpec<'_> {
        BootSpec {
            cmdline,
            vcpus: 1,
            initrd: Some((GuestAddress(0x3000_0000), 0x1234)),
        }
    }

    fn e(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn e820_for_a_small_guest() {
        let map = e820_map(&mem(128 << 20)).unwrap();
        assert_eq!(
            map,
            [
                e(0, 0x9fc00, E820_RAM),
                e(0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                e(0x100000, (128 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_mmio_gap() {
        let map = e820_map(&mem_with_gap(5 << 30)).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            e(HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(
            map[3],
            e(MMIO_GAP_END, (5 << 30) - MMIO_GAP_START, E820_RAM)
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_needs_ram_from_zero_past_1_mib() {
        assert!(matches!(
            e820_map(&mem(0x80000)),
            Err(Error::MemoryLayout(_))
        ));
    }

    #[test]
    fn boot_params_for_an_elf() {
        let m = mem(128 << 20);
        let map = e820_map(&m).unwrap();
        write_boot_params(&m, None, &spec("console=ttyS0"), &map).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ bp.hdr.header }, 0x5372_6448);
        assert_eq!({ bp.hdr.boot_flag }, 0xaa55);
        assert_eq!(bp.hdr.type_of_loader, 0xff);
        assert_eq!({ bp.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ bp.hdr.cmdline_size }, 13);
        assert_eq!({ bp.hdr.ramdisk_image }, 0x3000_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 0x1234);
        assert_eq!(bp.e820_entries, 3);
        let e2 = bp.e820_table[2];
        assert_eq!(
            ({ e2.addr }, { e2.size }, { e2.r#type }),
            (0x100000, (127 << 20), 1)
        );
        // The raw bytes where boot.rst puts them.
        let mut raw = vec![0u8; 4096];
        m.read_slice(&mut raw, GuestAddress(ZERO_PAGE_START))
            .unwrap();
        assert_eq!(&raw[0x202..0x206], b"HdrS");
        assert_eq!(raw[0x1e8], 3); // e820_entries
        assert_eq!(raw[0x210], 0xff); // type_of_loader
        assert_eq!(&raw[0x228..0x22c], &0x20000u32.to_le_bytes()); // cmd_line_ptr
        assert_eq!(&raw[0x218..0x21c], &0x3000_0000u32.to_le_bytes()); // ramdisk_image
        assert_eq!(&raw[0x2d0 + 20..0x2d0 + 28], &0x9fc00u64.to_le_bytes()); // e820[1].addr
    }

    #[test]
    fn boot_params_keep_the_bzimage_header() {
        let m = mem(128 << 20);
        let hdr = setup_header {
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x100000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        write_boot_params(&m, Some(&hdr), &spec("x"), &e820_map(&m).unwrap()).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(
            ({ bp.hdr.version }, { bp.hdr.code32_start }),
            (0x020f, 0x100000)
        );
        assert_eq!(
            { bp.hdr.cmdline_size },
            2047,
            "the kernel's limit, not ours"
        );
        assert_eq!(
            (bp.hdr.type_of_loader, { bp.hdr.ramdisk_image }),
            (0xff, 0x3000_0000)
        );
        // An initrd above initrd_addr_max is refused.
        let low = setup_header {
            initrd_addr_max: 0x2fff_ffff,
            ..hdr
        };
        let e = write_boot_params(&m, Some(&low), &spec("x"), &[]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InitrdTooHigh {
                    max: 0x2fff_ffff,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn pvh_start_info_and_memmap() {
        let m = mem_with_gap(5 << 30);
        let map = e820_map(&m).unwrap();
        write_pvh_start_info(&m, &spec(""), &map).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.magic, info.version), (0x336e_c578, 1));
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        assert_eq!(
            (info.memmap_paddr, info.memmap_entries),
            (PVH_MEMMAP_START, 4)
        );
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x3000_0000, 0x1234));
        for (i, want) in map.iter().enumerate() {
            let at = GuestAddress(PVH_MEMMAP_START + 24 * i as u64);
            let got: hvm_memmap_table_entry = m.read_obj(at).unwrap();
            assert_eq!(
                (got.addr, got.size, got.type_),
                (want.addr, want.size, want.kind)
            );
        }
        // Without an initrd there is no module.
        let m = mem(64 << 20);
        let none = BootSpec {
            cmdline: "",
            vcpus: 1,
            initrd: None,
        };
        write_pvh_start_info(&m, &none, &e820_map(&m).unwrap()).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(
            (info.nr_modules, info.modlist_paddr, info.memmap_entries),
            (0, 0, 3)
        );
    }

    #[test]
    fn cmdline_is_nul_terminated_and_bounded() {
        let m = mem(16 << 20);
        write_cmdline(&m, "console=ttyS0 quiet", None).unwrap();
        let mut back = [0xffu8; 20];
        m.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0 quiet\0");
        write_cmdline(&m, &"a".repeat(CMDLINE_MAX - 1), None).unwrap();
        let e = write_cmdline(&m, &"a".repeat(CMDLINE_MAX), None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::CmdlineTooLong {
                    len: 4096,
                    max: 4095
                }
            ),
            "{e}"
        );
        // A bzImage's cmdline_size is the tighter limit.
        let hdr = setup_header {
            version: 0x020f,
            cmdline_size: 10,
            ..Default::default()
        };
        let e = write_cmdline(&m, "0123456789a", Some(&hdr)).unwrap_err();
        assert!(
            matches!(e, Error::CmdlineTooLong { len: 11, max: 10 }),
            "{e}"
        );
        assert!(matches!(
            write_cmdline(&m, "a\0b", None),
            Err(Error::CmdlineNul)
        ));
    }
}
