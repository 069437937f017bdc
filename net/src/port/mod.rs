//! The clients of the switch: each port carries Ethernet frames between the network and one
//! attached peer.
//!
//! - [`stream`]: a unix-socket client speaking QEMU's `-netdev stream` format (a 4-byte
//!   big-endian length, then the frame); a listener accepts several at once.
//! - [`tap`]: a Linux TAP device, whose other end is an interface a network namespace (or
//!   anything else on the host) uses.
//!
//! Reading is split from the port: [`RxBuf`] holds what was read, so the event loop can hand
//! each frame to the switch while the port itself stays reachable for replies.

pub mod stream;
pub mod tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub use stream::{StreamListener, StreamPort};
pub use tap::TapPort;

/// Largest frame accepted from or sent to a port: a 65535-byte IP packet plus the Ethernet
/// header. Anything claiming more is a framing error.
pub const MAX_FRAME: usize = 65535 + 14;

/// Counters kept per port.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortStats {
    /// Frames received from the peer.
    pub rx_frames: u64,
    /// Frames sent to the peer.
    pub tx_frames: u64,
    /// Frames not sent because the peer was not keeping up.
    pub tx_dropped: u64,
    /// Frames from the peer that were malformed (too short, too long).
    pub rx_malformed: u64,
}

/// The peer of a port that lives in this process: a VMM's virtio-net device, whose guest
/// memory the network reads and writes through it.
pub trait LocalPeer {
    /// A descriptor that becomes readable when the peer has frames for the switch (the
    /// device's transmit-queue eventfd).
    fn fd(&self) -> RawFd;
    /// Clears the notification and appends the peer's frames to `rx` with
    /// [`RxBuf::push_frame`], each copied once out of guest memory.
    fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus>;
    /// Hands one frame to the peer (the guest's receive queue); the peer drops and counts
    /// it when it has no room.
    fn send(&mut self, frame: &[u8]);
    /// Ends a batch of [`LocalPeer::send`]s: one interrupt for all of them.
    fn flush(&mut self);
    /// Counters.
    fn stats(&self) -> PortStats;
}

/// One port of the switch.
pub enum Port {
    /// A QEMU stream client.
    Stream(StreamPort),
    /// A TAP device.
    Tap(TapPort),
    /// A device in this process.
    Local(Box<dyn LocalPeer>),
}

/// What reading a port found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Frames may be in the buffer; the port stays open.
    Open,
    /// The peer went away or broke the framing: remove the port.
    Closed,
}

impl Port {
    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        match self {
            Port::Stream(s) => s.as_raw_fd(),
            Port::Tap(t) => t.as_raw_fd(),
            Port::Local(l) => l.fd(),
        }
    }

    /// Sends one frame, or counts it dropped when the peer is not keeping up.
    pub fn send(&mut self, frame: &[u8]) {
        match self {
            Port::Stream(s) => s.send(frame),
            Port::Tap(t) => t.send(frame),
            Port::Local(l) => l.send(frame),
        }
    }

    /// Reads what is available into `rx`, bounded per call so that one busy peer cannot
    /// starve the others.
    pub fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus> {
        match self {
            Port::Stream(s) => s.read(rx),
            Port::Tap(t) => t.read(rx),
            Port::Local(l) => l.read(rx),
        }
    }

    /// Writes queued output; true while some remains (the caller then polls for writability).
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Port::Stream(s) => s.flush(),
            Port::Tap(_) => Ok(false),
            Port::Local(l) => {
                l.flush();
                Ok(false)
            }
        }
    }

    /// Whether queued output waits for the descriptor to become writable.
    pub fn wants_write(&self) -> bool {
        match self {
            Port::Stream(s) => s.wants_write(),
            Port::Tap(_) | Port::Local(_) => false,
        }
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        match self {
            Port::Stream(s) => s.stats,
            Port::Tap(t) => t.stats,
            Port::Local(l) => l.stats(),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Port::Stream(_) => "stream client".to_string(),
            Port::Tap(t) => format!("tap {}", t.name()),
            Port::Local(_) => "virtio-net device".to_string(),
        }
    }
}

/// A length prefix larger than [`MAX_FRAME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength(pub usize);

/// Frames read from a port, waiting to be switched.
///
/// For a TAP it holds whole frames one after another, each prefixed by its length; for a
/// stream it holds the byte stream, whose last frame may be incomplete until the next read.
#[derive(Default)]
pub struct RxBuf {
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl RxBuf {
    /// Capacity of one buffer: room for many small frames per read.
    pub const CAPACITY: usize = 4 * MAX_FRAME;

    pub(crate) fn ensure_capacity(&mut self) {
        if self.buf.len() < Self::CAPACITY {
            self.buf.resize(Self::CAPACITY, 0);
        }
    }

    /// Most bytes a buffer grows to when a local peer hands over a burst of frames: a full
    /// 256-entry virtqueue of the largest frames.
    pub const MAX_CAPACITY: usize = 256 * (4 + MAX_FRAME);

    /// Appends one frame, length-prefixed; false (the frame is dropped) when it is larger
    /// than [`MAX_FRAME`] or the buffer is at [`RxBuf::MAX_CAPACITY`].
    pub fn push_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        self.ensure_capacity();
        if self.buf.len() - self.end < 4 + frame.len() {
            self.compact();
            let need = self.end + 4 + frame.len();
            if need > self.buf.len() {
                if need > Self::MAX_CAPACITY {
                    return false;
                }
                self.buf
                    .resize(need.next_power_of_two().min(Self::MAX_CAPACITY), 0);
            }
        }
        self.buf[self.end..self.end + 4].copy_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf[self.end + 4..self.end + 4 + frame.len()].copy_from_slice(frame);
        self.end += 4 + frame.len();
        true
    }

    /// Moves the unread bytes to the front so the next read has room.
    pub(crate) fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next complete length-prefixed frame, if any.
    ///
    /// # Errors
    /// [`BadLength`] when the next length is one no frame can have: the peer does not speak
    /// the protocol, and the stream cannot be resynchronised.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, BadLength> {
        let avail = self.end - self.start;
        if avail < 4 {
            return Ok(None);
        }
        let b = &self.buf[self.start..self.start + 4];
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len > MAX_FRAME {
            return Err(BadLength(len));
        }
        if avail < 4 + len {
            return Ok(None);
        }
        let at = self.start + 4;
        self.start += 4 + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // The slice stays valid: the bytes are not overwritten until the next read.
        }
        Ok(Some(&self.buf[at..at + len]))
    }
}

pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rxbuf_splits_length_prefixed_frames() {
        let mut rx = RxBuf::default();
        rx.ensure_capacity();
        let data = [0, 0, 0, 2, 0xa, 0xb, 0, 0, 0, 3, 1, 2];
        rx.buf[..data.len()].copy_from_slice(&data);
        rx.end = data.len();
        assert_eq!(rx.next_frame().unwrap().unwrap(), &[0xa, 0xb]);
        assert_eq!(rx.next_frame().unwrap(), None);
        rx.compact();
        assert_eq!(rx.start, 0);
        assert_eq!(rx.end, 6);
        rx.buf[6] = 3;
        rx.end = 7;
        assert_eq!(rx.next_frame().unwrap().unwrap(), &[1, 2, 3]);
        rx.buf[..4].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        rx.start = 0;
        rx.end = 4;
        assert!(rx.next_frame().is_err());
    }
}
