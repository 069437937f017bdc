//! The crate's error type.

use std::io;

/// Errors from building or running a network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `field` names the flag or key at fault.
    #[error("{field}: {reason}")]
    Config {
        /// The flag or key, e.g. `--dhcp-range`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An operating-system call failed; `what` says which.
    // The cause is part of the message, so it is not also a `source` (which would print
    // it twice in an error chain).
    #[error("{what}: {error}")]
    Io {
        /// The operation, e.g. `open /dev/net/tun`.
        what: String,
        /// The underlying error.
        error: io::Error,
    },
    /// The lease database on disk could not be read or written.
    #[error("lease database {path}: {reason}")]
    Leases {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            error: source,
        }
    }
}
