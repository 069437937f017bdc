//! The virtio-net queue logic (virtio 1.2 §5.1.6), free of any event loop and of any
//! transport.
//!
//! [`NetQueueLogic`] is the logic: it works on queues, guest memory and an interrupt passed
//! in per call, so the in-VMM device and the vhost-user backend (whose queues and memory
//! belong to the vhost-user crates) share it. [`NetQueues`] owns the receive and transmit
//! [`Queue`]s of an activated in-VMM device, a view of guest memory and the device's
//! interrupt, and forwards to it.
//!
//! - TX ([`NetQueues::process_tx`]): each available chain is copied once, descriptor by
//!   descriptor, into a buffer the device owns (the guest may rewrite its memory meanwhile,
//!   so nothing is parsed in place); the frame after the 12-byte header goes to the
//!   [`NetBackend`]; the chain is returned with used length 0.
//! - RX ([`NetQueues::try_deliver`], [`NetQueues::deliver`]): the header and the frame are
//!   written straight into the next available chain's device-writable descriptors, as many as
//!   it takes, and the chain is returned with the written length. With
//!   VIRTIO_NET_F_MRG_RXBUF negotiated ([`NetQueueLogic::set_mergeable`], §5.1.6.4) a frame
//!   may span up to [`MAX_RX_CHAINS`] chains: each is filled in turn and returned with its
//!   written length, and the header's `num_buffers` says how many there are.
//!
//! Guest input is hostile. A chain with a descriptor in the wrong direction, an address
//! outside guest memory, a length out of bounds, or a `next` that loops or leaves the
//! descriptor table (virtio-queue stops walking it after queue-size descriptors) is dropped:
//! returned with used length 0 and counted in [`NetStats`]. Nothing here panics on guest
//! data; no allocation happens per frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{MAX_BUFFER_LEN, MAX_FRAME_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET};
use crate::virtio::{InterruptKind, InterruptSignal};
use crate::{Error, Result};

/// Where transmitted frames go: a switch port, a socket, a test's vector.
pub trait NetBackend {
    /// Takes one Ethernet frame the guest sent (virtio-net header removed). The slice is
    /// the device's buffer: copy what must outlive the call.
    fn send(&mut self, frame: &[u8]);
}

/// Most descriptor chains one received frame may span with mergeable receive buffers
/// (a 64 KiB frame in 1 KiB buffers; Linux posts buffers of at least 1.5 KiB). A frame that
/// does not fit in that many (or in a whole queue) is dropped as too large.
pub const MAX_RX_CHAINS: usize = 64;

/// The header in front of every received frame: no checksum offload (`flags` 0), no GSO
/// (`gso_type` VIRTIO_NET_HDR_GSO_NONE), one buffer (`num_buffers` 1, §5.1.6.4; with
/// mergeable receive buffers the count of chains used is patched in).
const RX_HEADER: [u8; NET_HDR_LEN] = {
    let mut h = [0u8; NET_HDR_LEN];
    h[NUM_BUFFERS_OFFSET] = 1;
    h
};

/// What [`NetQueues::try_deliver`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// The frame is in the guest's buffer and on the used ring.
    Delivered,
    /// No receive buffer is available: keep the frame until the guest posts one (its RX
    /// queue notification), or drop it.
    NoBuffer,
    /// The frame is longer than [`MAX_FRAME_LEN`] or than the next receive buffer (with
    /// mergeable buffers: than [`MAX_RX_CHAINS`] chains or the whole queue); it was counted
    /// as dropped and the buffers left for the next frame. Do not retry it.
    TooLarge,
}

/// Counters of the queue work. Drops are per descriptor chain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames (headers excluded).
    pub tx_bytes: u64,
    /// TX chains dropped for a device-writable descriptor.
    pub tx_wrong_direction: u64,
    /// TX chains dropped for holding less than a virtio-net header (zero length included).
    pub tx_too_short: u64,
    /// TX chains dropped for holding more than [`MAX_BUFFER_LEN`] bytes.
    pub tx_too_long: u64,
    /// TX chains dropped for a buffer outside guest memory.
    pub tx_bad_address: u64,
    /// TX chains dropped as malformed: a loop, more descriptors than the queue size, a
    /// `next` or head index outside the table, an unreadable descriptor.
    pub tx_malformed: u64,
    /// Frames written to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (headers excluded).
    pub rx_bytes: u64,
    /// Delivery attempts that found no receive buffer.
    pub rx_no_buffer: u64,
    /// Frames dropped for not fitting [`MAX_FRAME_LEN`] or the guest's buffer.
    pub rx_too_large: u64,
    /// RX chains dropped for a device-readable descriptor.
    pub rx_wrong_direction: u64,
    /// RX chains dropped for a buffer outside guest memory.
    pub rx_bad_address: u64,
    /// RX chains dropped as malformed (see `tx_malformed`); with mergeable buffers also
    /// chains holding no byte, and first chains too short for the header.
    pub rx_malformed: u64,
    /// Chains the used ring refused (head index not below the queue size).
    pub bad_heads: u64,
    /// Available rings found inconsistent (index moved by more than the queue size).
    pub ring_errors: u64,
}

/// Why a chain was dropped (or, for `NoRoom`, left in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainError {
    WrongDirection,
    TooShort,
    TooLong,
    BadAddress,
    Malformed,
    /// RX only: the chain is well-formed but smaller than header + frame.
    NoRoom,
}

/// The queue logic itself, on queues and memory it does not own: the TX buffer, the
/// pending-interrupt flag and the counters. Every call names the guest memory, the queue and
/// (where it may interrupt) the interrupt to use, so the same code serves the in-VMM device
/// ([`NetQueues`]) and a vhost-user backend, whose queues and memory the frontend hands over.
pub struct NetQueueLogic {
    /// Where TX chains are copied: [`MAX_BUFFER_LEN`] bytes, allocated once.
    tx_buf: Box<[u8]>,
    /// Used RX entries were added since the last [`NetQueueLogic::signal_rx`].
    rx_used_pending: bool,
    /// VIRTIO_NET_F_MRG_RXBUF was negotiated: a frame may span several RX chains.
    mergeable: bool,
    stats: NetStats,
}

