//! Local answers: the queries the gateway answers itself, from the [`Names`] table.
//!
//! This module owns the decision "answer, forward or drop" for one query, and the encoding of
//! the local answers. Like dnsmasq for libvirt, the gateway is authoritative for the guests'
//! names (bare, or under the network's domain) and for the reverse names of the subnet; every
//! other well-formed query goes upstream unchanged.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::names::Names;
use super::HEADER_LEN;
use crate::config::Ipv4Subnet;

/// TTL of local answers: 0, like dnsmasq's default `local-ttl`, because guest names follow
/// DHCP leases and may change at any time (RFC 1035 §3.2.1 allows 0: "not cached").
pub const LOCAL_TTL: u32 = 0;

/// The UDP payload size advertised in the OPT record of local answers (RFC 6891 §6.2.3); the
/// DNS flag day 2020 value, which fits any Ethernet MTU without fragmentation.
const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a query received from a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAnswer {
    /// Send this encoded response (RFC 1035 §4.1) back to the guest.
    Answer(Vec<u8>),
    /// Not ours: relay the query, unchanged, to the upstream resolvers.
    Forward,
    /// Malformed, or not a query (QR=1): discard silently, as RFC 1035 §7.3 and §4.1.1 leave
    /// open, so that garbage never reaches the upstreams nor earns the sender a reply.
    Drop,
}

/// Decides what to do with `query`, a DNS message (RFC 1035 §4) from a guest.
///
/// Answered locally (authoritative, TTL [`LOCAL_TTL`]):
/// - class IN questions for a known guest name, bare (`web1`) or under `domain`
///   (`web1.example.lan`): an A record for type A or ANY (RFC 1035 §3.4.1), and NOERROR with
///   no answer for any other type (AAAA, MX, ...), because the name exists with no such data;
/// - any other name under `domain`: NXDOMAIN (the domain is ours; RFC 1035 §4.1.1 RCODE 3),
///   except the domain itself, which exists and gets NOERROR with no answer;
/// - `d.c.b.a.in-addr.arpa` (RFC 1035 §3.5) for an address inside `subnet`: its PTR record
///   when the address has a name, NXDOMAIN when it has not.
///
/// Unknown bare names, reverse names outside `subnet`, other classes and other opcodes are
/// [`LocalAnswer::Forward`]. A message that does not parse, or is a response (QR=1), is
/// [`LocalAnswer::Drop`]. A standard query with more than one question gets FORMERR
/// (RFC 9619 §2: QDCOUNT must be at most 1).
pub fn classify(
    query: &[u8],
    names: &Names,
    domain: Option<&str>,
    subnet: Ipv4Subnet,
) -> LocalAnswer {
    // Cheap checks on the raw header first, so that the flood of responses a spoofing guest
    // could send is dropped without decoding.
    if query.len() < HEADER_LEN
        || query.len() > super::forwarder::MAX_QUERY_LEN
        || query.get(2).is_some_and(|b| b & 0x80 != 0)
    {
        // Oversized queries are dropped before decoding: decoding a crafted 64 KiB message
        // full of compression pointers costs milliseconds of the event loop.
        return LocalAnswer::Drop;
    }
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(e) => {
            tracing::trace!("dns: dropping malformed query: {e}");
            return LocalAnswer::Drop;
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return LocalAnswer::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        // NOTIFY, UPDATE, ...: not ours to judge; the upstream answers them (or refuses).
        return LocalAnswer::Forward;
    }
    let q = match msg.queries.as_slice() {
        // A question-less query (e.g. a DNS cookie refresh, RFC 7873 §5.4) concerns upstream.
        [] => return LocalAnswer::Forward,
        [q] => q,
        _ => return respond(&msg, ResponseCode::FormErr, None, false),
    };
    if q.query_class() != DNSClass::IN {
        // CHAOS "version.bind" and friends: the upstream's business.
        return LocalAnswer::Forward;
    }
    let labels: Vec<&[u8]> = q.name().iter().collect();
    let found = if let Some(ip) = reverse_v4(&labels) {
        if !subnet.contains(ip) {
            return LocalAnswer::Forward;
        }
        match names.by_ip(ip) {
            Some(n) => match fqdn(n, domain) {
                Some(name) => Found::Pointer(name),
                None => return LocalAnswer::Drop,
            },
            None => Found::NxDomain,
        }
    } else {
        match locate(&labels, domain) {
            Place::Outside => return LocalAnswer::Forward,
            Place::Bare(label) => match lookup(names, label) {
                Some(ip) => Found::Address(ip),
                // Not a guest: maybe a name the host's resolver knows (search domains, LLMNR).
                None => return LocalAnswer::Forward,
            },
            Place::InDomain(label) => match lookup(names, label) {
                Some(ip) => Found::Address(ip),
                None => Found::NxDomain,
            },
            Place::Apex => Found::NoData,
            Place::Deeper => Found::NxDomain,
        }
    };
    let qtype = q.query_type();
    let record = match found {
        Found::Address(ip) if matches!(qtype, RecordType::A | RecordType::ANY) => Some(
            Record::from_rdata(q.name().clone(), LOCAL_TTL, RData::A(A(ip))),
        ),
        Found::Pointer(name) if matches!(qtype, RecordType::PTR | RecordType::ANY) => Some(
            Record::from_rdata(q.name().clone(), LOCAL_TTL, RData::PTR(PTR(name))),
        ),
        Found::NxDomain => return respond(&msg, ResponseCode::NXDomain, None, true),
        // The name exists but has no record of this type: NOERROR, empty answer ("NODATA",
        // RFC 2308 §2.2). No SOA goes with it, so the guest does not cache the absence.
        _ => None,
    };
    respond(&msg, ResponseCode::NoError, record, true)
}

