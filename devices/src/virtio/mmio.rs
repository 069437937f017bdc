//! The virtio-mmio transport, virtio 1.2 §4.2.2 (register layout version 2 only; the legacy
//! version-1 registers GuestPageSize, QueueAlign and QueuePFN are not implemented).
//!
//! One [`MmioTransport`] is one [`MMIO_SIZE`]-byte window on the MMIO bus wrapping one
//! [`VirtioDevice`]. It implements the device-status state machine of §2.1 and §3.1.1:
//!
//! ```text
//! 0 ─ACKNOWLEDGE─▶ 1 ─DRIVER─▶ 3 ─FEATURES_OK─▶ 11 ─DRIVER_OK─▶ 15 (device activated)
//!   any state ─FAILED─▶ status|FAILED          any state ─write 0─▶ 0 (reset)
//! ```
//!
//! - FEATURES_OK is refused (the bit stays clear, as §2.2.2 has the driver check) when the
//!   driver accepted a feature the device does not offer, or did not accept
//!   VIRTIO_F_VERSION_1.
//! - Queues are configured between FEATURES_OK and DRIVER_OK; a ready queue's rings must lie
//!   in guest memory. DRIVER_OK hands copies of the queues to [`VirtioDevice::activate`];
//!   if that fails, DEVICE_NEEDS_RESET is set and a configuration-change interrupt sent.
//! - Writing 0 resets the queues, the negotiated features and the device.
//!
//! Malformed accesses never panic: registers only take aligned 32-bit accesses, the
//! configuration space (at [`CONFIG_OFFSET`]) 1-, 2-, 4- or 8-byte ones; everything else,
//! and every write the current state does not allow, is ignored and counted in
//! [`MmioStats`].
//!
//! Queue notifications: the VMM registers an ioeventfd per queue at
//! `base + `[`QUEUE_NOTIFY_OFFSET`] (4 bytes, datamatch = queue index); a QueueNotify
//! write that no ioeventfd caught reaches [`VirtioDevice::queue_notify`] through the bus.

use std::sync::Arc;

use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_mmio::*;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{InterruptKind, InterruptSignal, MmioInterrupt, VirtioDevice};
use crate::bus::BusDevice;
use crate::{Error, Result};

/// "virt" in little-endian: the MagicValue register.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The Version register: 2, the non-legacy register layout.
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register: "SKIF" in little-endian.
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"SKIF");
/// Bytes of guest-physical address space one transport occupies.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM registers the queues' ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
/// Status bits a driver may set.
const DRIVER_STATUS_BITS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
/// Reads of SHMLen/SHMBase for a shared-memory region that does not exist (§4.2.2: -1).
const NO_SHM_REGION: u32 = u32::MAX;

/// The kernel command-line entry that announces a virtio-mmio device to Linux
/// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`): `virtio_mmio.device=<size>@<base>:<irq>`, e.g.
/// `virtio_mmio.device=4K@0xd0000000:5`. `size` and `base` are in bytes, `irq` is the GSI.
pub fn cmdline_entry(base: u64, size: u64, irq: u32) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    let size = if size != 0 && size & (MIB - 1) == 0 {
        format!("{}M", size / MIB)
    } else if size != 0 && size & (KIB - 1) == 0 {
        format!("{}K", size / KIB)
    } else {
        size.to_string()
    };
    format!("virtio_mmio.device={size}@{base:#x}:{irq}")
}

/// What the transport ignored, by reason. Each counter is a number of register accesses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MmioStats {
    /// Wrong width or alignment, unknown or legacy registers, reads of write-only registers,
    /// writes to read-only ones.
    pub bad_accesses: u64,
    /// Writes the device status does not allow now: a status change that skips a step or
    /// clears bits, features written outside DRIVER..FEATURES_OK, queue fields written
    /// outside FEATURES_OK..DRIVER_OK or while the queue is ready, notifications before
    /// DRIVER_OK.
    pub out_of_order: u64,
    /// Values out of range: QueueSel past the last queue, QueueNum above QueueNumMax or not
    /// a power of 2, misaligned ring addresses, QueueReady other than 0 or 1, QueueNotify
    /// of an unknown queue.
    pub invalid_values: u64,
    /// FEATURES_OK refused: unknown features accepted, or VIRTIO_F_VERSION_1 missing.
    pub features_refused: u64,
    /// DRIVER_OK whose activation failed (rings outside guest memory, device refused).
    pub activation_failures: u64,
}

