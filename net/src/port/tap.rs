//! A Linux TAP device as a switch port (`--tap NAME`): frames written to the descriptor come
//! out of the interface NAME, and what the interface sends is read back. The interface can
//! be moved into a network namespace after it is opened; the descriptor stays valid.
//!
//! Creating a TAP needs CAP_NET_ADMIN; attaching to a persistent TAP that the user owns
//! (`ip tuntap add NAME mode tap user USER`) does not.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{set_nonblocking, would_block, PortStats, ReadStatus, RxBuf, MAX_FRAME};
use crate::error::{Error, Result};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Frames read per readiness event before other descriptors get their turn.
const READ_BUDGET: usize = 64;

/// `struct ifreq` with the flags member of its union (linux/if.h).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device.
pub struct TapPort {
    file: File,
    name: String,
    /// Counters.
    pub stats: PortStats,
}

impl TapPort {
    /// Opens (creating if needed) the TAP device `name`, without packet information headers.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad name; [`Error::Io`] naming `--tap NAME` when
    /// /dev/net/tun cannot be opened or the device cannot be created or attached
    /// (EPERM: no CAP_NET_ADMIN and not the owner of a persistent TAP).
    pub fn open(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(Error::config(
                "--tap",
                format!("'{name}' is not an interface name (1-15 characters)"),
            ));
        }
        let what = || format!("--tap {name}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| Error::io(format!("--tap {name}: open /dev/net/tun"), e))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(Error::io(what(), io::Error::last_os_error()));
        }
        set_nonblocking(file.as_raw_fd()).map_err(|e| Error::io(what(), e))?;
        Ok(TapPort {
            file,
            name: name.to_string(),
            stats: PortStats::default(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one frame; a full device queue drops it (counted).
    pub fn send(&mut self, frame: &[u8]) {
        // SAFETY: writes `frame.len()` bytes from a live slice.
        let n = unsafe {
            libc::write(
                self.file.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
            )
        };
        if n < 0 {
            self.stats.tx_dropped += 1;
        } else {
            self.stats.tx_frames += 1;
        }
    }

    /// Reads up to a budget of frames into `rx`, each stored length-prefixed like a stream's.
    pub fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus> {
        rx.ensure_capacity();
        rx.compact();
        for _ in 0..READ_BUDGET {
            if rx.buf.len() - rx.end < 4 + MAX_FRAME {
                break;
            }
            let at = rx.end + 4;
            // SAFETY: reads at most MAX_FRAME bytes into the buffer's free tail, which is at
            // least that long (checked above).
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    rx.buf[at..].as_mut_ptr() as *mut libc::c_void,
                    MAX_FRAME,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if would_block(&e) || e.kind() == io::ErrorKind::Interrupted {
                    break;
                }
                return Err(e);
            }
            let n = n as usize;
            rx.buf[rx.end..at].copy_from_slice(&(n as u32).to_be_bytes());
            rx.end = at + n;
            self.stats.rx_frames += 1;
        }
        Ok(ReadStatus::Open)
    }
}

impl AsRawFd for TapPort {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for n in ["", "a/b", "0123456789abcdefg"] {
            let e = TapPort::open(n).err().unwrap().to_string();
            assert!(e.starts_with("--tap"), "{e}");
        }
    }
}