/// A SERVFAIL response to `query` (RFC 1035 §4.1.1 RCODE 2), echoing its question: what a
/// TCP client gets when no upstream answered, rather than a silent close. `None` when `query`
/// is not a well-formed query.
pub(crate) fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    match respond(&msg, ResponseCode::ServFail, None, false) {
        LocalAnswer::Answer(b) => Some(b),
        _ => None,
    }
}

/// What the table says about the question's name.
enum Found {
    Address(Ipv4Addr),
    Pointer(Name),
    NoData,
    NxDomain,
}

/// Where a forward name lies relative to the local names.
enum Place<'a> {
    /// One label: a candidate guest name.
    Bare(&'a [u8]),
    /// `label.<domain>`.
    InDomain(&'a [u8]),
    /// The domain itself.
    Apex,
    /// `a.b.<domain>`: under the domain but no guest name.
    Deeper,
    /// Anything else.
    Outside,
}

fn locate<'a>(labels: &[&'a [u8]], domain: Option<&str>) -> Place<'a> {
    if let [label] = labels {
        return Place::Bare(label);
    }
    let Some(domain) = domain
        .map(|d| d.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
    else {
        return Place::Outside;
    };
    let dlabels: Vec<&[u8]> = domain.split('.').map(str::as_bytes).collect();
    let Some(extra) = labels.len().checked_sub(dlabels.len()) else {
        return Place::Outside;
    };
    let (host, tail) = labels.split_at(extra);
    if !tail
        .iter()
        .zip(&dlabels)
        .all(|(a, b)| a.eq_ignore_ascii_case(b))
    {
        return Place::Outside;
    }
    match host {
        [] => Place::Apex,
        [label] => Place::InDomain(label),
        _ => Place::Deeper,
    }
}

fn lookup(names: &Names, label: &[u8]) -> Option<Ipv4Addr> {
    // A label that is not UTF-8 cannot be a host name (RFC 1123 §2.1).
    names.by_name(std::str::from_utf8(label).ok()?)
}

