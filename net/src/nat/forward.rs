//! Port forwards from the host into guests (`--forward`): the listening TCP sockets and bound
//! UDP sockets on the host side. What arrives on them becomes a flow of [`super::tcp`] or
//! [`super::udp`] towards the guest, which sees it come from the gateway.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::sock;
use crate::config::{ForwardProto, PortForward};
use crate::error::{Error, Result};

/// One forward's host socket.
pub struct Forward {
    /// The rule.
    pub rule: PortForward,
    sock: OwnedFd,
}

impl Forward {
    /// The socket's descriptor.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Opens every forward's socket, or none: the first failure is returned naming the rule.
///
/// # Errors
/// [`Error::Io`] naming `--forward` and the host address (in use, not local...).
pub fn open_all(rules: &[PortForward]) -> Result<Vec<Forward>> {
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let what = || {
            let p = match r.proto {
                ForwardProto::Tcp => "tcp",
                ForwardProto::Udp => "udp",
            };
            format!("--forward {p}:{}:{}", r.host, r.guest)
        };
        let s = match r.proto {
            ForwardProto::Tcp => sock::tcp_listener(r.host),
            ForwardProto::Udp => sock::socket(libc::SOCK_DGRAM, 0)
                .and_then(|s| sock::bind(s.as_raw_fd(), r.host).map(|_| s)),
        }
        .map_err(|e| Error::io(what(), e))?;
        out.push(Forward { rule: *r, sock: s });
    }
    Ok(out)
}