impl Default for NetQueueLogic {
    fn default() -> Self {
        Self::new()
    }
}

impl NetQueueLogic {
    /// Fresh logic: an empty TX buffer, zeroed counters.
    pub fn new() -> Self {
        Self {
            tx_buf: vec![0; MAX_BUFFER_LEN].into_boxed_slice(),
            rx_used_pending: false,
            mergeable: false,
            stats: NetStats::default(),
        }
    }

    /// Whether VIRTIO_NET_F_MRG_RXBUF was negotiated (off by default): received frames may
    /// then span several RX chains, `num_buffers` counting them (§5.1.6.4).
    pub fn set_mergeable(&mut self, mergeable: bool) {
        self.mergeable = mergeable;
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Forgets a pending RX interrupt (the device was reset: its queues are gone).
    pub fn reset_pending(&mut self) {
        self.rx_used_pending = false;
    }

    /// Sends every frame the guest made available on `tx` to `backend`, returns the chains,
    /// and interrupts through `interrupt` once if any were returned. Guest notifications
    /// are suppressed while the queue is drained. Returns the number of frames sent.
    ///
    /// # Errors
    /// [`Error::Queue`] when the available ring is inconsistent or unreadable (the device
    /// needs a reset); [`Error::Interrupt`] when the interrupt cannot be raised.
    pub fn process_tx<B: NetBackend + ?Sized>(
        &mut self,
        mem: &GuestMemoryMmap,
        tx: &mut Queue,
        interrupt: &dyn InterruptSignal,
        backend: &mut B,
    ) -> Result<usize> {
        let mut sent = 0;
        let mut used = false;
        let drained = self.drain_tx(mem, tx, backend, &mut sent, &mut used);
        if used {
            signal(tx, mem, interrupt)?;
        }
        drained.map(|()| sent)
    }

    fn drain_tx<B: NetBackend + ?Sized>(
        &mut self,
        mem: &GuestMemoryMmap,
        tx: &mut Queue,
        backend: &mut B,
        sent: &mut usize,
        used: &mut bool,
    ) -> Result<()> {
        loop {
            tx.disable_notification(mem).map_err(Error::Queue)?;
            while let Some(chain) = pop(tx, mem, &mut self.stats)? {
                let head = chain.head_index();
                let read = if head < tx.size() {
                    read_chain(mem, chain, &mut self.tx_buf)
                } else {
                    Err(ChainError::Malformed)
                };
                match read {
                    Ok(len) => {
                        let frame = &self.tx_buf[NET_HDR_LEN..len];
                        backend.send(frame);
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += frame.len() as u64;
                        *sent += 1;
                    }
                    Err(e) => {
                        tracing::debug!("virtio-net: TX chain {head} dropped: {e:?}");
                        let counter = match e {
                            ChainError::WrongDirection => &mut self.stats.tx_wrong_direction,
                            ChainError::TooShort => &mut self.stats.tx_too_short,
                            ChainError::TooLong => &mut self.stats.tx_too_long,
                            ChainError::BadAddress => &mut self.stats.tx_bad_address,
                            ChainError::Malformed | ChainError::NoRoom => {
                                &mut self.stats.tx_malformed
                            }
                        };
                        *counter += 1;
                    }
                }
                // The device wrote nothing into a TX chain: used length 0 (§2.7.8).
                *used |= add_used(tx, mem, head, 0, &mut self.stats);
            }
            if !tx.enable_notification(mem).map_err(Error::Queue)? {
                return Ok(());
            }
        }
    }

    /// Whether the guest has posted a receive buffer on `rx` not used yet. Cheap: one read
    /// of the available ring's index.
    pub fn rx_has_buffer(&self, mem: &GuestMemoryMmap, rx: &Queue) -> bool {
        rx.avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != rx.next_avail())
    }