/// The address of `d.c.b.a.in-addr.arpa` (RFC 1035 §3.5), if the name is exactly that, with
/// decimal octets without leading zeros.
fn reverse_v4(labels: &[&[u8]]) -> Option<Ipv4Addr> {
    let [d, c, b, a, inaddr, arpa] = labels else {
        return None;
    };
    if !inaddr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let octet = |l: &[u8]| -> Option<u8> {
        if l.is_empty() || l.len() > 3 || (l.len() > 1 && l[0] == b'0') {
            return None;
        }
        std::str::from_utf8(l).ok()?.parse().ok()
    };
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// `name.<domain>.` or `name.`, the target of a PTR record.
fn fqdn(name: &str, domain: Option<&str>) -> Option<Name> {
    let text = match domain
        .map(|d| d.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
    {
        Some(d) => format!("{name}.{d}."),
        None => format!("{name}."),
    };
    match Name::from_ascii(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("dns: cannot encode local name {text}: {e}");
            None
        }
    }
}

/// Encodes the response to `req` (RFC 1035 §4.1): ID, opcode, RD and CD copied, the question
/// echoed, RA set since the gateway recurses (by forwarding), AA as given.
fn respond(
    req: &Message,
    rcode: ResponseCode,
    answer: Option<Record>,
    authoritative: bool,
) -> LocalAnswer {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = authoritative;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    if rcode != ResponseCode::FormErr {
        resp.add_queries(req.queries.iter().cloned());
    }
    if let Some(edns) = &req.edns {
        // RFC 6891 §6.1.1: a query with OPT gets OPT back; §6.1.3: only version 0 exists.
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        if edns.version() > 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            resp.metadata.authoritative = false;
            resp.set_edns(ours);
            return encode(&resp);
        }
        resp.set_edns(ours);
    }
    if let Some(record) = answer {
        resp.add_answer(record);
    }
    encode(&resp)
}

