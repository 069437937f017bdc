//! Guest-visible devices of skiff.
//!
//! - [`bus`]: address ranges (port I/O or MMIO) mapped to devices; vCPU threads dispatch
//!   their I/O exits through one [`bus::Bus`] per address space.
//! - [`serial`]: COM1, an 8250 UART (vm-superio) whose output goes to any writer.
//! - [`i8042`]: just enough of the PC keyboard controller for the guest to reset the machine.
//! - [`virtio`]: the virtio-mmio transport (virtio 1.2 §4.2) and the virtio-net device
//!   (virtio 1.2 §5.1), on rust-vmm's `virtio-queue`.
//!
//! Every guest access is hostile input: malformed accesses and descriptor chains are
//! ignored or dropped and counted, never a panic.

#![warn(missing_docs)]

pub mod bus;
pub mod error;
pub mod i8042;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice};
pub use error::{Error, Result};