    /// Writes the virtio-net header and `frame` (an Ethernet frame, at most
    /// [`MAX_FRAME_LEN`] bytes) into the next available chain of `rx` and puts it on the
    /// used ring, without interrupting the guest: call [`Self::signal_rx`] after a batch.
    /// Malformed chains met on the way are dropped (used length 0, counted) and the next
    /// one tried.
    ///
    /// With mergeable receive buffers ([`Self::set_mergeable`]) the frame fills as many
    /// chains as it takes, at most [`MAX_RX_CHAINS`]; if the available ones run out first,
    /// every chain taken is put back untouched on the used ring and the outcome is
    /// [`RxOutcome::NoBuffer`]. Malformed chains met after the frame's first chain are
    /// returned (used length 0) after the frame's chains, so that the frame's stay together.
    ///
    /// # Errors
    /// [`Error::Queue`] when the available ring is inconsistent or unreadable.
    pub fn try_deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
        frame: &[u8],
    ) -> Result<RxOutcome> {
        if frame.len() > MAX_FRAME_LEN {
            self.stats.rx_too_large += 1;
            return Ok(RxOutcome::TooLarge);
        }
        if self.mergeable {
            return self.deliver_mergeable(mem, rx, frame);
        }
        let total = NET_HDR_LEN + frame.len();
        loop {
            let Some(chain) = pop(rx, mem, &mut self.stats)? else {
                self.stats.rx_no_buffer += 1;
                return Ok(RxOutcome::NoBuffer);
            };
            let head = chain.head_index();
            let written = if head < rx.size() {
                write_chain(mem, chain, [&RX_HEADER, frame], 0).and_then(|n| {
                    if n == total {
                        Ok(n)
                    } else {
                        Err(ChainError::NoRoom)
                    }
                })
            } else {
                Err(ChainError::Malformed)
            };
            let len = match written {
                Ok(len) => len,
                Err(ChainError::NoRoom) => {
                    // Leave the buffer for a frame that fits.
                    rx.go_to_previous_position();
                    self.stats.rx_too_large += 1;
                    return Ok(RxOutcome::TooLarge);
                }
                Err(e) => {
                    count_rx_drop(&mut self.stats, head, e);
                    0
                }
            };
            // `len` <= MAX_BUFFER_LEN, far below u32::MAX.
            if add_used(rx, mem, head, len as u32, &mut self.stats) {
                self.rx_used_pending = true;
            }
            if len > 0 {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame.len() as u64;
                return Ok(RxOutcome::Delivered);
            }
        }
    }

    /// [`Self::try_deliver`] with mergeable receive buffers (§5.1.6.4): `frame` is not
    /// longer than [`MAX_FRAME_LEN`].
    fn deliver_mergeable(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
        frame: &[u8],
    ) -> Result<RxOutcome> {
        let parts: [&[u8]; 2] = [&RX_HEADER, frame];
        let total = NET_HDR_LEN + frame.len();
        // More chains than the queue holds can never be available at once.
        let limit = MAX_RX_CHAINS.min(usize::from(rx.size()));
        // The frame's chains (head, bytes written), and chains dropped after the first of
        // them (head, why): all taken from the ring but not on the used ring yet.
        let mut chains = [(0u16, 0u32); MAX_RX_CHAINS];
        let mut dropped = [(0u16, ChainError::Malformed); MAX_RX_CHAINS];
        let (mut n_chains, mut n_dropped) = (0usize, 0usize);
        // The first chain again, to patch `num_buffers` into its header.
        let mut first = None;
        let mut written = 0usize;
        while written < total {
            if n_chains + n_dropped == limit {
                rewind(rx, n_chains + n_dropped);
                self.stats.rx_too_large += 1;
                return Ok(RxOutcome::TooLarge);
            }
            let chain = match pop(rx, mem, &mut self.stats) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    rewind(rx, n_chains + n_dropped);
                    self.stats.rx_no_buffer += 1;
                    return Ok(RxOutcome::NoBuffer);
                }
                Err(e) => {
                    rewind(rx, n_chains + n_dropped);
                    return Err(e);
                }
            };
            let head = chain.head_index();
            let copy = (n_chains == 0).then(|| chain.clone());
            let result = if head < rx.size() {
                match write_chain(mem, chain, parts, written) {
                    // Every buffer holds at least a header (§5.1.6.3.1): the header lies
                    // in the first chain, and a chain holding nothing is no buffer.
                    Ok(n) if n == 0 || (n_chains == 0 && n < NET_HDR_LEN) => {
                        Err(ChainError::Malformed)
                    }
                    r => r,
                }
            } else {
                Err(ChainError::Malformed)
            };
            match result {
                Ok(n) => {
                    // `n` <= MAX_BUFFER_LEN, far below u32::MAX.
                    chains[n_chains] = (head, n as u32);
                    n_chains += 1;
                    written += n;
                    if copy.is_some() {
                        first = copy;
                    }
                }
                Err(e) if n_chains == 0 => {
                    // Nothing of the frame is in the guest's buffers yet: return it now.
                    count_rx_drop(&mut self.stats, head, e);
                    if add_used(rx, mem, head, 0, &mut self.stats) {
                        self.rx_used_pending = true;
                    }
                }
                Err(e) => {
                    dropped[n_dropped] = (head, e);
                    n_dropped += 1;
                }
            }
        }
        if n_chains > 1 {
            // n_chains <= MAX_RX_CHAINS.
            let mut header = RX_HEADER;
            header[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
                .copy_from_slice(&(n_chains as u16).to_le_bytes());
            let patched = first.map(|chain| write_chain(mem, chain, [&header[..], &[]], 0));
            if patched != Some(Ok(NET_HDR_LEN)) {
                // Only if the guest rewrote the chain meanwhile.
                tracing::debug!("virtio-net: RX num_buffers not written: {patched:?}");
            }
        }
        for &(head, len) in &chains[..n_chains] {
            if add_used(rx, mem, head, len, &mut self.stats) {
                self.rx_used_pending = true;
            }
        }
        for &(head, e) in &dropped[..n_dropped] {
            count_rx_drop(&mut self.stats, head, e);
            if add_used(rx, mem, head, 0, &mut self.stats) {
                self.rx_used_pending = true;
            }
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        Ok(RxOutcome::Delivered)
    }

    /// Interrupts the guest through `interrupt` if receive buffers of `rx` were used since
    /// the last call (and the driver wants to hear about it). Returns whether it
    /// interrupted.
    ///
    /// # Errors
    /// [`Error::Queue`] when the ring cannot be read, [`Error::Interrupt`] when the
    /// interrupt cannot be raised.
    pub fn signal_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
        interrupt: &dyn InterruptSignal,
    ) -> Result<bool> {
        if !std::mem::take(&mut self.rx_used_pending) {
            return Ok(false);
        }
        signal(rx, mem, interrupt)
    }
}

/// The queues of an activated virtio-net device: [`NetQueueLogic`] on queues, memory and
/// an interrupt it owns.
pub struct NetQueues {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn InterruptSignal>,
    logic: NetQueueLogic,
}