fn encode(resp: &Message) -> LocalAnswer {
    match resp.to_vec() {
        Ok(bytes) => LocalAnswer::Answer(bytes),
        Err(e) => {
            tracing::warn!("dns: cannot encode local answer: {e}");
            LocalAnswer::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testutil::{as_response, query};
    use hickory_proto::op::Query;

    const WEB1: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);

    fn subnet() -> Ipv4Subnet {
        Ipv4Subnet {
            addr: Ipv4Addr::new(192, 168, 122, 1),
            prefix: 24,
        }
    }

    fn names() -> Names {
        let mut n = Names::new();
        n.insert("web1", WEB1);
        n
    }

    fn ask(name: &str, t: RecordType, domain: Option<&str>) -> LocalAnswer {
        classify(&query(0x4242, name, t), &names(), domain, subnet())
    }

    fn answer(name: &str, t: RecordType, domain: Option<&str>) -> Message {
        match ask(name, t, domain) {
            LocalAnswer::Answer(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{name} {t}: {other:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn answers_a_for_bare_and_domain_names_case_insensitively() {
        for (name, domain) in [
            ("web1.", None),
            ("WeB1.", None),
            ("web1.", Some("example.lan")),
            ("web1.example.lan.", Some("example.lan")),
            ("WEB1.Example.LAN.", Some("example.lan")),
        ] {
            let m = answer(name, RecordType::A, domain);
            assert_eq!(m.metadata.id, 0x4242);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert!(m.metadata.authoritative && m.metadata.recursion_desired);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(a_records(&m), vec![WEB1], "{name}");
            assert_eq!(m.answers[0].ttl, LOCAL_TTL);
            // The owner name and the question are the ones asked, case preserved.
            assert!(m.answers[0].name.eq_case(&Name::from_ascii(name).unwrap()));
            assert_eq!(m.queries.len(), 1);
        }
        assert_eq!(
            a_records(&answer("web1.", RecordType::ANY, None)),
            vec![WEB1]
        );
    }

    #[test]
    fn other_types_for_local_names_are_empty_noerror() {
        for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let m = answer("web1.example.lan.", t, Some("example.lan"));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.answers.is_empty(), "{t}");
        }
        let m = answer("example.lan.", RecordType::SOA, Some("example.lan"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_names_in_our_domain_are_nxdomain_elsewhere_forwarded() {
        for name in ["nope.example.lan.", "a.web1.example.lan."] {
            let m = answer(name, RecordType::A, Some("example.lan"));
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty());
        }
        assert_eq!(ask("nope.", RecordType::A, None), LocalAnswer::Forward);
        assert_eq!(
            ask("nope.", RecordType::A, Some("example.lan")),
            LocalAnswer::Forward
        );
        assert_eq!(
            ask("web1.example.com.", RecordType::A, Some("example.lan")),
            LocalAnswer::Forward
        );
        assert_eq!(
            ask("web1.example.lan.", RecordType::A, None),
            LocalAnswer::Forward
        );
        assert_eq!(
            ask("lan.", RecordType::A, Some("example.lan")),
            LocalAnswer::Forward
        );
        assert_eq!(
            ask("example.com.", RecordType::A, None),
            LocalAnswer::Forward
        );
    }

    #[test]
    fn ptr_inside_subnet_is_local_outside_forwarded() {
        let m = answer("10.122.168.192.in-addr.arpa.", RecordType::PTR, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        match &m.answers[..] {
            [r] => match &r.data {
                RData::PTR(p) => assert_eq!(p.0, Name::from_ascii("web1.").unwrap()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let m = answer(
            "10.122.168.192.IN-ADDR.ARPA.",
            RecordType::PTR,
            Some("example.lan"),
        );
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0, Name::from_ascii("web1.example.lan.").unwrap()),
            other => panic!("{other:?}"),
        }
        let m = answer("11.122.168.192.in-addr.arpa.", RecordType::PTR, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            ask("8.8.8.8.in-addr.arpa.", RecordType::PTR, None),
            LocalAnswer::Forward
        );
        // Not an address: the zone apex, leading zeros.
        for name in ["122.168.192.in-addr.arpa.", "010.122.168.192.in-addr.arpa."] {
            assert_eq!(ask(name, RecordType::PTR, None), LocalAnswer::Forward);
        }
    }

    #[test]
    fn garbage_truncated_and_responses_are_dropped() {
        let q = query(1, "web1.", RecordType::A);
        let n = names();
        let c = |b: &[u8]| classify(b, &n, None, subnet());
        assert_eq!(c(&[]), LocalAnswer::Drop);
        assert_eq!(c(&q[..11]), LocalAnswer::Drop);
        assert_eq!(c(&q[..q.len() - 2]), LocalAnswer::Drop);
        assert_eq!(c(&as_response(&q)), LocalAnswer::Drop);
        assert_eq!(c(&[0xff; 64]), LocalAnswer::Drop);
        // QDCOUNT says 1 but no question follows.
        assert_eq!(c(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), LocalAnswer::Drop);
        // A compression pointer to itself in the question name.
        let mut looped = q[..HEADER_LEN].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(c(&looped), LocalAnswer::Drop);
        // Every prefix and a sprinkle of flipped bytes: never a panic.
        for i in 0..q.len() {
            let _ = c(&q[..i]);
            let mut f = q.clone();
            f[i] ^= 0xa5;
            let _ = c(&f);
        }
    }

    #[test]
    fn several_questions_formerr_and_edns_is_echoed() {
        let mut m = Message::new(9, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("web1.").unwrap(),
            RecordType::A,
        ));
        m.add_query(Query::query(
            Name::from_ascii("web2.").unwrap(),
            RecordType::A,
        ));
        let LocalAnswer::Answer(b) = classify(&m.to_vec().unwrap(), &names(), None, subnet())
        else {
            panic!("no FORMERR");
        };
        let r = Message::from_vec(&b).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, 9);

        let mut m = Message::new(10, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("web1.").unwrap(),
            RecordType::A,
        ));
        m.set_edns(Edns::new());
        let LocalAnswer::Answer(b) = classify(&m.to_vec().unwrap(), &names(), None, subnet())
        else {
            panic!("no answer");
        };
        let r = Message::from_vec(&b).unwrap();
        assert!(r.edns.is_some());
        assert_eq!(a_records(&r), vec![WEB1]);

        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let LocalAnswer::Answer(b) = classify(&m.to_vec().unwrap(), &names(), None, subnet())
        else {
            panic!("no answer");
        };
        let r = Message::from_vec(&b).unwrap();
        // BADVERS is 16, which hickory decodes as its homonym BADSIG (RFC 6891 §9, RFC 8945).
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert!(r.edns.is_some());
        assert!(r.answers.is_empty());
    }

    #[test]
    fn other_classes_and_opcodes_are_forwarded() {
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        let mut q = Query::query(Name::from_ascii("web1.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        m.add_query(q);
        assert_eq!(
            classify(&m.to_vec().unwrap(), &names(), None, subnet()),
            LocalAnswer::Forward
        );
        let mut m = Message::new(4, MessageType::Query, OpCode::Notify);
        m.add_query(Query::query(
            Name::from_ascii("web1.").unwrap(),
            RecordType::SOA,
        ));
        assert_eq!(
            classify(&m.to_vec().unwrap(), &names(), None, subnet()),
            LocalAnswer::Forward
        );
    }
}
