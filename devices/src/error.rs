//! The crate's one error type.

use std::io;

/// Errors of the devices crate. Guest misbehaviour is not an error here: it is counted and
/// ignored where it happens; these are the failures the VMM has to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`crate::Bus::insert`]: the range `[base, base + len)` is empty or wraps past `u64::MAX`.
    #[error("bus range {base:#x} (+{len:#x} bytes) is empty or wraps around the address space")]
    BusRange {
        /// First address of the refused range.
        base: u64,
        /// Length in bytes of the refused range.
        len: u64,
    },
    /// [`crate::Bus::insert`]: the range overlaps a device already on the bus.
    #[error(
        "bus range {base:#x} (+{len:#x} bytes) overlaps the device at {other_base:#x} \
         (+{other_len:#x} bytes)"
    )]
    BusOverlap {
        /// First address of the refused range.
        base: u64,
        /// Length in bytes of the refused range.
        len: u64,
        /// First address of the device already there.
        other_base: u64,
        /// Length in bytes of the device already there.
        other_len: u64,
    },
    /// Creating, duplicating or writing an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// Raising an interrupt (writing its irqfd) failed.
    #[error("raising an interrupt: {0}")]
    Interrupt(#[source] io::Error),
    /// A virtio queue could not be created, or its rings could not be accessed.
    #[error("virtio queue: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// A virtio device was activated with a number of queues it does not drive.
    #[error("virtio device needs {expected} queues, the transport gave {got}")]
    QueueCount {
        /// Queues the device drives.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// A virtio device was activated with a queue the driver did not make ready.
    #[error("virtio queue {index} was not made ready by the driver")]
    QueueNotReady {
        /// Index of the queue (its QueueSel value).
        index: usize,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