impl NetQueues {
    /// Queue work for `rx` and `tx` (configured and ready) on `mem`, interrupting through
    /// `interrupt`.
    pub fn new(
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Self {
        Self {
            mem,
            rx,
            tx,
            interrupt,
            logic: NetQueueLogic::new(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.logic.stats()
    }

    /// See [`NetQueueLogic::set_mergeable`].
    pub fn set_mergeable(&mut self, mergeable: bool) {
        self.logic.set_mergeable(mergeable);
    }

    /// See [`NetQueueLogic::process_tx`].
    ///
    /// # Errors
    /// As [`NetQueueLogic::process_tx`].
    pub fn process_tx<B: NetBackend + ?Sized>(&mut self, backend: &mut B) -> Result<usize> {
        self.logic
            .process_tx(&self.mem, &mut self.tx, &*self.interrupt, backend)
    }

    /// Whether the guest has posted a receive buffer not used yet. Cheap: one read of the
    /// available ring's index; use it to decide whether to read frames from the backend.
    pub fn rx_has_buffer(&self) -> bool {
        self.logic.rx_has_buffer(&self.mem, &self.rx)
    }

    /// See [`NetQueueLogic::try_deliver`].
    ///
    /// # Errors
    /// As [`NetQueueLogic::try_deliver`].
    pub fn try_deliver(&mut self, frame: &[u8]) -> Result<RxOutcome> {
        self.logic.try_deliver(&self.mem, &mut self.rx, frame)
    }

    /// See [`NetQueueLogic::signal_rx`].
    ///
    /// # Errors
    /// As [`NetQueueLogic::signal_rx`].
    pub fn signal_rx(&mut self) -> Result<bool> {
        self.logic
            .signal_rx(&self.mem, &mut self.rx, &*self.interrupt)
    }

    /// [`Self::try_deliver`] then [`Self::signal_rx`]: delivers one frame and interrupts.
    /// Returns Ok(true) when the frame was delivered, Ok(false) when there was no buffer
    /// (keep the frame or drop it) or the frame does not fit (counted; drop it).
    ///
    /// # Errors
    /// As [`Self::try_deliver`] and [`Self::signal_rx`].
    pub fn deliver(&mut self, frame: &[u8]) -> Result<bool> {
        let outcome = self.try_deliver(frame)?;
        self.signal_rx()?;
        Ok(outcome == RxOutcome::Delivered)
    }
}

/// The next available chain of `queue`, if any.
fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    stats: &mut NetStats,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>> {
    match queue.iter(mem) {
        Ok(mut chains) => Ok(chains.next()),
        Err(e) => {
            stats.ring_errors += 1;
            Err(Error::Queue(e))
        }
    }
}

/// Puts back the last `n` chains taken from `queue` (none of them is on the used ring).
fn rewind(queue: &mut Queue, n: usize) {
    for _ in 0..n {
        queue.go_to_previous_position();
    }
}

/// Counts RX chain `head` as dropped for `e`.
fn count_rx_drop(stats: &mut NetStats, head: u16, e: ChainError) {
    tracing::debug!("virtio-net: RX chain {head} dropped: {e:?}");
    let counter = match e {
        ChainError::WrongDirection => &mut stats.rx_wrong_direction,
        ChainError::BadAddress => &mut stats.rx_bad_address,
        _ => &mut stats.rx_malformed,
    };
    *counter += 1;
}

/// Puts `head` on the used ring with `len` bytes written; false (counted) if refused.
fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    stats: &mut NetStats,
) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            stats.bad_heads += 1;
            tracing::debug!("virtio-net: chain {head} not returned: {e}");
            false
        }
    }
}

/// Interrupts the guest for `queue` unless the driver suppressed it.
fn signal(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn InterruptSignal,
) -> Result<bool> {
    if queue.needs_notification(mem).map_err(Error::Queue)? {
        interrupt.trigger(InterruptKind::UsedBuffer)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Copies a TX chain into `buf`; returns the bytes copied (header included).
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> std::result::Result<usize, ChainError> {
    let mut len = 0usize;
    let mut cut_short = false;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|&end| end <= buf.len())
            .ok_or(ChainError::TooLong)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| ChainError::BadAddress)?;
        len = end;
        // virtio-queue ends the walk early (loop, bad `next`) with this still set.
        cut_short = desc.has_next();
    }
    if cut_short {
        Err(ChainError::Malformed)
    } else if len < NET_HDR_LEN {
        Err(ChainError::TooShort)
    } else {
        Ok(len)
    }
}

/// Writes the concatenation of `parts` from byte `start` on into an RX chain, as much of it
/// as the chain holds; returns the bytes written into the chain (fewer than asked when the
/// chain is full).
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    parts: [&[u8]; 2],
    start: usize,
) -> std::result::Result<usize, ChainError> {
    let total = parts[0].len() + parts[1].len();
    let start = start.min(total);
    let mut pos = start;
    let mut cut_short = false;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let n = (desc.len() as usize).min(total - pos);
        write_span(mem, desc.addr(), parts, pos, n).ok_or(ChainError::BadAddress)?;
        pos += n;
        if pos == total {
            return Ok(pos - start);
        }
        cut_short = desc.has_next();
    }
    if cut_short {
        Err(ChainError::Malformed)
    } else {
        Ok(pos - start)
    }
}

