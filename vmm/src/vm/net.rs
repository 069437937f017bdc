//! The VM's virtio-net device as a port of the NAT switch running in this process: the
//! device's transmit notifications wake the network's event loop, which copies each frame
//! out of guest memory once and switches it; frames for the guest go straight into the
//! buffers it posted, with one interrupt per batch.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use devices::virtio::net::{NetBackend, NetHandle, RxOutcome};
use net::port::{LocalPeer, PortStats, ReadStatus, RxBuf};

/// The port side of a virtio-net device.
pub struct VirtioNetPort {
    handle: NetHandle,
    pending_signal: bool,
    stats: PortStats,
}

impl VirtioNetPort {
    /// Wraps the event-loop handle of a device.
    pub fn new(handle: NetHandle) -> Self {
        VirtioNetPort {
            handle,
            pending_signal: false,
            stats: PortStats::default(),
        }
    }
}

/// Collects transmitted frames into the switch's receive buffer.
struct Collect<'a> {
    rx: &'a mut RxBuf,
    stats: &'a mut PortStats,
}

impl NetBackend for Collect<'_> {
    fn send(&mut self, frame: &[u8]) {
        if self.rx.push_frame(frame) {
            self.stats.rx_frames += 1;
        } else {
            self.stats.rx_malformed += 1;
        }
    }
}

impl LocalPeer for VirtioNetPort {
    fn fd(&self) -> RawFd {
        self.handle.tx_evt().as_raw_fd()
    }

    fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus> {
        // Clear the notification first: a kick that comes after is seen next time.
        let _ = self.handle.tx_evt().read();
        let stats = &mut self.stats;
        let r = self.handle.with_queues(|q| {
            let mut c = Collect { rx, stats };
            q.process_tx(&mut c)
        });
        if let Some(Err(e)) = r {
            tracing::warn!("virtio-net: transmit queue: {e}");
        }
        Ok(ReadStatus::Open)
    }

    fn send(&mut self, frame: &[u8]) {
        match self.handle.with_queues(|q| q.try_deliver(frame)) {
            Some(Ok(RxOutcome::Delivered)) => {
                self.stats.tx_frames += 1;
                self.pending_signal = true;
            }
            _ => self.stats.tx_dropped += 1,
        }
    }

    fn flush(&mut self) {
        if std::mem::take(&mut self.pending_signal) {
            if let Some(Err(e)) = self.handle.with_queues(|q| q.signal_rx()) {
                tracing::warn!("virtio-net: interrupt: {e}");
            }
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}