/// A virtio-mmio transport wrapping one device; a [`BusDevice`] on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver accepted a feature bit at or above 64: refused at FEATURES_OK.
    driver_features_beyond_64: bool,
    queue_sel: u32,
    status: u32,
    activated: bool,
    stats: MmioStats,
}

impl MmioTransport {
    /// A transport for `device`, which will access `mem` and interrupt through `irqfd`.
    ///
    /// # Errors
    /// [`Error::Queue`] when one of the device's queue sizes is not a power of 2 in
    /// 1..=32768.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(Error::Queue))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irqfd)),
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_sel: 0,
            status: 0,
            activated: false,
            stats: MmioStats::default(),
        })
    }

    /// The device's interrupt: its irqfd is what the VMM registers with KVM.
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// The device status register (§2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The features both sides agreed on (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// What was ignored so far.
    pub fn stats(&self) -> MmioStats {
        self.stats
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => NO_SHM_REGION,
            // Our configuration spaces never change once the device exists.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                self.stats.bad_accesses += 1;
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.queue_for_setup(true) {
                    // try_set_size refuses 0, sizes above QueueNumMax and non-powers of 2.
                    let ok = u16::try_from(value).is_ok_and(|num| q.try_set_size(num).is_ok());
                    if !ok {
                        self.stats.invalid_values += 1;
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if value > 1 {
                    self.stats.invalid_values += 1;
                } else if let Some(q) = self.queue_for_setup(false) {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.write_ring(Ring::Desc, Half::Low, value),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.write_ring(Ring::Desc, Half::High, value),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.write_ring(Ring::Avail, Half::Low, value),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.write_ring(Ring::Avail, Half::High, value),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.write_ring(Ring::Used, Half::Low, value),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_ring(Ring::Used, Half::High, value),
            // We have no shared-memory regions; selecting one is harmless.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => self.stats.bad_accesses += 1,
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (DRIVER | FEATURES_OK | FAILED) != DRIVER {
            self.stats.out_of_order += 1;
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ if value != 0 => {
                self.driver_features_beyond_64 = true;
                self.stats.invalid_values += 1;
            }
            _ => {}
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue if it may be configured now; otherwise counts why not.
    fn queue_for_setup(&mut self, idle: bool) -> Option<&mut Queue> {
        let index = self.queue_sel as usize;
        if self.status & (FEATURES_OK | DRIVER_OK | FAILED) != FEATURES_OK {
            self.stats.out_of_order += 1;
            return None;
        }
        if index >= self.queues.len() {
            self.stats.invalid_values += 1;
            return None;
        }
        if idle && self.queues[index].ready() {
            self.stats.out_of_order += 1;
            return None;
        }
        Some(&mut self.queues[index])
    }

    fn write_ring(&mut self, ring: Ring, half: Half, value: u32) {
        let Some(q) = self.queue_for_setup(true) else {
            return;
        };
        let current = match ring {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        };
        let addr = GuestAddress(match half {
            Half::Low => (current & !0xffff_ffff) | u64::from(value),
            Half::High => (current & 0xffff_ffff) | (u64::from(value) << 32),
        });
        let set = match ring {
            Ring::Desc => q.try_set_desc_table_address(addr),
            Ring::Avail => q.try_set_avail_ring_address(addr),
            Ring::Used => q.try_set_used_ring_address(addr),
        };
        if set.is_err() {
            self.stats.invalid_values += 1;
        }
    }

    fn notify(&mut self, value: u32) {
        if !self.activated {
            self.stats.out_of_order += 1;
        } else if let Some(index) = u16::try_from(value)
            .ok()
            .filter(|&i| usize::from(i) < self.queues.len())
        {
            self.device.queue_notify(index);
        } else {
            self.stats.invalid_values += 1;
        }
    }

    /// §2.1 / §3.1.1: the driver sets the status bits one step at a time; 0 resets.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let added = value & !old;
        let allowed = value & old == old // no bit cleared but by a reset
            && old & FAILED == 0 // after FAILED only a reset
            && added & !DRIVER_STATUS_BITS == 0
            && (added & DRIVER == 0 || value & ACKNOWLEDGE != 0)
            && (added & FEATURES_OK == 0 || value & DRIVER != 0)
            && (added & DRIVER_OK == 0 || value & FEATURES_OK != 0);
        if !allowed {
            self.stats.out_of_order += 1;
            tracing::debug!("virtio-mmio: status {old:#x} -> {value:#x} ignored");
            return;
        }
        if added & FEATURES_OK != 0 {
            if !self.features_acceptable() {
                self.stats.features_refused += 1;
                tracing::debug!(
                    "virtio-mmio: refusing driver features {:#x} (device offers {:#x})",
                    self.driver_features,
                    self.device.features()
                );
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        if added & DRIVER_OK != 0 && value & FAILED == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        !self.driver_features_beyond_64
            && self.driver_features & !offered == 0
            && (offered & version_1 == 0 || self.driver_features & version_1 != 0)
    }

    fn activate(&mut self) {
        match self.try_activate() {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.stats.activation_failures += 1;
                tracing::warn!(
                    "virtio-mmio: device type {} not activated: {e}",
                    self.device.device_type()
                );
                self.status |= NEEDS_RESET;
                if let Err(e) = self.interrupt.trigger(InterruptKind::ConfigChange) {
                    tracing::warn!("virtio-mmio: {e}");
                }
            }
        }
    }

    fn try_activate(&mut self) -> Result<()> {
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(Error::QueueNotReady { index });
            }
            let mut copy = Queue::try_from(q.state()).map_err(Error::Queue)?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        let interrupt: Arc<dyn InterruptSignal> = self.interrupt.clone();
        self.device.activate(self.mem.clone(), queues, interrupt)
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues.iter_mut().for_each(Queue::reset);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_sel = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.clear();
    }

    /// The register offset for an access of `len` bytes, if it is an aligned 32-bit one.
    fn register_offset(&mut self, offset: u64, len: usize) -> Option<u32> {
        if len == 4 && offset & 3 == 0 && offset < CONFIG_OFFSET {
            Some(offset as u32)
        } else {
            self.stats.bad_accesses += 1;
            None
        }
    }

    /// The configuration-space offset for an access of `len` bytes at `offset`.
    fn config_offset(&mut self, offset: u64, len: usize) -> Option<u64> {
        if matches!(len, 1 | 2 | 4 | 8) {
            Some(offset - CONFIG_OFFSET)
        } else {
            self.stats.bad_accesses += 1;
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

#[derive(Clone, Copy)]
enum Half {
    Low,
    High,
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_OFFSET {
            if let Some(off) = self.config_offset(offset, data.len()) {
                self.device.read_config(off, data);
            }
        } else if let Some(reg) = self.register_offset(offset, data.len()) {
            let value = self.read_register(reg);
            data.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if let Some(off) = self.config_offset(offset, data.len()) {
                self.device.write_config(off, data);
            }
        } else if let Some(reg) = self.register_offset(offset, data.len()) {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(data);
            self.write_register(reg, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const OFFERED: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << 5);
    const QUEUE_MAX: [u16; 2] = [16, 8];

    /// What the test device saw.
    #[derive(Default)]
    struct Log {
        acked: Option<u64>,
        activations: Vec<Vec<virtio_queue::QueueState>>,
        interrupt: Option<Arc<dyn InterruptSignal>>,
        resets: usize,
        notified: Vec<u16>,
    }

    struct TestDevice {
        log: Arc<Mutex<Log>>,
        refuse_activation: bool,
    }

    impl VirtioDevice for TestDevice {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &QUEUE_MAX
        }
        fn features(&self) -> u64 {
            OFFERED
        }
        fn ack_features(&mut self, f: u64) {
            self.log.lock().unwrap().acked = Some(f);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0xc0 + offset as u8 + i as u8;
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            interrupt: Arc<dyn InterruptSignal>,
        ) -> Result<()> {
            if self.refuse_activation {
                return Err(Error::QueueNotReady { index: 1 });
            }
            let mut log = self.log.lock().unwrap();
            log.activations
                .push(queues.iter().map(Queue::state).collect());
            log.interrupt = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
        fn queue_notify(&mut self, index: u16) {
            self.log.lock().unwrap().notified.push(index);
        }
    }

    fn transport_with(refuse_activation: bool) -> (MmioTransport, Arc<Mutex<Log>>, EventFd) {
        let log = Arc::new(Mutex::new(Log::default()));
        let dev = TestDevice {
            log: log.clone(),
            refuse_activation,
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(dev), mem, irqfd.try_clone().unwrap()).unwrap();
        (t, log, irqfd)
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>, EventFd) {
        transport_with(false)
    }

    fn rd(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(reg), &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, reg: u32, v: u32) {
        t.write(u64::from(reg), &v.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, the offered features, FEATURES_OK.
    fn negotiate(t: &mut MmioTransport) {
        wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        for sel in 0..2 {
            wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = rd(t, VIRTIO_MMIO_DEVICE_FEATURES);
            wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            wr(t, VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        wr(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            rd(t, VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
    }

    /// Queue `sel` with `num` descriptors at 0x1000 * (sel + 1) and up.
    fn setup_queue(t: &mut MmioTransport, sel: u32, num: u32) {
        let base = 0x1000 * (sel + 1) * 3;
        wr(t, VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, num);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
    }

    fn bring_up(t: &mut MmioTransport) {
        negotiate(t);
        setup_queue(t, 0, 16);
        setup_queue(t, 1, 4);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        assert_eq!(t.stats(), MmioStats::default());
    }

    #[test]
    fn device_features_by_select() {
        let (mut t, _, _) = transport();
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn negotiation_acks_features() {
        let (mut t, log, _) = transport();
        negotiate(&mut t);
        assert_eq!(log.lock().unwrap().acked, Some(OFFERED));
        assert_eq!(t.driver_features(), OFFERED);
        // Too late to change features now.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        assert_eq!(t.driver_features(), OFFERED);
        assert_eq!(t.stats().out_of_order, 1);
    }

    #[test]
    fn unknown_features_are_refused() {
        for (sel, value) in [(0u32, (1u32 << 5) | (1 << 6)), (2, 1)] {
            let (mut t, log, _) = transport();
            wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
            wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, value);
            wr(
                &mut t,
                VIRTIO_MMIO_STATUS,
                ACKNOWLEDGE | DRIVER | FEATURES_OK,
            );
            assert_eq!(
                rd(&mut t, VIRTIO_MMIO_STATUS),
                ACKNOWLEDGE | DRIVER,
                "sel {sel}"
            );
            assert_eq!(t.stats().features_refused, 1);
            assert_eq!(log.lock().unwrap().acked, None);
        }
    }

    #[test]
    fn version_1_is_required() {
        let (mut t, _, _) = transport();
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        );
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS) & FEATURES_OK, 0);
        assert_eq!(t.stats().features_refused, 1);
    }

    #[test]
    fn driver_ok_activates_with_the_configured_queues() {
        let (mut t, log, irqfd) = transport();
        bring_up(&mut t);
        assert!(t.is_activated());
        assert_eq!(t.stats(), MmioStats::default());
        let log_guard = log.lock().unwrap();
        let queues = &log_guard.activations[0];
        assert_eq!(queues.len(), 2);
        assert_eq!((queues[0].size, queues[0].ready), (16, true));
        assert_eq!(queues[0].desc_table, 0x3000);
        assert_eq!(queues[0].avail_ring, 0x4000);
        assert_eq!(queues[0].used_ring, 0x5000);
        assert_eq!((queues[1].size, queues[1].desc_table), (4, 0x6000));

        // The device's interrupt shows in InterruptStatus until acknowledged.
        let irq = log_guard.interrupt.clone().unwrap();
        drop(log_guard);
        irq.trigger(InterruptKind::UsedBuffer).unwrap();
        assert_eq!(irqfd.read().unwrap(), 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

        // A notification no ioeventfd caught reaches the device.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 2);
        assert_eq!(log.lock().unwrap().notified, vec![1]);
        assert_eq!(t.stats().invalid_values, 1);
    }

    #[test]
    fn queue_writes_after_driver_ok_are_ignored() {
        let (mut t, log, _) = transport();
        bring_up(&mut t);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(t.stats().out_of_order, 3);
        assert_eq!(log.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn reset_clears_everything() {
        let (mut t, log, _) = transport();
        bring_up(&mut t);
        log.lock()
            .unwrap()
            .interrupt
            .clone()
            .unwrap()
            .trigger(InterruptKind::UsedBuffer)
            .unwrap();
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert!(!t.is_activated());
        assert_eq!(t.driver_features(), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        for sel in 0..2 {
            wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, sel);
            assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        // Notifications need a new DRIVER_OK; the device comes up again after one.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.stats().out_of_order, 1);
        bring_up(&mut t);
        assert!(t.is_activated());
        assert_eq!(log.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn status_steps_cannot_be_skipped() {
        let (mut t, log, _) = transport();
        wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | 0x10,
        );
        wr(&mut t, VIRTIO_MMIO_STATUS, DRIVER);
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | FEATURES_OK);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE); // clearing DRIVER
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        assert_eq!(t.stats().out_of_order, 6);
        // FAILED is always accepted, and then only a reset helps.
        wr(&mut t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FAILED);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK,
        );
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FAILED
        );
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn bad_queue_setup_is_ignored_and_counted() {
        let (mut t, _, _) = transport();
        // Before FEATURES_OK.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.stats().out_of_order, 1);
        negotiate(&mut t);
        // Out-of-range selector: no such queue, writes ignored.
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 5);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        assert_eq!(t.stats().invalid_values, 3);
        // Sizes: above the maximum, not a power of 2, zero, wider than 16 bits.
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        for num in [16, 3, 0, 0x1_0004] {
            wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, num);
        }
        assert_eq!(t.stats().invalid_values, 7);
        // Misaligned rings.
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
        wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2001);
        wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3002);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 2);
        assert_eq!(t.stats().invalid_values, 11);
        // A ready queue cannot be resized.
        setup_queue(&mut t, 1, 4);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
        assert_eq!(t.stats().out_of_order, 2);
        // Queue 1's rings ready, queue 0 untouched: activation gets both, sizes as set.
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(t.is_activated());
    }

    #[test]
    fn rings_outside_memory_fail_activation() {
        let (mut t, log, irqfd) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 1); // 4 GiB up: no memory there
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!t.is_activated());
        assert_ne!(rd(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irqfd.read().unwrap(), 1);
        assert_eq!(t.stats().activation_failures, 1);
        assert!(log.lock().unwrap().activations.is_empty());
        // The driver may still fail the device, keeping NEEDS_RESET in what it writes back.
        let s = rd(&mut t, VIRTIO_MMIO_STATUS);
        wr(&mut t, VIRTIO_MMIO_STATUS, s | FAILED);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), s | FAILED);
    }

    #[test]
    fn refused_activation_sets_needs_reset() {
        let (mut t, _, _) = transport_with(true);
        bring_up(&mut t);
        assert!(!t.is_activated());
        assert_ne!(rd(&mut t, VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
    }

    #[test]
    fn malformed_accesses_are_ignored_and_counted() {
        let (mut t, _, _) = transport();
        let mut two = [0xffu8; 2];
        t.read(0, &mut two); // 16-bit read of MagicValue
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        t.read(2, &mut four); // unaligned
        assert_eq!(four, [0; 4]);
        t.read(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &mut four); // write-only
        t.read(0x0f0, &mut four); // nothing there
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]); // byte write to Status
        t.write(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &0u32.to_le_bytes()); // read-only
        t.write(u64::from(VIRTIO_MMIO_QUEUE_PFN), &1u32.to_le_bytes()); // legacy
        let mut three = [0u8; 3];
        t.read(CONFIG_OFFSET, &mut three); // odd config width
        assert_eq!(t.stats().bad_accesses, 8);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn config_space_is_read_through_the_device() {
        let (mut t, _, _) = transport();
        let mut b = [0u8; 2];
        t.read(CONFIG_OFFSET + 4, &mut b);
        assert_eq!(b, [0xc4, 0xc5]);
        let mut q = [0u8; 8];
        t.read(CONFIG_OFFSET, &mut q);
        assert_eq!(q[7], 0xc7);
    }

    #[test]
    fn kernel_command_line_entry() {
        assert_eq!(
            cmdline_entry(0xd000_0000, MMIO_SIZE, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            cmdline_entry(0xd010_0000, 0x20_0000, 12),
            "virtio_mmio.device=2M@0xd0100000:12"
        );
        assert_eq!(
            cmdline_entry(0x1000, 100, 6),
            "virtio_mmio.device=100@0x1000:6"
        );
    }
}
