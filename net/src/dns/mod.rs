//! DNS at the gateway, like the dnsmasq libvirt runs for its default network (RFC 1035).
//!
//! The module owns the DNS service's logic, not its framing on the guest network:
//! - [`names`]: the table of guest host names, shared with the TCP thread;
//! - [`local`]: [`classify`], which answers queries for guest names (and their reverse
//!   `in-addr.arpa` names inside the subnet) and sorts the rest into forward or drop;
//! - [`forwarder`]: the nonblocking UDP [`Forwarder`] the event loop drives, which relays
//!   queries byte-for-byte to the upstream resolvers and matches their responses;
//! - [`tcp`]: DNS over TCP (RFC 1035 §4.2.2, RFC 7766) on a thread of its own, off the data path;
//! - [`resolv`]: the host's upstream resolvers from `/etc/resolv.conf`.
//!
//! Receiving UDP datagrams on the gateway's port 53 and sending the answers back to guests is
//! the gateway's job: it calls [`classify`], then [`Forwarder::submit`] for [`LocalAnswer::Forward`],
//! and [`Forwarder::on_readable`] / [`Forwarder::on_timer`] from the event loop.
//!
//! Everything a guest sends is hostile: parsing is done by `hickory-proto`'s bounds-checked
//! decoder, malformed queries are dropped, and every table has a fixed bound.

pub mod forwarder;
pub mod local;
pub mod names;
pub mod resolv;
pub mod tcp;

pub use forwarder::{Client, DnsStats, Forwarder};
pub use local::{classify, LocalAnswer};
pub use names::{Names, SharedNames};
pub use resolv::upstreams_from_resolv_conf;
pub use tcp::spawn_tcp_server;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

use hickory_proto::op::{Header, MessageType, Query};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// The DNS port (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;

/// Length of the fixed message header (RFC 1035 §4.1.1).
pub(crate) const HEADER_LEN: usize = 12;

/// What identifies a message for matching a response to its query: the ID and a keyed hash of
/// the question section (RFC 1035 §4.1.1, §4.1.2; RFC 5452 §9.1 asks resolvers to check both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageKey {
    /// The header's ID.
    pub id: u16,
    /// QR: the message is a response.
    pub response: bool,
    /// Hash of the question count and the questions, names compared case-insensitively
    /// (RFC 1035 §2.3.3; upstreams may echo the name in another case, RFC draft "0x20").
    pub questions: u64,
}

/// Reads the header and question section of `msg` (only those: a response's records are not
/// decoded, they are relayed unchanged). `None` when they do not parse.
///
/// The hash is keyed by `keys` so that a guest cannot choose colliding questions, and only the
/// hash is kept per pending query, so a query with many questions costs no more memory.
pub(crate) fn message_key(msg: &[u8], keys: &RandomState) -> Option<MessageKey> {
    let mut d = BinDecoder::new(msg);
    let header = Header::read(&mut d).ok()?;
    let mut h = keys.build_hasher();
    header.counts.queries.hash(&mut h);
    for _ in 0..header.counts.queries {
        // Each question takes at least 5 bytes, so this loop ends with the message.
        Query::read(&mut d).ok()?.hash(&mut h);
    }
    Some(MessageKey {
        id: header.metadata.id,
        response: header.metadata.message_type == MessageType::Response,
        questions: h.finish(),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders of test messages.

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    /// A query for `name` of type `rtype` with ID `id`, RD set.
    pub fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    /// The same message with the QR bit set: what the test upstreams answer.
    pub fn as_response(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;

    #[test]
    fn message_key_ignores_case_and_reads_qr() {
        let keys = RandomState::new();
        let q = testutil::query(7, "Example.COM.", RecordType::A);
        let r = testutil::as_response(&testutil::query(7, "example.com.", RecordType::A));
        let (kq, kr) = (
            message_key(&q, &keys).unwrap(),
            message_key(&r, &keys).unwrap(),
        );
        assert_eq!(kq.id, 7);
        assert!(!kq.response && kr.response);
        assert_eq!(kq.questions, kr.questions);
        let other = testutil::query(7, "example.com.", RecordType::AAAA);
        assert_ne!(message_key(&other, &keys).unwrap().questions, kq.questions);
        assert!(message_key(&q[..q.len() - 1], &keys).is_none());
        assert!(message_key(&[], &keys).is_none());
    }
}
