//! virtio-net, virtio 1.2 §5.1: one receive and one transmit queue, no offloads.
//!
//! Split as in vmm-reference: [`queues`] is the queue logic (TX: copy each frame out of
//! guest memory once and hand it to a [`NetBackend`]; RX: write a frame straight into the
//! guest's posted buffers), unit-tested on guest memory without an event loop;
//! [`device`] is the [`crate::virtio::VirtioDevice`] glue that the MMIO transport drives and
//! the [`NetHandle`] the event loop works the queues through.
//!
//! Negotiable features of the in-VMM device: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC,
//! VIRTIO_NET_F_MTU and VIRTIO_NET_F_STATUS. Every frame travels with a 12-byte
//! `virtio_net_hdr_v1` (§5.1.6); without VIRTIO_NET_F_MRG_RXBUF its `num_buffers` is 1. The
//! queue logic also speaks VIRTIO_NET_F_MRG_RXBUF ([`NetQueueLogic::set_mergeable`]), which
//! the vhost-user backend offers.

pub mod device;
pub mod queues;

pub use device::{NetConfig, NetHandle, VirtioNet};
pub use queues::{NetBackend, NetQueueLogic, NetQueues, NetStats, RxOutcome, MAX_RX_CHAINS};

use virtio_bindings::virtio_net::virtio_net_hdr_v1;

/// Bytes of `virtio_net_hdr_v1` in front of every frame (§5.1.6).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (little-endian u16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The longest Ethernet frame the device moves, header excluded: 65535 bytes of IP
/// datagram, 14 of Ethernet header, one VLAN tag (§5.1.6.3.1's 65562-byte buffers minus the
/// header).
pub const MAX_FRAME_LEN: usize = 65550;
/// The longest descriptor chain contents the device reads on TX: header plus frame.
pub const MAX_BUFFER_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
/// Index of the receive queue (receiveq1).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (transmitq1).
pub const TX_QUEUE: usize = 1;
/// Descriptors per queue offered in QueueNumMax.
pub const QUEUE_SIZE: u16 = 256;

const _: () = assert!(std::mem::size_of::<virtio_net_hdr_v1>() == NET_HDR_LEN);
const _: () = assert!(std::mem::offset_of!(virtio_net_hdr_v1, num_buffers) == NUM_BUFFERS_OFFSET);
