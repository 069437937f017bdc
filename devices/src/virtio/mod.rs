//! Virtio (OASIS virtio 1.2): the device model, the MMIO transport and the devices.
//!
//! - [`VirtioDevice`]: what a device tells its transport (type, queues, features, config
//!   space) and how the transport drives it (activate on DRIVER_OK, reset).
//! - [`mmio`]: the virtio-mmio transport (§4.2.2, version 2 registers only), a
//!   [`crate::BusDevice`] on the MMIO bus.
//! - [`net`]: the virtio-net device (§5.1).
//!
//! Interrupts go out through an irqfd; queue notifications come in through ioeventfds the
//! VMM registers at the QueueNotify address, so a vCPU never does queue work itself.

pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result};

/// A virtio device, independent of its transport.
///
/// The transport calls these from the vCPU thread that made the register access; a device
/// hands its queue work to the event loop (see [`net::VirtioNet`]).
pub trait VirtioDevice: Send {
    /// Virtio device ID (§5: 1 for a network card).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue, in descriptors, indexed by queue number (each a power
    /// of 2, at most 32768). Its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (§2.2; bit 32 is VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// The features the driver accepted; the transport calls this once they are known to be
    /// a subset of [`Self::features`] (when the driver sets FEATURES_OK).
    fn ack_features(&mut self, features: u64);
    /// Reads `data.len()` bytes of the device configuration space at `offset`. Bytes past
    /// the end of the configuration space read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes `data` to the configuration space at `offset`; read-only fields
    /// ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start working on `queues` (one per [`Self::queue_max_sizes`] entry, as the
    /// driver configured them; their rings were checked to lie in `mem` when ready).
    /// `interrupt` raises the device's interrupt.
    ///
    /// # Errors
    /// The device refuses the configuration (e.g. a queue it needs is not ready); the
    /// transport then sets DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<()>;
    /// The driver wrote 0 to Status (§2.1.2): stop using the queues and guest memory, forget
    /// negotiated features; the device can be activated again afterwards.
    fn reset(&mut self);
    /// The driver notified queue `index` through a QueueNotify write that no ioeventfd
    /// caught. Only called after activation, with `index` below the number of queues.
    fn queue_notify(&mut self, index: u16);
}

/// Why a device interrupts (the bits of the MMIO InterruptStatus register, §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were added to a used ring (bit 0).
    UsedBuffer,
    /// The configuration space changed (bit 1).
    ConfigChange,
}

impl InterruptKind {
    /// The InterruptStatus bit for this reason.
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptKind::UsedBuffer => VIRTIO_MMIO_INT_VRING,
            InterruptKind::ConfigChange => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// Raises a device's interrupt; shared between the transport and the thread doing the
/// queue work.
pub trait InterruptSignal: Send + Sync {
    /// Records `kind` as pending and interrupts the guest.
    ///
    /// # Errors
    /// [`Error::Interrupt`] when the interrupt cannot be delivered (irqfd write failed).
    fn trigger(&self, kind: InterruptKind) -> Result<()>;
}

/// The interrupt of one virtio-mmio device: the InterruptStatus bits plus the irqfd that
/// the VMM registers with KVM for the device's IRQ line.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl MmioInterrupt {
    /// An interrupt that fires by writing `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The eventfd to register as the device's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The pending reasons (InterruptStatus).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The driver acknowledges the reasons in `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears every pending reason (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

impl InterruptSignal for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> Result<()> {
        self.status.fetch_or(kind.status_bit(), Ordering::AcqRel);
        self.irqfd.write(1).map_err(Error::Interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_sets_status_and_writes_irqfd() {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = MmioInterrupt::new(irqfd.try_clone().unwrap());
        irq.trigger(InterruptKind::UsedBuffer).unwrap();
        irq.trigger(InterruptKind::ConfigChange).unwrap();
        assert_eq!(irq.status(), 0b11);
        assert_eq!(irqfd.read().unwrap(), 2);
        irq.ack(0b01);
        assert_eq!(irq.status(), 0b10);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
