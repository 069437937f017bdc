//! Kernel loading and the x86-64 boot protocol for skiff guests.
//!
//! The VMM calls, in order:
//! 1. [`load_kernel`]: an ELF vmlinux or a bzImage into guest memory, which also decides the
//!    entry protocol ([`Protocol::Pvh`] or [`Protocol::Linux64`]);
//! 2. [`load_initrd`] when there is one;
//! 3. [`configure_memory`]: everything the guest reads at entry (command line, MP table,
//!    zero page or PVH start_info with the e820 map, GDT, IDT, page tables);
//! 4. [`boot_regs`], [`configure_sregs`], [`boot_fpu`], [`boot_msrs`] for the boot vCPU
//!    (the others wait for INIT/SIPI from the guest, through the in-kernel LAPIC).
//!
//! The specs followed: the Linux x86 boot protocol (`Documentation/arch/x86/boot.rst`, its
//! "64-bit boot protocol" section for [`Protocol::Linux64`]), Xen's PVH start of day
//! (`xen/include/public/arch-x86/hvm/start_info.h`, and `docs/misc/pvh.pandoc`), and the
//! Intel MultiProcessor Specification 1.4.
//!
//! Where each part lives: [`layout`] (addresses), `loader` (kernel and initrd), `params`
//! (zero page, e820, PVH start_info), `mptable`, `paging` (page tables and GDT), `regs`
//! (vCPU registers).

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{GuestAddress, GuestMemoryError, GuestMemoryMmap};

pub mod layout;
mod loader;
mod mptable;
mod paging;
mod params;
mod regs;

pub use loader::{load_initrd, load_kernel};
pub use regs::{boot_fpu, boot_msrs, boot_regs, configure_sregs};

/// Everything that can go wrong while loading a kernel or preparing the guest's boot state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the kernel image file failed (I/O error before a loader ran).
    #[error("reading the kernel image: {0}")]
    KernelRead(#[source] std::io::Error),
    /// The kernel image starts with neither `\x7fELF` nor has `HdrS` at offset 0x202.
    #[error("the kernel image is neither an ELF vmlinux nor a bzImage (no \"HdrS\" at 0x202)")]
    UnknownKernelFormat,
    /// The image is an ELF or bzImage we cannot boot: the reason says which check failed.
    #[error("unsupported kernel image: {0}")]
    UnsupportedKernel(String),
    /// linux-loader refused the image or could not copy it into guest memory (e.g. a segment
    /// outside guest RAM, or below [`layout::HIMEM_START`]).
    #[error("loading the kernel image: {0}")]
    KernelLoad(#[source] linux_loader::loader::Error),
    /// Reading the initrd file failed, or copying it into guest memory did.
    #[error("reading the initrd: {0}")]
    InitrdRead(#[source] std::io::Error),
    /// The initrd does not fit in RAM between the kernel's end and the highest address it may
    /// occupy (bytes).
    #[error(
        "the initrd ({size} bytes) does not fit between the kernel's end {low:#x} and {high:#x}"
    )]
    InitrdTooBig {
        /// Size of the initrd in bytes.
        size: u64,
        /// Lowest address it could start at (the kernel's end, page-aligned).
        low: u64,
        /// Address (exclusive) it must end below.
        high: u64,
    },
    /// The initrd ends above the bzImage's `initrd_addr_max`.
    #[error("the initrd ends at {end:#x}, above the kernel's initrd_addr_max {max:#x}")]
    InitrdTooHigh {
        /// Last byte of the initrd.
        end: u64,
        /// The kernel's limit (inclusive).
        max: u64,
    },
    /// The command line is longer (bytes, without the NUL) than the kernel or our buffer takes.
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The longest accepted, in bytes.
        max: usize,
    },
    /// The command line contains a NUL byte, which would cut it short.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The MP table cannot describe this machine (vCPU count out of range).
    #[error("MP table: {0}")]
    MpTable(String),
    /// Guest memory does not have the shape the boot layout needs (RAM from 0 past 1 MiB).
    #[error("guest memory layout: {0}")]
    MemoryLayout(String),
    /// Writing a boot structure into guest memory failed.
    #[error("writing the {what} at guest address {addr:#x}: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Guest-physical address it was written to.
        addr: u64,
        /// The vm-memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = [`layout::PVH_INFO_START`]
    /// (`hvm_start_info`). Chosen for an ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    Pvh,
    /// Linux 64-bit boot protocol: long mode on identity-mapped page tables, `%rsi` =
    /// [`layout::ZERO_PAGE_START`] (`boot_params`). Chosen for an ELF without the PVH note
    /// (entry `e_entry`) and for a bzImage (entry = load address + 0x200).
    Linux64,
}

/// What [`load_kernel`] put in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Guest-physical address of the first instruction.
    pub entry: GuestAddress,
    /// The entry protocol the vCPU state must follow.
    pub protocol: Protocol,
    /// First guest-physical byte past the kernel, including (for a bzImage) the room its
    /// decompressor will use (`init_size`); the initrd goes above this.
    pub kernel_end: GuestAddress,
    /// The bzImage's setup header (boot.rst), to be copied into the zero page; `None` for ELF.
    pub setup_header: Option<setup_header>,
}