/// Writes bytes `start..start + n` of the concatenation of `parts` at `addr`.
fn write_span(
    mem: &GuestMemoryMmap,
    mut addr: GuestAddress,
    parts: [&[u8]; 2],
    start: usize,
    n: usize,
) -> Option<()> {
    let end = start + n;
    let mut pos = start;
    let mut base = 0;
    for part in parts {
        let part_end = base + part.len();
        if pos < end && pos < part_end {
            let stop = end.min(part_end);
            let bytes = &part[pos - base..stop - base];
            mem.write_slice(bytes, addr).ok()?;
            addr = addr.checked_add(bytes.len() as u64)?;
            pos = stop;
        }
        base = part_end;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const MEM_SIZE: u64 = 0x40_0000;
    const QSIZE: u16 = 16;
    /// Descriptor tables and available rings, laid out by the mock.
    const RX_RING: u64 = 0x0;
    const TX_RING: u64 = 0x1000;
    /// Used rings, placed by us: virtio-queue 0.18's mock puts the used ring `len` bytes
    /// after the available ring's entries (its `end()` adds the element count), on top of
    /// the upper half of the available ring.
    const RX_USED: u64 = 0x2000;
    const TX_USED: u64 = 0x3000;
    /// Buffers live from here on.
    const BUF: u64 = 0x10000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    #[derive(Default)]
    struct CountingIrq(AtomicUsize);

    impl InterruptSignal for CountingIrq {
        fn trigger(&self, kind: InterruptKind) -> Result<()> {
            assert_eq!(kind, InterruptKind::UsedBuffer);
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl CountingIrq {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[derive(Default)]
    struct Frames(Vec<Vec<u8>>);

    impl NetBackend for Frames {
        fn send(&mut self, frame: &[u8]) {
            self.0.push(frame.to_vec());
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    /// Which owner of the queues a test runs on.
    #[derive(Debug, Clone, Copy)]
    enum Transport {
        /// [`NetQueues`]: the in-VMM device owns queues, memory and interrupt.
        Owned,
        /// [`NetQueueLogic`] on queues and memory lent per call, as the vhost-user backend
        /// does with the frontend's vrings.
        Lent,
    }

    const TRANSPORTS: [Transport; 2] = [Transport::Owned, Transport::Lent];

    /// The calls the tests make, on either transport.
    trait TestNet {
        fn process_tx(&mut self, out: &mut Frames) -> Result<usize>;
        fn rx_has_buffer(&self) -> bool;
        fn try_deliver(&mut self, frame: &[u8]) -> Result<RxOutcome>;
        fn signal_rx(&mut self) -> Result<bool>;
        fn stats(&self) -> NetStats;
        fn set_mergeable(&mut self, on: bool);
        fn deliver(&mut self, frame: &[u8]) -> Result<bool> {
            let outcome = self.try_deliver(frame)?;
            self.signal_rx()?;
            Ok(outcome == RxOutcome::Delivered)
        }
    }

    impl TestNet for NetQueues {
        fn process_tx(&mut self, out: &mut Frames) -> Result<usize> {
            NetQueues::process_tx(self, out)
        }
        fn rx_has_buffer(&self) -> bool {
            NetQueues::rx_has_buffer(self)
        }
        fn try_deliver(&mut self, frame: &[u8]) -> Result<RxOutcome> {
            NetQueues::try_deliver(self, frame)
        }
        fn signal_rx(&mut self) -> Result<bool> {
            NetQueues::signal_rx(self)
        }
        fn stats(&self) -> NetStats {
            NetQueues::stats(self)
        }
        fn set_mergeable(&mut self, on: bool) {
            NetQueues::set_mergeable(self, on);
        }
    }

    /// Queues behind locks and memory behind a shared handle, like the vhost-user crates'.
    struct Lent {
        mem: Arc<GuestMemoryMmap>,
        rx: std::sync::Mutex<Queue>,
        tx: std::sync::Mutex<Queue>,
        irq: Arc<CountingIrq>,
        logic: NetQueueLogic,
    }

    impl TestNet for Lent {
        fn process_tx(&mut self, out: &mut Frames) -> Result<usize> {
            let mem = &*self.mem;
            let mut tx = self.tx.lock().unwrap();
            self.logic.process_tx(mem, &mut tx, &*self.irq, out)
        }
        fn rx_has_buffer(&self) -> bool {
            let mem = &*self.mem;
            let rx = self.rx.lock().unwrap();
            self.logic.rx_has_buffer(mem, &rx)
        }
        fn try_deliver(&mut self, frame: &[u8]) -> Result<RxOutcome> {
            let mem = &*self.mem;
            let mut rx = self.rx.lock().unwrap();
            self.logic.try_deliver(mem, &mut rx, frame)
        }
        fn signal_rx(&mut self) -> Result<bool> {
            let mem = &*self.mem;
            let mut rx = self.rx.lock().unwrap();
            self.logic.signal_rx(mem, &mut rx, &*self.irq)
        }
        fn stats(&self) -> NetStats {
            self.logic.stats()
        }
        fn set_mergeable(&mut self, on: bool) {
            self.logic.set_mergeable(on);
        }
    }

    struct Rig<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        irq: Arc<CountingIrq>,
        net: Box<dyn TestNet>,
    }

    fn rig(mem: &GuestMemoryMmap, transport: Transport) -> Rig<'_> {
        let rxq = MockSplitQueue::create(mem, GuestAddress(RX_RING), QSIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), QSIZE);
        let irq = Arc::new(CountingIrq::default());
        let (rx, tx) = (queue(&rxq, RX_USED), queue(&txq, TX_USED));
        let net: Box<dyn TestNet> = match transport {
            Transport::Owned => Box::new(NetQueues::new(mem.clone(), rx, tx, irq.clone())),
            Transport::Lent => Box::new(Lent {
                mem: Arc::new(mem.clone()),
                rx: std::sync::Mutex::new(rx),
                tx: std::sync::Mutex::new(tx),
                irq: irq.clone(),
                logic: NetQueueLogic::new(),
            }),
        };
        Rig {
            mem,
            rxq,
            txq,
            irq,
            net,
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// The mock's queue with its used ring moved to `used_ring`.
    fn queue(mock: &MockSplitQueue<'_, GuestMemoryMmap>, used_ring: u64) -> Queue {
        let mut q: Queue = mock.create_queue().unwrap();
        q.try_set_used_ring_address(GuestAddress(used_ring))
            .unwrap();
        q
    }

    /// (id, len) of entry `i` of the used ring at `ring` (§2.7.8: flags, idx, then
    /// 8-byte elements).
    fn used(mem: &GuestMemoryMmap, ring: u64, i: u64) -> (u32, u32) {
        let at = |off: u64| mem.read_obj::<u32>(GuestAddress(ring + off)).unwrap();
        (at(4 + 8 * i), at(8 + 8 * i))
    }

    /// The idx field of the used ring at `ring`.
    fn used_idx(mem: &GuestMemoryMmap, ring: u64) -> u16 {
        mem.read_obj(GuestAddress(ring + 2)).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn tx_frame_across_descriptors() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            let frame = pattern(300, 1);
            // Header alone, then the frame in two pieces.
            r.mem
                .write_slice(&[0xee; NET_HDR_LEN], GuestAddress(BUF))
                .unwrap();
            r.mem
                .write_slice(&frame[..100], GuestAddress(BUF + 0x1000))
                .unwrap();
            r.mem
                .write_slice(&frame[100..], GuestAddress(BUF + 0x2000))
                .unwrap();
            r.txq
                .add_desc_chains(
                    &[
                        desc(BUF, NET_HDR_LEN as u32, NEXT, 1),
                        desc(BUF + 0x1000, 100, NEXT, 2),
                        desc(BUF + 0x2000, 200, 0, 0),
                    ],
                    0,
                )
                .unwrap();
            let mut out = Frames::default();
            assert_eq!(r.net.process_tx(&mut out).unwrap(), 1);
            assert_eq!(out.0, vec![frame.clone()]);
            assert_eq!(used_idx(r.mem, TX_USED), 1);
            assert_eq!(used(r.mem, TX_USED, 0), (0, 0));
            assert_eq!(r.irq.count(), 1);
            assert_eq!(r.net.stats().tx_frames, 1);
            assert_eq!(r.net.stats().tx_bytes, 300);
            // Nothing more available: no frame, no interrupt.
            assert_eq!(r.net.process_tx(&mut out).unwrap(), 0);
            assert_eq!(r.irq.count(), 1);
        }
    }

    #[test]
    fn tx_header_and_frame_in_one_descriptor_and_max_size() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            let small = pattern(60, 3);
            r.mem
                .write_slice(&small, GuestAddress(BUF + NET_HDR_LEN as u64))
                .unwrap();
            let big = pattern(MAX_FRAME_LEN, 9);
            r.mem
                .write_slice(&big, GuestAddress(BUF + 0x1_0000 + NET_HDR_LEN as u64))
                .unwrap();
            r.txq
                .add_desc_chains(&[desc(BUF, (NET_HDR_LEN + 60) as u32, 0, 0)], 0)
                .unwrap();
            r.txq
                .add_desc_chains(
                    &[
                        desc(BUF + 0x1_0000, 0x8000, NEXT, 2),
                        desc(BUF + 0x1_8000, (MAX_BUFFER_LEN - 0x8000) as u32, 0, 0),
                    ],
                    1,
                )
                .unwrap();
            let mut out = Frames::default();
            assert_eq!(r.net.process_tx(&mut out).unwrap(), 2);
            assert_eq!(out.0[0], small);
            assert_eq!(out.0[1], big);
            assert_eq!(r.irq.count(), 1, "one interrupt for the batch");
        }
    }

    #[test]
    fn tx_bad_chains_are_dropped_and_counted() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            let chains: Vec<Vec<RawDescriptor>> = vec![
                // A device-writable descriptor.
                vec![desc(BUF, 100, WRITE, 0)],
                // Zero length.
                vec![desc(BUF, 0, 0, 0)],
                // Shorter than the header.
                vec![desc(BUF, 10, 0, 0)],
                // Outside guest memory, and straddling its end.
                vec![desc(0x1000_0000, 100, 0, 0)],
                vec![desc(MEM_SIZE - 10, 100, 0, 0)],
                // One byte over the limit.
                vec![
                    desc(BUF, 0x8000, NEXT, 0),
                    desc(BUF, (MAX_BUFFER_LEN - 0x8000 + 1) as u32, 0, 0),
                ],
                // A loop (a -> b -> a), and a `next` outside the table.
                vec![desc(BUF, 20, NEXT, 0), desc(BUF, 20, NEXT, 0)],
                vec![desc(BUF, 20, NEXT, 200)],
            ];
            let mut offset = 0u16;
            for chain in chains {
                let n = chain.len() as u16;
                // Link each chain's descriptors to their absolute indices.
                let linked: Vec<RawDescriptor> = chain
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let d = SplitDescriptor::from(*d);
                        let next = if d.next() == 200 {
                            200
                        } else if i + 1 < chain.len() {
                            offset + i as u16 + 1
                        } else {
                            offset // loops back to the head
                        };
                        desc(d.addr().0, d.len(), d.flags(), next)
                    })
                    .collect();
                r.txq.add_desc_chains(&linked, offset).unwrap();
                offset += n;
            }
            // An avail entry naming a descriptor past the table.
            let avail_idx = r.txq.avail().idx().load();
            r.txq
                .avail()
                .ring()
                .ref_at(avail_idx as usize)
                .unwrap()
                .store(300);
            r.txq.avail().idx().store(avail_idx + 1);
            // And a good frame after all of that.
            r.mem
                .write_slice(&pattern(64, 5), GuestAddress(BUF + 0x100))
                .unwrap();
            r.txq
                .add_desc_chains(&[desc(BUF + 0x100 - NET_HDR_LEN as u64, 76, 0, 0)], offset)
                .unwrap();

            let mut out = Frames::default();
            assert_eq!(r.net.process_tx(&mut out).unwrap(), 1);
            assert_eq!(out.0, vec![pattern(64, 5)]);
            let s = r.net.stats();
            assert_eq!(s.tx_wrong_direction, 1);
            assert_eq!(s.tx_too_short, 2);
            assert_eq!(s.tx_bad_address, 2);
            assert_eq!(s.tx_too_long, 1);
            assert_eq!(s.tx_malformed, 3);
            assert_eq!(s.bad_heads, 1, "head 300 cannot go on the used ring");
            // Every chain but the bogus head came back, with length 0.
            assert_eq!(used_idx(r.mem, TX_USED), 9);
            for i in 0..9 {
                assert_eq!(used(r.mem, TX_USED, i).1, 0);
            }
            assert_eq!(r.irq.count(), 1);
        }
    }

    #[test]
    fn tx_inconsistent_avail_ring_is_an_error() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.txq.avail().idx().store(QSIZE + 1);
            let mut out = Frames::default();
            assert!(matches!(r.net.process_tx(&mut out), Err(Error::Queue(_))));
            assert_eq!(r.net.stats().ring_errors, 1);
        }
    }

    /// Reads `len` bytes of an RX chain's buffers back in order.
    fn read_back(mem: &GuestMemoryMmap, bufs: &[(u64, usize)], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, cap) in bufs {
            let n = cap.min(len - out.len());
            let mut b = vec![0; n];
            mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend(b);
        }
        out
    }

    #[test]
    fn rx_frame_into_one_buffer() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            assert!(!r.net.rx_has_buffer());
            r.rxq
                .add_desc_chains(&[desc(BUF, 2048, WRITE, 0)], 0)
                .unwrap();
            assert!(r.net.rx_has_buffer());
            let frame = pattern(60, 2);
            assert!(r.net.deliver(&frame).unwrap());
            assert_eq!(used_idx(r.mem, RX_USED), 1);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 72));
            let got = read_back(r.mem, &[(BUF, 2048)], 72);
            assert_eq!(got[..NET_HDR_LEN], RX_HEADER);
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
            assert_eq!(got[NET_HDR_LEN..], frame[..]);
            assert_eq!(r.irq.count(), 1);
            assert_eq!((r.net.stats().rx_frames, r.net.stats().rx_bytes), (1, 60));
            assert!(!r.net.rx_has_buffer());
        }
    }

    #[test]
    fn rx_frame_spans_descriptors() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            // The header itself is split, and so is the frame.
            let bufs = [(BUF, 10usize), (BUF + 0x100, 20), (BUF + 0x200, 100)];
            r.rxq
                .add_desc_chains(
                    &[
                        desc(bufs[0].0, 10, WRITE | NEXT, 1),
                        desc(bufs[1].0, 20, WRITE | NEXT, 2),
                        desc(bufs[2].0, 100, WRITE, 0),
                    ],
                    0,
                )
                .unwrap();
            let frame = pattern(50, 4);
            assert_eq!(r.net.try_deliver(&frame).unwrap(), RxOutcome::Delivered);
            assert_eq!(r.irq.count(), 0, "try_deliver does not interrupt");
            assert!(r.net.signal_rx().unwrap());
            assert!(!r.net.signal_rx().unwrap(), "nothing new");
            assert_eq!(r.irq.count(), 1);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 62));
            let got = read_back(r.mem, &bufs, 62);
            assert_eq!(got[..NET_HDR_LEN], RX_HEADER);
            assert_eq!(got[NET_HDR_LEN..], frame[..]);
        }
    }

    #[test]
    fn rx_largest_frame_across_many_descriptors() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            let descs: Vec<RawDescriptor> = (0..9u16)
                .map(|i| {
                    let flags = if i < 8 { WRITE | NEXT } else { WRITE };
                    desc(BUF + u64::from(i) * 0x2000, 0x2000, flags, i + 1)
                })
                .collect();
            r.rxq.add_desc_chains(&descs, 0).unwrap();
            let frame = pattern(MAX_FRAME_LEN, 6);
            assert!(r.net.deliver(&frame).unwrap());
            assert_eq!(used(r.mem, RX_USED, 0), (0, MAX_BUFFER_LEN as u32));
            let got = read_back(r.mem, &[(BUF, 9 * 0x2000)], MAX_BUFFER_LEN);
            assert_eq!(got[NET_HDR_LEN..], frame[..]);
        }
    }

    #[test]
    fn rx_without_buffers_or_room() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            assert!(!r.net.deliver(&pattern(60, 0)).unwrap());
            assert_eq!(r.net.stats().rx_no_buffer, 1);
            assert_eq!(
                r.net.try_deliver(&vec![0; MAX_FRAME_LEN + 1]).unwrap(),
                RxOutcome::TooLarge
            );
            // A 30-byte buffer: a 60-byte frame does not fit, and the buffer stays for the
            // next frame, which does.
            r.rxq
                .add_desc_chains(&[desc(BUF, 30, WRITE, 0)], 0)
                .unwrap();
            assert_eq!(
                r.net.try_deliver(&pattern(60, 0)).unwrap(),
                RxOutcome::TooLarge
            );
            assert_eq!(used_idx(r.mem, RX_USED), 0);
            assert_eq!(r.net.stats().rx_too_large, 2);
            assert!(r.net.deliver(&pattern(18, 0)).unwrap());
            assert_eq!(used(r.mem, RX_USED, 0), (0, 30));
            assert_eq!(r.irq.count(), 1);
        }
    }

    #[test]
    fn rx_bad_chains_are_dropped_and_the_next_one_used() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            // Device-readable, outside memory, a loop of tiny buffers, then a good one.
            r.rxq.add_desc_chains(&[desc(BUF, 2048, 0, 0)], 0).unwrap();
            r.rxq
                .add_desc_chains(&[desc(0x1000_0000, 2048, WRITE, 0)], 1)
                .unwrap();
            r.rxq
                .add_desc_chains(
                    &[desc(BUF, 4, WRITE | NEXT, 3), desc(BUF, 4, WRITE | NEXT, 2)],
                    2,
                )
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x1000, 2048, WRITE, 0)], 4)
                .unwrap();
            let frame = pattern(100, 8);
            assert!(r.net.deliver(&frame).unwrap());
            let s = r.net.stats();
            assert_eq!(
                (s.rx_wrong_direction, s.rx_bad_address, s.rx_malformed),
                (1, 1, 1)
            );
            assert_eq!(used_idx(r.mem, RX_USED), 4);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 0));
            assert_eq!(used(r.mem, RX_USED, 1), (1, 0));
            assert_eq!(used(r.mem, RX_USED, 2), (2, 0));
            assert_eq!(used(r.mem, RX_USED, 3), (4, 112));
            let got = read_back(r.mem, &[(BUF + 0x1000, 2048)], 112);
            assert_eq!(got[NET_HDR_LEN..], frame[..]);
            assert_eq!(r.irq.count(), 1);
        }
    }

    #[test]
    fn rx_zero_length_buffer_has_no_room() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.rxq.add_desc_chains(&[desc(BUF, 0, WRITE, 0)], 0).unwrap();
            assert!(!r.net.deliver(&pattern(10, 0)).unwrap());
            // A zero-length, well-formed chain has no room: it stays posted.
            assert_eq!(r.net.stats().rx_too_large, 1);
            assert_eq!(used_idx(r.mem, RX_USED), 0);
            assert_eq!(r.irq.count(), 0);
        }
    }
    /// `num_buffers` of the header at the start of `bufs`.
    fn num_buffers(mem: &GuestMemoryMmap, bufs: &[(u64, usize)]) -> u16 {
        let h = read_back(mem, bufs, NET_HDR_LEN);
        u16::from_le_bytes([h[NUM_BUFFERS_OFFSET], h[NUM_BUFFERS_OFFSET + 1]])
    }

    #[test]
    fn rx_mergeable_frame_spans_three_chains() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.net.set_mergeable(true);
            // Chain 0 splits the header over two descriptors; chains 1 and 2 are single.
            r.rxq
                .add_desc_chains(
                    &[
                        desc(BUF, 10, WRITE | NEXT, 1),
                        desc(BUF + 0x100, 30, WRITE, 0),
                    ],
                    0,
                )
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x200, 40, WRITE, 0)], 2)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x300, 64, WRITE, 0)], 3)
                .unwrap();
            let frame = pattern(100, 11);
            assert!(r.net.deliver(&frame).unwrap());
            assert_eq!(used_idx(r.mem, RX_USED), 3);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 40));
            assert_eq!(used(r.mem, RX_USED, 1), (2, 40));
            assert_eq!(used(r.mem, RX_USED, 2), (3, 32));
            let bufs = [
                (BUF, 10usize),
                (BUF + 0x100, 30),
                (BUF + 0x200, 40),
                (BUF + 0x300, 64),
            ];
            assert_eq!(num_buffers(r.mem, &bufs), 3);
            let got = read_back(r.mem, &bufs, 112);
            assert_eq!(got[..NUM_BUFFERS_OFFSET], RX_HEADER[..NUM_BUFFERS_OFFSET]);
            assert_eq!(got[NET_HDR_LEN..], frame[..]);
            assert_eq!(r.irq.count(), 1);
            assert_eq!((r.net.stats().rx_frames, r.net.stats().rx_bytes), (1, 100));
            // A frame that fits one chain says so.
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x1000, 2048, WRITE, 0)], 4)
                .unwrap();
            assert!(r.net.deliver(&pattern(60, 1)).unwrap());
            assert_eq!(used(r.mem, RX_USED, 3), (4, 72));
            assert_eq!(num_buffers(r.mem, &[(BUF + 0x1000, 2048)]), 1);
        }
    }

    #[test]
    fn rx_mergeable_out_of_buffers_puts_chains_back() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.net.set_mergeable(true);
            r.rxq
                .add_desc_chains(&[desc(BUF, 40, WRITE, 0)], 0)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x100, 40, WRITE, 0)], 1)
                .unwrap();
            let frame = pattern(100, 12);
            assert_eq!(r.net.try_deliver(&frame).unwrap(), RxOutcome::NoBuffer);
            assert_eq!(used_idx(r.mem, RX_USED), 0);
            assert!(!r.net.signal_rx().unwrap());
            assert_eq!(r.irq.count(), 0);
            let s = r.net.stats();
            assert_eq!((s.rx_no_buffer, s.rx_frames), (1, 0));
            // The two chains were put back: with a third the frame goes into all three.
            assert!(r.net.rx_has_buffer());
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x200, 40, WRITE, 0)], 2)
                .unwrap();
            assert!(r.net.deliver(&frame).unwrap());
            assert_eq!(used_idx(r.mem, RX_USED), 3);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 40));
            assert_eq!(used(r.mem, RX_USED, 1), (1, 40));
            assert_eq!(used(r.mem, RX_USED, 2), (2, 32));
            let bufs = [(BUF, 40usize), (BUF + 0x100, 40), (BUF + 0x200, 40)];
            assert_eq!(num_buffers(r.mem, &bufs), 3);
            assert_eq!(read_back(r.mem, &bufs, 112)[NET_HDR_LEN..], frame[..]);
            assert!(!r.net.rx_has_buffer());
        }
    }

    #[test]
    fn rx_mergeable_bad_chains_are_dropped_around_the_frame() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.net.set_mergeable(true);
            // Too short for the header (dropped at once), then the frame's first chain, a
            // device-readable one in the middle, a zero-length one, and the frame's end.
            r.rxq.add_desc_chains(&[desc(BUF, 8, WRITE, 0)], 0).unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x100, 40, WRITE, 0)], 1)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x200, 40, 0, 0)], 2)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x300, 0, WRITE, 0)], 3)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x400, 200, WRITE, 0)], 4)
                .unwrap();
            let frame = pattern(100, 13);
            assert!(r.net.deliver(&frame).unwrap());
            assert_eq!(used_idx(r.mem, RX_USED), 5);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 0));
            assert_eq!(used(r.mem, RX_USED, 1), (1, 40));
            assert_eq!(used(r.mem, RX_USED, 2), (4, 72));
            assert_eq!(used(r.mem, RX_USED, 3), (2, 0));
            assert_eq!(used(r.mem, RX_USED, 4), (3, 0));
            let bufs = [(BUF + 0x100, 40usize), (BUF + 0x400, 200)];
            assert_eq!(num_buffers(r.mem, &bufs), 2);
            assert_eq!(read_back(r.mem, &bufs, 112)[NET_HDR_LEN..], frame[..]);
            let s = r.net.stats();
            assert_eq!((s.rx_wrong_direction, s.rx_malformed), (1, 2));
            assert_eq!(r.irq.count(), 1);
        }
    }

    #[test]
    fn rx_mergeable_frame_needing_too_many_chains_is_too_large() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.net.set_mergeable(true);
            // A whole queue of 16-byte chains holds 256 bytes: not a 300-byte frame.
            for i in 0..QSIZE {
                r.rxq
                    .add_desc_chains(&[desc(BUF + u64::from(i) * 0x100, 16, WRITE, 0)], i)
                    .unwrap();
            }
            assert_eq!(
                r.net.try_deliver(&pattern(300, 0)).unwrap(),
                RxOutcome::TooLarge
            );
            assert_eq!(used_idx(r.mem, RX_USED), 0);
            assert_eq!(r.net.stats().rx_too_large, 1);
            // All put back: a small frame takes the first chains.
            assert!(r.net.deliver(&pattern(20, 0)).unwrap());
            assert_eq!(used_idx(r.mem, RX_USED), 2);
            assert_eq!(used(r.mem, RX_USED, 0), (0, 16));
            assert_eq!(used(r.mem, RX_USED, 1), (1, 16));
        }
    }

    #[test]
    fn rx_not_mergeable_never_spans_chains() {
        for transport in TRANSPORTS {
            let mem = memory();
            let mut r = rig(&mem, transport);
            r.rxq
                .add_desc_chains(&[desc(BUF, 40, WRITE, 0)], 0)
                .unwrap();
            r.rxq
                .add_desc_chains(&[desc(BUF + 0x100, 40, WRITE, 0)], 1)
                .unwrap();
            assert_eq!(
                r.net.try_deliver(&pattern(60, 0)).unwrap(),
                RxOutcome::TooLarge
            );
            assert_eq!(used_idx(r.mem, RX_USED), 0);
            assert!(r.net.deliver(&pattern(28, 0)).unwrap());
            assert_eq!(used(r.mem, RX_USED, 0), (0, 40));
            assert_eq!(num_buffers(r.mem, &[(BUF, 40)]), 1);
        }
    }
}
