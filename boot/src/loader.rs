//! Kernel and initrd loading: tells an ELF vmlinux from a bzImage, lets linux-loader copy it
//! into guest memory, and decides the entry protocol; places the initrd.
//!
//! The format checks follow boot.rst ("The real-mode kernel header", "64-bit boot protocol")
//! and the PVH ABI (`XEN_ELFNOTE_PHYS32_ENTRY`, which linux-loader finds for us).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use crate::layout::{HIMEM_START, INITRD_ADDR_MAX};
use crate::{Error, LoadedKernel, Protocol, Result};

/// Where the setup header starts in a bzImage (boot.rst: offset 0x1f1 of the real-mode code).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Bytes we read from the front of the image: enough for the whole setup header.
const HEAD_LEN: usize = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
/// boot.rst: the magic `HdrS` at 0x202 marks a setup header (protocol >= 2.00).
const HDRS_OFFSET: usize = 0x202;
const HDRS: &[u8; 4] = b"HdrS";
/// boot.rst: the 64-bit entry and `xloadflags` exist from protocol 2.12.
const MIN_PROTOCOL_64BIT: u16 = 0x020c;
/// boot.rst: "the 64-bit entry is at the loaded address + 0x200" (startup_64).
const STARTUP_64_OFFSET: u64 = 0x200;
/// The identity map [`crate::paging`] builds covers the first 1 GiB: a 64-bit entry must be in it.
const IDENTITY_MAPPED_END: u64 = 1 << 30;
/// e_ident[EI_CLASS] of a 64-bit ELF, and e_machine of x86-64.
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
const PAGE_SIZE: u64 = 0x1000;

/// Loads an ELF vmlinux or a bzImage into guest memory and picks the entry protocol.
///
/// - ELF (`\x7fELF`, 64-bit, x86-64): each `PT_LOAD` segment at its `p_paddr`. With a
///   `XEN_ELFNOTE_PHYS32_ENTRY` note the entry is the note's address ([`Protocol::Pvh`]),
///   else `e_entry` ([`Protocol::Linux64`]).
/// - bzImage (`HdrS` at 0x202): the protected-mode kernel at `code32_start` (0x100000),
///   entered at that address + 0x200 with [`Protocol::Linux64`]. Needs boot protocol >= 2.12,
///   `XLF_KERNEL_64` and `LOADED_HIGH`.
///
/// Guest RAM must be fresh (zeroed): an ELF segment's bss (`p_memsz` beyond `p_filesz`) is
/// not cleared here.
///
/// # Errors
/// [`Error::KernelRead`] on I/O errors, [`Error::UnknownKernelFormat`] for anything else
/// (garbage, empty file), [`Error::UnsupportedKernel`] for a 32-bit or non-x86 ELF, an old or
/// 32-bit-only bzImage or an entry outside what our page tables map, [`Error::KernelLoad`]
/// when linux-loader rejects the image or it does not fit in guest RAM above
/// [`HIMEM_START`].
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel> {
    kernel.rewind().map_err(Error::KernelRead)?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut *kernel)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(Error::KernelRead)?;
    if head.starts_with(b"\x7fELF") {
        load_elf(mem, kernel, &head)
    } else if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS.as_slice()) {
        load_bzimage(mem, kernel, &head)
    } else {
        Err(Error::UnknownKernelFormat)
    }
}

fn load_elf(mem: &GuestMemoryMmap, kernel: &mut File, head: &[u8]) -> Result<LoadedKernel> {
    // linux-loader reads any ELF as ELF64; refuse what would be misread.
    let machine = head.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if head.get(4) != Some(&ELFCLASS64) || machine != Some(EM_X86_64) {
        return Err(Error::UnsupportedKernel("not a 64-bit x86-64 ELF".into()));
    }
    let res =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(Error::KernelLoad)?;
    check_in_ram(mem, res.kernel_load.raw_value(), res.kernel_end)?;
    let (entry, protocol) = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (addr, Protocol::Pvh),
        _ => (res.kernel_load, Protocol::Linux64),
    };
    if protocol == Protocol::Linux64 && entry.raw_value() >= IDENTITY_MAPPED_END {
        return Err(Error::UnsupportedKernel(format!(
            "64-bit entry {:#x} is above the 1 GiB identity map",
            entry.raw_value()
        )));
    }
    Ok(LoadedKernel {
        entry,
        protocol,
        kernel_end: GuestAddress(res.kernel_end),
        setup_header: None,
    })
}