/// What the VMM wants the guest to be told at boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSpec<'a> {
    /// Kernel command line, without the NUL (which we add).
    pub cmdline: &'a str,
    /// Number of vCPUs, 1..=254 (the MP table gives each an APIC ID; the IOAPIC takes the next).
    pub vcpus: u8,
    /// Guest-physical address and size in bytes of the initrd, as [`load_initrd`] returned.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Writes everything the guest finds in memory at entry.
///
/// - the command line at [`layout::CMDLINE_START`], NUL-terminated;
/// - the MP table for `spec.vcpus` CPUs at [`layout::MPTABLE_START`] (Intel MP spec 1.4);
/// - for [`Protocol::Linux64`]: the zero page at [`layout::ZERO_PAGE_START`] (the bzImage's
///   setup header, or a fresh one for an ELF) with the e820 map, and identity page tables for
///   the first 1 GiB (2 MiB pages) at [`layout::PML4_START`];
/// - for [`Protocol::Pvh`]: `hvm_start_info` at [`layout::PVH_INFO_START`] with the initrd as
///   module 0 and the memory map;
/// - the GDT at [`layout::BOOT_GDT_START`] and a null IDT at [`layout::BOOT_IDT_START`].
///
/// The e820 map: RAM `[0, EBDA_START)`, reserved `[EBDA_START, HIMEM_START)`, then RAM for the
/// rest of each guest memory region (so RAM above the MMIO gap is its own entry).
///
/// # Errors
/// [`Error::CmdlineTooLong`] / [`Error::CmdlineNul`], [`Error::MpTable`] for a vCPU count
/// outside 1..=254, [`Error::MemoryLayout`] when guest RAM does not start at 0 and reach past
/// 1 MiB, [`Error::InitrdTooHigh`] when the initrd ends above a bzImage's `initrd_addr_max`,
/// [`Error::GuestMemory`] when a write fails.
pub fn configure_memory(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    spec: &BootSpec,
) -> Result<()> {
    let e820 = params::e820_map(mem)?;
    params::write_cmdline(mem, spec.cmdline, kernel.setup_header.as_ref())?;
    mptable::write(mem, spec.vcpus)?;
    paging::write_gdt(mem, kernel.protocol)?;
    match kernel.protocol {
        Protocol::Linux64 => {
            paging::write_page_tables(mem)?;
            params::write_boot_params(mem, kernel.setup_header.as_ref(), spec, &e820)?;
        }
        Protocol::Pvh => params::write_pvh_start_info(mem, spec, &e820)?,
    }
    Ok(())
}

/// Shared by the unit tests of every module.
#[cfg(test)]
pub(crate) mod test_util {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// `size` bytes of RAM from 0 (must stay below the MMIO gap).
    pub fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// RAM the way the VMM lays out `total` bytes above the gap: `[0, MMIO_GAP_START)` and the
    /// rest from 4 GiB. Mapped lazily, so 4+ GiB costs only the pages a test touches.
    pub fn mem_with_gap(total: u64) -> GuestMemoryMmap {
        use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (total - MMIO_GAP_START) as usize,
            ),
        ])
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;
    use vm_memory::Bytes;

    fn elf_kernel(protocol: Protocol) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol,
            kernel_end: GuestAddress(0x200_0000),
            setup_header: None,
        }
    }

    #[test]
    fn linux64_writes_everything() {
        let mem = test_util::mem(128 << 20);
        let spec = BootSpec {
            cmdline: "console=ttyS0",
            vcpus: 2,
            initrd: None,
        };
        configure_memory(&mem, &elf_kernel(Protocol::Linux64), &spec).unwrap();
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        assert_eq!(
            mem.read_obj::<[u8; 4]>(GuestAddress(MPTABLE_START))
                .unwrap(),
            *b"_MP_"
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x202))
                .unwrap(),
            0x5372_6448
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            PDPTE_START | 3
        );
        assert_ne!(
            mem.read_obj::<u64>(GuestAddress(BOOT_GDT_START + 16))
                .unwrap(),
            0
        );
    }

    #[test]
    fn pvh_writes_start_info_and_no_zero_page() {
        let mem = test_util::mem(128 << 20);
        let spec = BootSpec {
            cmdline: "",
            vcpus: 1,
            initrd: None,
        };
        configure_memory(&mem, &elf_kernel(Protocol::Pvh), &spec).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(PVH_INFO_START)).unwrap(),
            0x336e_c578
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x202))
                .unwrap(),
            0
        );
    }

    #[test]
    fn errors_say_what_happened() {
        let mem = test_util::mem(128 << 20);
        let long = "x".repeat(CMDLINE_MAX);
        let spec = BootSpec {
            cmdline: &long,
            vcpus: 1,
            initrd: None,
        };
        let e = configure_memory(&mem, &elf_kernel(Protocol::Linux64), &spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the kernel command line is 4096 bytes; at most 4095 fit"
        );
        let spec = BootSpec {
            cmdline: "",
            vcpus: 0,
            initrd: None,
        };
        let e = configure_memory(&mem, &elf_kernel(Protocol::Linux64), &spec).unwrap_err();
        assert!(matches!(e, Error::MpTable(_)), "{e}");
    }
}
