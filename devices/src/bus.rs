//! A bus: non-overlapping address ranges, each mapped to one device.
//!
//! The VMM owns two: one for port I/O (addresses are port numbers, 0..=0xffff) and one for
//! MMIO (guest-physical addresses). vCPU threads share them read-only (`Arc<Bus>`) and call
//! [`Bus::read`] / [`Bus::write`] on `KVM_EXIT_IO` / `KVM_EXIT_MMIO`; each device sits behind
//! its own mutex, so two vCPUs only contend when they touch the same device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Error, Result};

/// A device on a [`Bus`]. Offsets are relative to the base the device was inserted at;
/// `data.len()` is the access width in bytes (1, 2, 4 or 8 for what x86 guests issue).
/// Implementations must tolerate any offset inside their range and any width: the guest
/// chooses both.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; fill `data` (little-endian).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` (little-endian) at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges `[base, base + len)` mapped to devices; ranges never overlap.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
    unmapped: AtomicU64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` (bytes, or ports on the I/O bus) to `device`.
    ///
    /// # Errors
    /// [`Error::BusRange`] when `len` is 0 or the range wraps past `u64::MAX`;
    /// [`Error::BusOverlap`] when any address of the range already belongs to a device.
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<()> {
        let last = len
            .checked_sub(1)
            .and_then(|l| base.checked_add(l))
            .ok_or(Error::BusRange { base, len })?;
        // The only candidate for an overlap is the device with the highest base <= last.
        if let Some((&other_base, other)) = self.entries.range(..=last).next_back() {
            // `other.len >= 1` and `other_base + other.len - 1` cannot wrap: checked on insert.
            if other_base + (other.len - 1) >= base {
                return Err(Error::BusOverlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds `addr`, and `addr`'s offset from that range's base.
    pub fn get(&self, addr: u64) -> Option<(&Arc<Mutex<dyn BusDevice>>, u64)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((&entry.device, offset))
    }

    /// The device and offset for an access of `len` bytes at `addr`, if all of it falls in
    /// one device's range.
    fn resolve(&self, addr: u64, len: usize) -> Option<(&Arc<Mutex<dyn BusDevice>>, u64)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(len as u64)?;
        (end <= entry.len).then_some((&entry.device, offset))
    }

    /// Dispatches a guest read of `data.len()` bytes at `addr`. Returns false when no device
    /// covers the whole access; `data` is then zero-filled (and the miss counted).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0);
                self.miss(addr, data.len(), "read");
                false
            }
        }
    }

    /// Dispatches a guest write of `data` at `addr`. Returns false (and counts the miss)
    /// when no device covers the whole access; the write is then dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => {
                self.miss(addr, data.len(), "write");
                false
            }
        }
    }

    /// How many accesses hit no device (or straddled a device's end) so far.
    pub fn unmapped_accesses(&self) -> u64 {
        self.unmapped.load(Ordering::Relaxed)
    }

    fn miss(&self, addr: u64, len: usize, what: &str) {
        self.unmapped.fetch_add(1, Ordering::Relaxed);
        tracing::trace!("unmapped {what} of {len} bytes at {addr:#x}");
    }
}

/// Locks a device. A device whose lock was poisoned (a panic on another vCPU thread) keeps
/// serving: its state is plain registers, and the VM is ending anyway.
fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access; reads return the offset's low byte.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn lookup_returns_device_and_offset() {
        let mut bus = Bus::new();
        let a = probe();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(probe(), 0x60, 5).unwrap();
        assert_eq!(bus.get(0x3f8).unwrap().1, 0);
        assert_eq!(bus.get(0x3ff).unwrap().1, 7);
        assert!(bus.get(0x400).is_none());
        assert!(bus.get(0x3f7).is_none());
        assert_eq!(bus.get(0x64).unwrap().1, 4);

        let mut data = [0xaa; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((1, vec![7])));
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x1000, 0x1000).unwrap();
        for (base, len) in [(0x1000, 1), (0xfff, 2), (0x1fff, 0x10), (0x800, 0x2000)] {
            assert!(
                matches!(
                    bus.insert(probe(), base, len),
                    Err(Error::BusOverlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert(probe(), 0x5000, 0),
            Err(Error::BusRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), u64::MAX, 2),
            Err(Error::BusRange { .. })
        ));
        // Adjacent ranges on both sides are fine, and so is the very top of the space.
        bus.insert(probe(), 0xfff, 1).unwrap();
        bus.insert(probe(), 0x2000, 1).unwrap();
        bus.insert(probe(), u64::MAX, 1).unwrap();
        assert_eq!(bus.get(u64::MAX).unwrap().1, 0);
    }

    #[test]
    fn unmapped_and_straddling_accesses_are_counted() {
        let mut bus = Bus::new();
        bus.insert(probe(), 0x10, 4).unwrap();
        let mut data = [0xff; 4];
        assert!(!bus.read(0x100, &mut data));
        assert_eq!(data, [0; 4]);
        // Starts inside, ends past the device.
        assert!(!bus.write(0x12, &[1, 2, 3, 4]));
        assert!(bus.read(0x10, &mut data));
        assert_eq!(bus.unmapped_accesses(), 2);
    }
}