fn load_bzimage(mem: &GuestMemoryMmap, kernel: &mut File, head: &[u8]) -> Result<LoadedKernel> {
    let raw = head
        .get(SETUP_HEADER_OFFSET..HEAD_LEN)
        .ok_or_else(|| Error::UnsupportedKernel("bzImage setup header is truncated".into()))?;
    let mut hdr = setup_header::default();
    hdr.as_mut_slice().copy_from_slice(raw);
    // Copies, not references: setup_header is packed.
    let (version, xloadflags, loadflags) = (hdr.version, hdr.xloadflags, hdr.loadflags);
    if version < MIN_PROTOCOL_64BIT {
        return Err(Error::UnsupportedKernel(format!(
            "bzImage boot protocol {}.{:02} is older than 2.12 (no 64-bit entry)",
            version >> 8,
            version & 0xff
        )));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::UnsupportedKernel(
            "bzImage has no 64-bit entry (XLF_KERNEL_64 clear)".into(),
        ));
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err(Error::UnsupportedKernel(
            "bzImage is a zImage (LOADED_HIGH clear)".into(),
        ));
    }
    let res = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(Error::KernelLoad)?;
    let load = res.kernel_load.raw_value();
    let entry = load + STARTUP_64_OFFSET;
    if entry >= IDENTITY_MAPPED_END {
        return Err(Error::UnsupportedKernel(format!(
            "bzImage code32_start {load:#x} is above the 1 GiB identity map"
        )));
    }
    let hdr = res.setup_header.unwrap_or(hdr);
    Ok(LoadedKernel {
        entry: GuestAddress(entry),
        protocol: Protocol::Linux64,
        kernel_end: GuestAddress(decompressed_end(&hdr, load, res.kernel_end)),
        setup_header: Some(hdr),
    })
}

/// First byte past what a bzImage occupies once it runs. The decompressor (without KASLR)
/// writes the kernel at `max(load, pref_address)` rounded up to `kernel_alignment`, and uses
/// `init_size` bytes from there (boot.rst, protocol 2.10 fields), which reaches far beyond the
/// compressed image we copied; the initrd must stay clear of all of it.
fn decompressed_end(hdr: &setup_header, load: u64, loaded_end: u64) -> u64 {
    let (pref, align, init) = (hdr.pref_address, hdr.kernel_alignment, hdr.init_size);
    let mut base = load.max(pref);
    if align.is_power_of_two() {
        base = base
            .checked_next_multiple_of(u64::from(align))
            .unwrap_or(u64::MAX);
    }
    loaded_end.max(base.saturating_add(u64::from(init)))
}

/// Checks that `[start, end)` (an ELF's extent, bss included) is guest RAM: linux-loader only
/// checks the bytes it copies.
fn check_in_ram(mem: &GuestMemoryMmap, start: u64, end: u64) -> Result<()> {
    let len = end.checked_sub(start).and_then(|l| usize::try_from(l).ok());
    match len {
        Some(len) if mem.check_range(GuestAddress(start), len) => Ok(()),
        _ => Err(Error::KernelLoad(loader::Error::MemoryOverflow)),
    }
}

