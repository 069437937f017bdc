//! Guest memory: one memfd, mapped as the guest's RAM below the MMIO gap and above 4 GiB.
//!
//! A memfd (not anonymous memory) so that the same pages can later be shared with another
//! process (a vhost-user backend) by passing the descriptor.

use std::fs::File;
use std::os::fd::FromRawFd;

use boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::Error;

/// The guest-physical ranges RAM of `size` bytes occupies: below the MMIO gap, the rest
/// from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Creates `size` bytes of guest RAM backed by a memfd.
///
/// # Errors
/// [`Error::Memory`] when the memfd cannot be made or mapped.
pub fn create(size: u64) -> Result<(GuestMemoryMmap, File), Error> {
    let name = c"skiff-guest-ram";
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("memfd of {size} bytes: {e}")))?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (base, len) in ram_ranges(size) {
        let f = file
            .try_clone()
            .map_err(|e| Error::Memory(format!("memfd: {e}")))?;
        let r = GuestRegionMmap::from_range(base, len as usize, Some(FileOffset::new(f, offset)))
            .map_err(|e| Error::Memory(format!("map {len} bytes at {base:?}: {e}")))?;
        regions.push(r);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| Error::Memory(format!("guest memory: {e}")))?;
    Ok((mem, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn splits_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn memory_is_usable() {
        let (mem, _f) = create(16 << 20).unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.num_regions(), 1);
    }
}
