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

/// Collects transmitted frames into the switch's receive buffer (both transports of the
/// virtio-net queue logic use it).
pub(crate) struct Collect<'a> {
    pub(crate) rx: &'a mut RxBuf,
    pub(crate) stats: &'a mut PortStats,
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

/// `--net socket=PATH`: the card is a client of a network that `skiff net serve --socket`
/// runs (QEMU's stream framing). Frames are bridged on the calling thread until the VM ends.
pub struct SocketBridge {
    port: net::port::StreamPort,
    path: std::path::PathBuf,
}

impl SocketBridge {
    /// Connects to the network's socket.
    ///
    /// # Errors
    /// The socket cannot be reached; the message names `--net socket=PATH`.
    pub fn connect(path: &std::path::Path) -> Result<Self, super::Error> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| super::Error::Config(format!("--net socket={}: {e}", path.display())))?;
        s.set_nonblocking(true)
            .map_err(|e| super::Error::Config(format!("--net socket={}: {e}", path.display())))?;
        Ok(SocketBridge {
            port: net::port::StreamPort::new(s),
            path: path.to_path_buf(),
        })
    }

    /// Moves frames both ways until `exits` says the VM ended.
    pub fn run(mut self, mut card: VirtioNetPort, exits: &super::exit::Exits) {
        let mut from_net = RxBuf::default();
        let mut from_guest = RxBuf::default();
        let mut connected = true;
        while !exits.ended() {
            let sock_events = if !connected {
                0
            } else if self.port.wants_write() {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            let mut fds = [
                libc::pollfd {
                    fd: exits.evt.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: card.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if connected { self.port.as_raw_fd() } else { -1 },
                    events: sock_events,
                    revents: 0,
                },
            ];
            // SAFETY: polls live descriptors (a negative fd is ignored by poll).
            unsafe { libc::poll(fds.as_mut_ptr(), 3, 1000) };
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = card.read(&mut from_guest);
                while let Ok(Some(frame)) = from_guest.next_frame() {
                    if connected {
                        self.port.send(frame);
                    }
                }
            }
            if connected && fds[2].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                let open = matches!(self.port.read(&mut from_net), Ok(ReadStatus::Open));
                loop {
                    match from_net.next_frame() {
                        Ok(Some(frame)) => card.send(frame),
                        Ok(None) => break,
                        Err(_) => {
                            connected = false;
                            break;
                        }
                    }
                }
                card.flush();
                if !open || !connected {
                    connected = false;
                    tracing::warn!(
                        "--net socket={}: the network went away",
                        self.path.display()
                    );
                }
            }
            if connected && self.port.wants_write() && self.port.flush().is_err() {
                connected = false;
            }
        }
    }
}