/// Copies the initrd into guest RAM, page-aligned, as high as it goes: below
/// [`INITRD_ADDR_MAX`] (1 GiB) and the end of the RAM region above the kernel, and at or
/// above `kernel_end` (rounded up to a page). Returns its guest-physical address and size in
/// bytes, for [`crate::BootSpec::initrd`].
///
/// High, because that keeps it out of the way of the kernel's own early allocations (what
/// bootloaders do too); below 1 GiB, because that is inside every x86-64 kernel's
/// `initrd_addr_max`.
///
/// # Errors
/// [`Error::InitrdRead`] when the file cannot be read, [`Error::InitrdTooBig`] when it does
/// not fit, [`Error::GuestMemory`] when copying it into guest memory fails.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel_end: GuestAddress,
) -> Result<(GuestAddress, u64)> {
    let size = initrd.seek(SeekFrom::End(0)).map_err(Error::InitrdRead)?;
    initrd.rewind().map_err(Error::InitrdRead)?;
    let low = kernel_end
        .raw_value()
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    let high = mem
        .find_region(GuestAddress(low))
        .map(|r| (r.last_addr().raw_value() + 1).min(INITRD_ADDR_MAX + 1))
        .unwrap_or(low);
    let too_big = Error::InitrdTooBig { size, low, high };
    let start = match high.checked_sub(size) {
        Some(top) if top & !(PAGE_SIZE - 1) >= low => top & !(PAGE_SIZE - 1),
        _ => return Err(too_big),
    };
    let len = usize::try_from(size).map_err(|_| too_big)?;
    mem.read_exact_volatile_from(GuestAddress(start), initrd, len)
        .map_err(|source| Error::GuestMemory {
            what: "initrd",
            addr: start,
            source,
        })?;
    Ok((GuestAddress(start), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::mem as ram;
    use std::io::Write;
    use vm_memory::Bytes;

    /// A file holding `bytes`, already unlinked, positioned anywhere.
    fn file_with(bytes: &[u8]) -> File {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("skiff-boot-{}-{n}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    const CODE: [u8; 16] = *b"\x90\x90\xe6\x80skiff-kernel";
    const LOAD_ADDR: u64 = 0x10_0000;
    const PVH_ENTRY: u64 = 0x10_0004;

    /// A minimal ELF64 x86-64 executable: one PT_LOAD of [`CODE`] at [`LOAD_ADDR`] with
    /// 0x2000 bytes of memory, and when `pvh` a PT_NOTE holding a Xen PHYS32_ENTRY note.
    fn tiny_elf(pvh: bool) -> Vec<u8> {
        let phnum: u16 = if pvh { 2 } else { 1 };
        let code_off: u64 = 0x100;
        let note_off: u64 = 0x200;
        let mut f = vec![0u8; 0x220];
        let put = |f: &mut Vec<u8>, at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
        // e_ident: magic, ELFCLASS64, little-endian, version 1.
        put(&mut f, 0, b"\x7fELF\x02\x01\x01");
        put(&mut f, 16, &2u16.to_le_bytes()); // e_type: ET_EXEC
        put(&mut f, 18, &62u16.to_le_bytes()); // e_machine: x86-64
        put(&mut f, 20, &1u32.to_le_bytes()); // e_version
        put(&mut f, 24, &LOAD_ADDR.to_le_bytes()); // e_entry
        put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut f, 56, &phnum.to_le_bytes()); // e_phnum
                                               // Program header 0: PT_LOAD.
        let ph = 64;
        put(&mut f, ph, &1u32.to_le_bytes());
        put(&mut f, ph + 4, &5u32.to_le_bytes()); // R+X
        put(&mut f, ph + 8, &code_off.to_le_bytes());
        put(
            &mut f,
            ph + 16,
            &(0xffff_ffff_8000_0000 | LOAD_ADDR).to_le_bytes(),
        ); // p_vaddr
        put(&mut f, ph + 24, &LOAD_ADDR.to_le_bytes()); // p_paddr
        put(&mut f, ph + 32, &(CODE.len() as u64).to_le_bytes()); // p_filesz
        put(&mut f, ph + 40, &0x2000u64.to_le_bytes()); // p_memsz
        put(&mut f, ph + 48, &0x1000u64.to_le_bytes()); // p_align
        put(&mut f, code_off as usize, &CODE);
        if pvh {
            // Program header 1: PT_NOTE over one note: namesz 4, descsz 4, type 18, "Xen\0".
            let ph = 64 + 56;
            put(&mut f, ph, &4u32.to_le_bytes());
            put(&mut f, ph + 8, &note_off.to_le_bytes());
            put(&mut f, ph + 32, &20u64.to_le_bytes());
            put(&mut f, ph + 40, &20u64.to_le_bytes());
            put(&mut f, ph + 48, &4u64.to_le_bytes());
            let n = note_off as usize;
            put(&mut f, n, &4u32.to_le_bytes());
            put(&mut f, n + 4, &4u32.to_le_bytes());
            put(&mut f, n + 8, &18u32.to_le_bytes());
            put(&mut f, n + 12, b"Xen\0");
            put(&mut f, n + 16, &(PVH_ENTRY as u32).to_le_bytes());
        }
        f
    }

    /// A fake bzImage: boot sector + `setup_sects` setup sectors, then a 4 KiB "kernel".
    fn tiny_bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        let setup_sects = 1u8;
        let hdr = setup_header {
            setup_sects,
            boot_flag: 0xaa55,
            header: u32::from_le_bytes(*HDRS),
            version,
            loadflags: LOADED_HIGH,
            code32_start: LOAD_ADDR as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x30_0000,
            ..Default::default()
        };
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        f[SETUP_HEADER_OFFSET..HEAD_LEN].copy_from_slice(hdr.as_slice());
        let mut kernel = vec![0xccu8; 4096];
        kernel[..CODE.len()].copy_from_slice(&CODE);
        f.extend_from_slice(&kernel);
        f
    }

    fn read_code(mem: &GuestMemoryMmap) -> [u8; 16] {
        mem.read_obj(GuestAddress(LOAD_ADDR)).unwrap()
    }

    #[test]
    fn header_offsets_match_boot_rst() {
        let img = tiny_bzimage(0x020f, XLF_KERNEL_64);
        assert_eq!(&img[0x202..0x206], b"HdrS");
        assert_eq!(u16::from_le_bytes([img[0x206], img[0x207]]), 0x020f);
        assert_eq!(u16::from_le_bytes([img[0x1fe], img[0x1ff]]), 0xaa55);
        assert_eq!(img[0x236], XLF_KERNEL_64 as u8);
        assert_eq!(
            u32::from_le_bytes(img[0x260..0x264].try_into().unwrap()),
            0x30_0000
        );
    }

    #[test]
    fn elf_without_note_is_linux64_at_e_entry() {
        let mem = ram(32 << 20);
        let k = load_kernel(&mem, &mut file_with(&tiny_elf(false))).unwrap();
        assert_eq!(k.protocol, Protocol::Linux64);
        assert_eq!(k.entry, GuestAddress(LOAD_ADDR));
        assert_eq!(k.kernel_end, GuestAddress(LOAD_ADDR + 0x2000));
        assert!(k.setup_header.is_none());
        assert_eq!(read_code(&mem), CODE);
    }

    #[test]
    fn elf_with_pvh_note_is_pvh_at_the_note() {
        let mem = ram(32 << 20);
        let k = load_kernel(&mem, &mut file_with(&tiny_elf(true))).unwrap();
        assert_eq!(k.protocol, Protocol::Pvh);
        assert_eq!(k.entry, GuestAddress(PVH_ENTRY));
        assert_eq!(read_code(&mem), CODE);
    }

    #[test]
    fn elf_that_is_not_x86_64_or_does_not_fit_is_refused() {
        let mem = ram(32 << 20);
        let mut elf = tiny_elf(false);
        elf[4] = 1; // ELFCLASS32
        let e = load_kernel(&mem, &mut file_with(&elf)).unwrap_err();
        assert!(matches!(e, Error::UnsupportedKernel(_)), "{e}");
        let mut elf = tiny_elf(false);
        elf[54] = 32; // e_phentsize
        let e = load_kernel(&mem, &mut file_with(&elf)).unwrap_err();
        assert!(matches!(e, Error::KernelLoad(_)), "{e}");
        // bss reaching past the end of RAM.
        let mut elf = tiny_elf(false);
        elf[64 + 40..64 + 48].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let e = load_kernel(&mem, &mut file_with(&elf)).unwrap_err();
        assert!(matches!(e, Error::KernelLoad(_)), "{e}");
        // Truncated: header only, program headers past the end of the file.
        let e = load_kernel(&mem, &mut file_with(&tiny_elf(false)[..64])).unwrap_err();
        assert!(matches!(e, Error::KernelLoad(_)), "{e}");
    }

    #[test]
    fn bzimage_is_linux64_at_load_plus_0x200() {
        let mem = ram(64 << 20);
        let k = load_kernel(&mem, &mut file_with(&tiny_bzimage(0x020f, XLF_KERNEL_64))).unwrap();
        assert_eq!(k.protocol, Protocol::Linux64);
        assert_eq!(k.entry, GuestAddress(LOAD_ADDR + 0x200));
        // pref_address 16 MiB + init_size 3 MiB, far beyond the 4 KiB copied.
        assert_eq!(k.kernel_end, GuestAddress(0x130_0000));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.code32_start }, LOAD_ADDR as u32);
        assert_eq!(read_code(&mem), CODE);
    }

    #[test]
    fn old_or_32_bit_bzimage_is_refused() {
        let mem = ram(64 << 20);
        for img in [tiny_bzimage(0x020b, XLF_KERNEL_64), tiny_bzimage(0x020f, 0)] {
            let e = load_kernel(&mem, &mut file_with(&img)).unwrap_err();
            assert!(matches!(e, Error::UnsupportedKernel(_)), "{e}");
        }
        // Setup sectors claimed beyond the end of the file.
        let mut img = tiny_bzimage(0x020f, XLF_KERNEL_64);
        img[SETUP_HEADER_OFFSET] = 100;
        let e = load_kernel(&mem, &mut file_with(&img)).unwrap_err();
        assert!(matches!(e, Error::KernelLoad(_)), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mem = ram(16 << 20);
        let garbage: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let short_bz = tiny_bzimage(0x020f, 1);
        let cases: [&[u8]; 4] = [&garbage, &[], b"\x7fEL", &short_bz[..0x210]];
        for bytes in cases {
            assert!(load_kernel(&mem, &mut file_with(bytes)).is_err());
        }
        let e = load_kernel(&mem, &mut file_with(&garbage)).unwrap_err();
        assert!(matches!(e, Error::UnknownKernelFormat), "{e}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = ram(128 << 20);
        let data = vec![0x5au8; 10_000];
        let (addr, size) =
            load_initrd(&mem, &mut file_with(&data), GuestAddress(0x200_0000)).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr.raw_value() % PAGE_SIZE, 0);
        assert!(addr.raw_value() + size <= 128 << 20);
        assert!(addr.raw_value() + size + PAGE_SIZE > 128 << 20);
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn initrd_stays_below_1_gib_in_big_guests() {
        let mem = crate::test_util::mem_with_gap(5 << 30);
        let (addr, size) =
            load_initrd(&mem, &mut file_with(&[1; 4096]), GuestAddress(0x200_0000)).unwrap();
        assert_eq!(addr.raw_value() + size, INITRD_ADDR_MAX + 1);
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let mem = ram(16 << 20);
        // 8 MiB of RAM above a kernel ending at 8 MiB: 8 MiB + 1 byte does not fit.
        let big = vec![0u8; (8 << 20) + 1];
        let e = load_initrd(&mem, &mut file_with(&big), GuestAddress(8 << 20)).unwrap_err();
        assert!(
            matches!(e, Error::InitrdTooBig { size, .. } if size == (8 << 20) + 1),
            "{e}"
        );
        let fits = vec![0u8; 8 << 20];
        let (addr, _) = load_initrd(&mem, &mut file_with(&fits), GuestAddress(8 << 20)).unwrap();
        assert_eq!(addr, GuestAddress(8 << 20));
        // A kernel ending beyond RAM leaves no room at all.
        let e = load_initrd(&mem, &mut file_with(&[0; 16]), GuestAddress(1 << 30)).unwrap_err();
        assert!(matches!(e, Error::InitrdTooBig { .. }), "{e}");
    }

    /// The kernel resources/ builds, when it has been built: the vmlinux has the PVH note,
    /// the bzImage speaks protocol >= 2.12.
    #[test]
    fn real_guest_kernel_when_built() {
        let home = std::env::var_os("HOME").unwrap_or_default();
        let root = std::path::Path::new(&home).join(".cache/skiff/guest");
        let dir = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|d| d.join("vmlinux").is_file() && d.join("bzImage").is_file());
        let Some(dir) = dir else {
            eprintln!(
                "skipped: no vmlinux + bzImage under {} (build resources/ first)",
                root.display()
            );
            return;
        };
        let mem = ram(256 << 20);
        let mut f = File::open(dir.join("vmlinux")).unwrap();
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.protocol, Protocol::Pvh, "{}", dir.display());
        assert!(k.entry.raw_value() >= HIMEM_START && k.entry < k.kernel_end);
        let mem = ram(256 << 20);
        let mut f = File::open(dir.join("bzImage")).unwrap();
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.protocol, Protocol::Linux64);
        assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
        assert!({ k.setup_header.unwrap().version } >= MIN_PROTOCOL_64BIT);
        if let Ok(mut initrd) = File::open(dir.join("initramfs.cpio.gz")) {
            let (addr, _) = load_initrd(&mem, &mut initrd, k.kernel_end).unwrap();
            assert!(addr >= k.kernel_end);
        }
    }
}
