//! The DHCP server's protocol logic (RFC 2131 §4.3): one client message in, at most one
//! reply out.
//!
//! This file owns address selection, pending offers, quarantined (declined) addresses,
//! the reply's options and destination, and the counters. Which address is bound to
//! whom, and its persistence, is [`super::leases`]'s business.
//!
//! Everything a guest sends is untrusted: the message is length- and shape-checked by
//! hand before `dhcproto` sees it, only the handful of options the server reads are
//! handed to the decoder, and every table that a message can grow has a fixed bound.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::leases::{self, Lease, LeaseDb};
use crate::config::{MacAddr, NetworkConfig, StaticHost};
use crate::error::Result;

/// How long an offered address stays reserved for the client it was offered to
/// (RFC 2131 §4.3.1 leaves it to the server; clients retransmit within seconds).
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long a declined address is left unused (RFC 2131 §4.3.3: the server "MUST mark
/// the network address as not available"; dnsmasq uses ten minutes too).
const DECLINE_QUARANTINE: Duration = Duration::from_secs(600);
/// Most offers pending at once. A guest can spoof source MACs, so offers are bounded
/// independently of the range; the oldest offer is dropped first.
const MAX_OFFERS: usize = 64;
/// The fixed BOOTP header: op .. file (RFC 2131 §2, figure 1).
const BOOTP_HEADER_LEN: usize = 236;
/// RFC 2131 §3 / RFC 2132 §2 magic cookie in front of the options.
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Least time between two writes of the lease file. Every binding change is written,
/// but a guest sending a stream of requests must not turn each into an fsync that
/// stalls the network's single thread; changes within the interval are written by the
/// next change or [`DhcpServer::expire`] after it, or when the server is dropped.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Replies are padded to the BOOTP minimum, which some clients require (RFC 1542 §2.1).
const MIN_REPLY_LEN: usize = 300;
/// The options the server reads, in the order they are handed to the decoder: the
/// ones that decide what happens come first, so a badly encoded host name cannot
/// hide them (the decoder stops at the first option it cannot parse).
const READ_OPTIONS: [u8; 4] = [53, 54, 50, 12];

/// A reply to send back to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpReply {
    /// The encoded DHCP message (UDP payload, from port 67 to port 68).
    pub payload: Vec<u8>,
    /// IP destination, chosen per RFC 2131 §4.1: NAKs are broadcast; otherwise unicast
    /// to `ciaddr` when the client has one (renewing, rebinding, INFORM); else broadcast
    /// when the client set the broadcast flag; else unicast to `yiaddr`, which needs no
    /// ARP here since the caller addresses the frame to `dst_mac` directly.
    ///
    /// Relayed requests (nonzero `giaddr`) are never answered: there are no relays on
    /// this single L2 segment, and a guest posing as one would only redirect replies.
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination: the client's `chaddr`, or ff:ff:ff:ff:ff:ff when `dst_ip` is
    /// the broadcast address.
    pub dst_mac: MacAddr,
}

/// Counters of what the server did with the messages it was given.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct DhcpStats {
    /// Not a DHCP client message (RFC 2131 §2, §3): too short, not BOOTREQUEST, not
    /// Ethernet (`htype` 1, `hlen` 6), no magic cookie, no or unusable message type, or
    /// a REQUEST that names no address.
    pub malformed: u64,
    /// Well-formed but deliberately not answered: `chaddr` differs from the frame's
    /// source MAC (spoofing), relayed (`giaddr` set), a message type a server does not
    /// take, a REQUEST choosing another server (RFC 2131 §4.3.2), a RELEASE or DECLINE
    /// for an address the client does not hold, or an INFORM from outside the subnet.
    pub ignored: u64,
    /// DHCPOFFERs sent (§4.3.1).
    pub offers: u64,
    /// DHCPACKs sent for a REQUEST (§4.3.2), i.e. leases bound or extended.
    pub acks: u64,
    /// DHCPNAKs sent (§4.3.2).
    pub naks: u64,
    /// Leases freed by a DHCPRELEASE (§4.3.4).
    pub releases: u64,
    /// Addresses quarantined after a DHCPDECLINE (§4.3.3).
    pub declines: u64,
    /// DHCPINFORMs answered (§4.3.5).
    pub informs: u64,
    /// DHCPDISCOVERs left unanswered because no address was free (§4.3.1).
    pub exhausted: u64,
}

/// An address offered to a client and held for it until `until`.
#[derive(Clone, Copy, Debug)]
struct Offer {
    ip: Ipv4Addr,
    until: SystemTime,
}

/// Why a message was dropped before any protocol logic ran.
#[derive(Debug)]
enum Reject {
    Malformed(&'static str),
    Ignored(&'static str),
}

/// The parts of a client message the server acts on.
#[derive(Debug)]
struct Request {
    msg: Message,
    kind: MessageType,
    mac: MacAddr,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    hostname: Option<String>,
}

/// The DHCPv4 server of one network: RFC 2131 server behaviour with RFC 2132 options,
/// authoritative for the subnet like libvirt's dnsmasq (`dhcp-authoritative`).
#[derive(Debug)]
pub struct DhcpServer {
    cfg: NetworkConfig,
    db: LeaseDb,
    /// Pending offers by client, at most [`MAX_OFFERS`].
    offers: HashMap<MacAddr, Offer>,
    /// Declined addresses and when they may be used again; only addresses the decliner
    /// held, so bounded by the range plus the static hosts.
    declined: HashMap<Ipv4Addr, SystemTime>,
    stats: DhcpStats,
    /// Set after warning that the range is exhausted, cleared by the next offer.
    short_warned: bool,
    /// The lease table changed since it was last written.
    dirty: bool,
    /// When the lease file was last written (or a write was attempted).
    last_save: Option<SystemTime>,
}

impl Drop for DhcpServer {
    /// Writes any lease change still held back by the write limit.
    fn drop(&mut self) {
        self.flush(SystemTime::now(), true);
    }
}

impl DhcpServer {
    /// Creates the server, loading leases from `cfg.state_dir/leases.json` (RFC 2131
    /// §2.1: bindings are kept in persistent storage). A missing file is an empty table;
    /// `state_dir` is created if missing. Stored leases that no longer fit the
    /// configuration are dropped, and ones already expired (by the system clock) are only
    /// remembered as the MAC's preferred address.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the directory cannot be created; [`crate::Error::Leases`]
    /// naming the file when it cannot be read or parsed.
    pub fn new(cfg: &NetworkConfig) -> Result<Self> {
        let now = SystemTime::now();
        let db = LeaseDb::open(&cfg.state_dir, now, |l| lease_fits(cfg, l))?;
        tracing::debug!(
            "DHCP server for {}/{}: {} lease(s) loaded from {}",
            cfg.subnet.network(),
            cfg.subnet.prefix,
            db.len(),
            db.path().display()
        );
        Ok(DhcpServer {
            cfg: cfg.clone(),
            db,
            offers: HashMap::new(),
            declined: HashMap::new(),
            stats: DhcpStats::default(),
            short_warned: false,
            dirty: false,
            last_save: None,
        })
    }

    /// Handles one DHCP message (the UDP payload of a datagram sent to port 67) that
    /// arrived in an Ethernet frame from `src_mac`, per RFC 2131 §4.3. Returns the reply
    /// to send, if any. Never panics; bad input is dropped and counted in [`Self::stats`].
    pub fn handle(
        &mut self,
        payload: &[u8],
        src_mac: MacAddr,
        now: SystemTime,
    ) -> Option<DhcpReply> {
        let req = match parse(payload, src_mac) {
            Ok(r) => r,
            Err(Reject::Malformed(why)) => {
                self.stats.malformed += 1;
                tracing::debug!("DHCP: dropping message from {src_mac}: {why}");
                return None;
            }
            Err(Reject::Ignored(why)) => {
                self.stats.ignored += 1;
                tracing::debug!("DHCP: ignoring message from {src_mac}: {why}");
                return None;
            }
        };
        match req.kind {
            MessageType::Discover => self.discover(&req, now),
            MessageType::Request => self.request(&req, now),
            MessageType::Decline => {
                self.decline(&req, now);
                None
            }
            MessageType::Release => {
                self.release(&req, now);
                None
            }
            MessageType::Inform => self.inform(&req),
            other => {
                self.stats.ignored += 1;
                tracing::debug!("DHCP: ignoring {other:?} from {}", req.mac);
                None
            }
        }
    }

    /// Drops leases that ran out at `now` (RFC 2131 §2.2: leases are for a finite time),
    /// along with stale offers and quarantines. A MAC whose lease expired keeps its
    /// address as a preference and gets it again if it is still free when it comes back.
    ///
    /// Call it periodically (every few seconds): it also writes lease changes that were
    /// held back by the limit of one write per [`SAVE_INTERVAL`].
    pub fn expire(&mut self, now: SystemTime) {
        let gone = self.db.expire(now);
        for l in &gone {
            tracing::info!(
                "lease {} to {}{} expired",
                l.ip,
                l.mac,
                name_suffix(l.hostname.as_deref())
            );
        }
        self.offers.retain(|_, o| o.until > now);
        self.declined.retain(|_, until| *until > now);
        if !gone.is_empty() {
            self.dirty = true;
        }
        self.flush(now, false);
    }

    /// Current leases in address order (RFC 2131 §2.2 leases): MAC, address, host name
    /// and expiry. Includes leases past their expiry until [`Self::expire`] runs.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.db.iter()
    }

    /// The address of host `name` for DNS: static hosts' names first, then the names
    /// clients gave in option 12 (RFC 2132 §3.14). Case-insensitive, bare label.
    pub fn lookup_name(&self, name: &str) -> Option<Ipv4Addr> {
        if let Some(h) = self.cfg.static_hosts.iter().find(|h| {
            h.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        }) {
            return Some(h.ip);
        }
        self.db.lookup_name(&name.to_ascii_lowercase())
    }

    /// The host name of `ip` for DNS PTR answers: a static host's name, else the name its
    /// lease holder gave in option 12 (RFC 2132 §3.14).
    pub fn lookup_ip(&self, ip: Ipv4Addr) -> Option<&str> {
        if let Some(n) = self
            .cfg
            .static_hosts
            .iter()
            .find(|h| h.ip == ip)
            .and_then(|h| h.name.as_deref())
        {
            return Some(n);
        }
        self.db.by_ip(ip).and_then(|l| l.hostname.as_deref())
    }

    /// The counters.
    pub fn stats(&self) -> &DhcpStats {
        &self.stats
    }

    /// Increments each time the set of (name, address) pairs from leases changes, so the
    /// DNS side can refresh its table cheaply. Compare with the last value seen.
    pub fn generation(&self) -> u64 {
        self.db.generation()
    }

    /// DHCPDISCOVER → DHCPOFFER (RFC 2131 §4.3.1), address chosen by [`Self::choose`].
    fn discover(&mut self, req: &Request, now: SystemTime) -> Option<DhcpReply> {
        let Some(ip) = self.choose(req.mac, req.requested, now) else {
            self.stats.exhausted += 1;
            // Warn once per shortage, not once per DISCOVER: clients retry every few
            // seconds and a guest could flood the log.
            if !self.short_warned {
                self.short_warned = true;
                tracing::warn!("DHCP: no address available for {}", req.mac);
            }
            return None;
        };
        self.short_warned = false;
        self.reserve(req.mac, ip, now);
        self.stats.offers += 1;
        tracing::debug!("DHCP: offering {ip} to {}", req.mac);
        let name = self.static_for_mac(req.mac).and_then(|h| h.name.clone());
        self.reply(req, MessageType::Offer, ip, true, name.as_deref())
    }

    /// The address to offer `mac`, in RFC 2131 §4.3.1's order of preference: its static
    /// address; its current binding; the address already offered to it; its previous
    /// (expired or released) binding; the address it asks for (option 50); else the
    /// lowest free address, avoiding other clients' previous addresses while possible.
    fn choose(
        &self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> Option<Ipv4Addr> {
        if let Some(h) = self.static_for_mac(mac) {
            return Some(h.ip);
        }
        let candidates = [
            self.db.by_mac(mac).map(|l| l.ip),
            self.offers.get(&mac).map(|o| o.ip),
            self.db.previous(mac),
            requested,
        ];
        if let Some(ip) = candidates
            .into_iter()
            .flatten()
            .find(|ip| self.free_for(*ip, mac, now))
        {
            return Some(ip);
        }
        self.lowest_free(mac, now, true)
            .or_else(|| self.lowest_free(mac, now, false))
    }

    /// The lowest address of the range free for `mac`. The scan stops at the first free
    /// address, so it costs one step per address in use before it.
    fn lowest_free(
        &self,
        mac: MacAddr,
        now: SystemTime,
        skip_remembered: bool,
    ) -> Option<Ipv4Addr> {
        let (first, last) = self.cfg.dhcp_range;
        (u32::from(first)..=u32::from(last))
            .map(Ipv4Addr::from)
            .find(|ip| {
                self.free_for(*ip, mac, now)
                    && !(skip_remembered && self.db.remembered_for_other(*ip, mac))
            })
    }

    /// Holds `ip` for `mac` for [`OFFER_HOLD`], evicting the oldest offer when full.
    fn reserve(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) {
        if !self.offers.contains_key(&mac) && self.offers.len() >= MAX_OFFERS {
            self.offers.retain(|_, o| o.until > now);
            if self.offers.len() >= MAX_OFFERS {
                if let Some(oldest) = self
                    .offers
                    .iter()
                    .min_by_key(|(_, o)| o.until)
                    .map(|(m, _)| *m)
                {
                    self.offers.remove(&oldest);
                }
            }
        }
        self.offers.insert(
            mac,
            Offer {
                ip,
                until: leases::after(now, OFFER_HOLD),
            },
        );
    }

    /// DHCPREQUEST → DHCPACK or DHCPNAK (RFC 2131 §4.3.2), by client state:
    /// - SELECTING (server id present): ours → ACK the requested address if it may be
    ///   this client's, else NAK; another server's → forget our offer, stay silent;
    /// - INIT-REBOOT (option 50, no server id): ACK if the address may be this client's,
    ///   NAK otherwise (wrong subnet, someone else's);
    /// - RENEWING / REBINDING (`ciaddr` set, neither option): ACK extending the lease if
    ///   `ciaddr` may be this client's, NAK otherwise.
    ///
    /// "May be this client's" is [`Self::allowed_for`]: its static address, its lease,
    /// or a free address of the range. Being authoritative like libvirt's dnsmasq, a
    /// client that lost its lease with our state (a deleted lease file) keeps its address.
    fn request(&mut self, req: &Request, now: SystemTime) -> Option<DhcpReply> {
        let ciaddr = nonzero(req.msg.ciaddr());
        let ip = match (req.server_id, req.requested) {
            (Some(sid), _) if sid != self.cfg.gateway() => {
                // §4.3.2: the client chose another server; our offer is void.
                self.offers.remove(&req.mac);
                self.stats.ignored += 1;
                tracing::debug!("DHCP: {} chose server {sid}", req.mac);
                return None;
            }
            (Some(_), requested) => requested.or(ciaddr),
            (None, Some(requested)) => Some(requested),
            (None, None) => ciaddr,
        };
        let Some(ip) = ip else {
            self.stats.malformed += 1;
            tracing::debug!("DHCP: REQUEST from {} names no address", req.mac);
            return None;
        };
        if !self.allowed_for(ip, req.mac, now) {
            return self.nak(req, ip);
        }
        self.bind(req, ip, now)
    }

    /// Binds `ip` to the requesting client and ACKs it (RFC 2131 §4.3.2).
    fn bind(&mut self, req: &Request, ip: Ipv4Addr, now: SystemTime) -> Option<DhcpReply> {
        let static_name = self.static_for_mac(req.mac).and_then(|h| h.name.clone());
        let hostname = static_name.clone().or_else(|| {
            // A client may not take a static host's name (DNS would become ambiguous);
            // a renewal without option 12 keeps the name given before.
            let own = req.hostname.clone().filter(|n| {
                !self
                    .cfg
                    .static_hosts
                    .iter()
                    .any(|h| h.name.as_deref() == Some(n.as_str()))
            });
            own.or_else(|| {
                self.db
                    .by_mac(req.mac)
                    .filter(|l| l.ip == ip)
                    .and_then(|l| l.hostname.clone())
            })
        });
        let secs = self.lease_secs();
        self.offers.remove(&req.mac);
        let new = self.db.bind(Lease {
            mac: req.mac,
            ip,
            hostname: hostname.clone(),
            expires: leases::after(now, Duration::from_secs(u64::from(secs))),
        });
        self.changed(now);
        let what = format!(
            "lease {ip} to {}{} for {secs}s",
            req.mac,
            name_suffix(hostname.as_deref())
        );
        if new {
            tracing::info!("{what}");
        } else {
            tracing::debug!("renewed {what}");
        }
        self.stats.acks += 1;
        self.reply(req, MessageType::Ack, ip, true, static_name.as_deref())
    }

    fn nak(&mut self, req: &Request, ip: Ipv4Addr) -> Option<DhcpReply> {
        self.stats.naks += 1;
        // Debug, not info: a guest can send any number of requests to be refused.
        tracing::debug!("DHCP: NAK {ip} to {}: not available to it", req.mac);
        self.reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED, false, None)
    }

    /// DHCPRELEASE (RFC 2131 §4.3.4): frees the lease on `ciaddr` if it is the sender's.
    /// The address stays the client's preference for its next DISCOVER.
    fn release(&mut self, req: &Request, now: SystemTime) {
        let ip = req.msg.ciaddr();
        let ours = req.server_id.is_none_or(|s| s == self.cfg.gateway());
        let holds = self.db.by_ip(ip).is_some_and(|l| l.mac == req.mac);
        self.offers.remove(&req.mac);
        if !ours || !holds {
            self.stats.ignored += 1;
            tracing::debug!("DHCP: ignoring RELEASE of {ip} by {}", req.mac);
            return;
        }
        if let Some(l) = self.db.release(ip) {
            tracing::info!(
                "lease {ip} to {}{} released",
                l.mac,
                name_suffix(l.hostname.as_deref())
            );
        }
        self.stats.releases += 1;
        self.changed(now);
    }

    /// DHCPDECLINE (RFC 2131 §4.3.3): the client found the address in use. If the
    /// address was offered or leased to it, the lease is dropped and the address is not
    /// handed out for [`DECLINE_QUARANTINE`].
    fn decline(&mut self, req: &Request, now: SystemTime) {
        let ours = req.server_id.is_none_or(|s| s == self.cfg.gateway());
        let held = req.requested.filter(|ip| {
            self.db.by_ip(*ip).is_some_and(|l| l.mac == req.mac)
                || self.offers.get(&req.mac).is_some_and(|o| o.ip == *ip)
        });
        let (true, Some(ip)) = (ours, held) else {
            self.stats.ignored += 1;
            tracing::debug!("DHCP: ignoring DECLINE by {}", req.mac);
            return;
        };
        self.offers.remove(&req.mac);
        self.declined
            .insert(ip, leases::after(now, DECLINE_QUARANTINE));
        self.db.remove(ip);
        self.db.forget(req.mac, ip);
        self.stats.declines += 1;
        tracing::warn!(
            "DHCP: {} declined {ip} (in use by someone else?); not used for {}s",
            req.mac,
            DECLINE_QUARANTINE.as_secs()
        );
        self.changed(now);
    }

    /// DHCPINFORM → DHCPACK with the network's options but no lease (RFC 2131 §4.3.5),
    /// sent to the client's `ciaddr`.
    fn inform(&mut self, req: &Request) -> Option<DhcpReply> {
        let ciaddr = req.msg.ciaddr();
        if !self.cfg.subnet.contains(ciaddr) || ciaddr == self.cfg.gateway() {
            self.stats.ignored += 1;
            tracing::debug!("DHCP: ignoring INFORM from {ciaddr} ({})", req.mac);
            return None;
        }
        self.stats.informs += 1;
        self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, false, None)
    }

    /// Builds a reply per RFC 2131 §4.3.1 table 3 with the RFC 2132 options of this
    /// network. `lease` adds the lease time and T1/T2 (§4.4.5 defaults: 0.5 and 0.875).
    fn reply(
        &self,
        req: &Request,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        lease: bool,
        hostname: Option<&str>,
    ) -> Option<DhcpReply> {
        let gw = self.cfg.gateway();
        // Table 3: ciaddr is echoed in an ACK, zero in an OFFER or NAK.
        let ciaddr = if kind == MessageType::Ack {
            req.msg.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let mut m = Message::new_with_id(
            req.msg.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.msg.giaddr(),
            &req.mac.0,
        );
        m.set_opcode(Opcode::BootReply).set_flags(req.msg.flags());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(gw));
        if kind == MessageType::Nak {
            o.insert(DhcpOption::Message("address not available".into()));
        } else {
            let s = &self.cfg.subnet;
            o.insert(DhcpOption::SubnetMask(s.netmask()));
            o.insert(DhcpOption::BroadcastAddr(s.broadcast()));
            o.insert(DhcpOption::Router(vec![gw]));
            o.insert(DhcpOption::DomainNameServer(vec![gw]));
            o.insert(DhcpOption::InterfaceMtu(self.cfg.mtu));
            if let Some(d) = &self.cfg.domain {
                o.insert(DhcpOption::DomainName(d.clone()));
            }
            if let Some(h) = hostname {
                o.insert(DhcpOption::Hostname(h.to_owned()));
            }
            if lease {
                let secs = self.lease_secs();
                o.insert(DhcpOption::AddressLeaseTime(secs));
                o.insert(DhcpOption::Renewal(secs / 2));
                o.insert(DhcpOption::Rebinding(
                    u32::try_from(u64::from(secs) * 7 / 8).unwrap_or(secs),
                ));
            }
        }
        let mut payload = Vec::with_capacity(MIN_REPLY_LEN);
        if let Err(e) = m.encode(&mut Encoder::new(&mut payload)) {
            tracing::warn!("DHCP: cannot encode {kind:?} for {}: {e}", req.mac);
            return None;
        }
        if payload.len() < MIN_REPLY_LEN {
            payload.resize(MIN_REPLY_LEN, 0);
        }
        let (dst_ip, dst_mac) = self.destination(req, kind, yiaddr);
        Some(DhcpReply {
            payload,
            dst_ip,
            dst_mac,
        })
    }

    /// Where a reply goes, RFC 2131 §4.1 (giaddr is always zero here, see [`DhcpReply`]).
    fn destination(
        &self,
        req: &Request,
        kind: MessageType,
        yiaddr: Ipv4Addr,
    ) -> (Ipv4Addr, MacAddr) {
        let ciaddr = req.msg.ciaddr();
        let broadcast = (Ipv4Addr::BROADCAST, MacAddr::BROADCAST);
        if kind == MessageType::Nak {
            broadcast
        } else if !ciaddr.is_unspecified() {
            (ciaddr, req.mac)
        } else if req.msg.flags().broadcast() || yiaddr.is_unspecified() {
            broadcast
        } else {
            (yiaddr, req.mac)
        }
    }

    /// True when `ip` may be bound to `mac` now: its static address if it has one, else
    /// any address free for it.
    fn allowed_for(&self, ip: Ipv4Addr, mac: MacAddr, now: SystemTime) -> bool {
        match self.static_for_mac(mac) {
            Some(h) => h.ip == ip,
            None => self.free_for(ip, mac, now),
        }
    }

    /// True when `ip` is in the dynamic range, is no static host's and no other client's
    /// (by unexpired lease or pending offer), and is not quarantined.
    fn free_for(&self, ip: Ipv4Addr, mac: MacAddr, now: SystemTime) -> bool {
        dynamic_address(&self.cfg, ip)
            && self
                .db
                .by_ip(ip)
                .is_none_or(|l| l.mac == mac || l.expires <= now)
            && !self
                .offers
                .iter()
                .any(|(m, o)| *m != mac && o.ip == ip && o.until > now)
            && self.declined.get(&ip).is_none_or(|until| *until <= now)
    }

    fn static_for_mac(&self, mac: MacAddr) -> Option<&StaticHost> {
        self.cfg.static_hosts.iter().find(|h| h.mac == mac)
    }

    /// The lease time in seconds as sent in option 51; 0xffffffff would mean "infinite"
    /// (RFC 2132 §9.2), so it is capped below that.
    fn lease_secs(&self) -> u32 {
        u32::try_from(self.cfg.lease_time.as_secs())
            .unwrap_or(u32::MAX)
            .min(u32::MAX - 1)
    }

    /// Records that the lease table changed and writes it unless a write happened less
    /// than [`SAVE_INTERVAL`] ago.
    fn changed(&mut self, now: SystemTime) {
        self.dirty = true;
        self.flush(now, false);
    }

    /// Writes the lease table if it changed since the last write, and if `force` or the
    /// last attempt is [`SAVE_INTERVAL`] old. A failure is logged and the leases live on
    /// in memory (refusing the guest its address would not help); it is retried at the
    /// next change or [`Self::expire`] after the interval.
    fn flush(&mut self, now: SystemTime, force: bool) {
        let due = self.last_save.is_none_or(|t| {
            // A clock that went backwards counts as due.
            now.duration_since(t).map_or(true, |d| d >= SAVE_INTERVAL)
        });
        if !self.dirty || !(force || due) {
            return;
        }
        self.last_save = Some(now);
        match self.db.save() {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("DHCP: {e}; leases are kept in memory only"),
        }
    }
}

/// True when `ip` belongs to the dynamic range and may be handed out: a host address of
/// the subnet, not the gateway, and not reserved for a static host.
fn dynamic_address(cfg: &NetworkConfig, ip: Ipv4Addr) -> bool {
    let (first, last) = cfg.dhcp_range;
    let s = &cfg.subnet;
    (u32::from(first)..=u32::from(last)).contains(&u32::from(ip))
        && s.contains(ip)
        && ip != s.network()
        && ip != s.broadcast()
        && ip != cfg.gateway()
        && !cfg.static_hosts.iter().any(|h| h.ip == ip)
}

/// True when a stored lease still fits the configuration.
fn lease_fits(cfg: &NetworkConfig, l: &Lease) -> bool {
    match cfg.static_hosts.iter().find(|h| h.mac == l.mac) {
        Some(h) => h.ip == l.ip,
        None => dynamic_address(cfg, l.ip),
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

fn name_suffix(name: Option<&str>) -> String {
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

/// Checks the message's shape and decodes the parts the server reads.
fn parse(payload: &[u8], src_mac: MacAddr) -> std::result::Result<Request, Reject> {
    let clean = sanitize(payload)?;
    let msg =
        Message::decode(&mut Decoder::new(&clean)).map_err(|_| Reject::Malformed("undecodable"))?;
    // hlen was checked to be 6 by `sanitize`, so chaddr() is exactly the MAC.
    let mac: [u8; 6] = msg
        .chaddr()
        .try_into()
        .map_err(|_| Reject::Malformed("chaddr is not 6 bytes"))?;
    let mac = MacAddr(mac);
    if mac != src_mac {
        return Err(Reject::Ignored(
            "chaddr differs from the frame's source MAC",
        ));
    }
    if mac.is_multicast() || mac == MacAddr::default() {
        return Err(Reject::Ignored("chaddr is not a unicast MAC"));
    }
    if !msg.giaddr().is_unspecified() {
        return Err(Reject::Ignored("relayed (giaddr set)"));
    }
    let opts = msg.opts();
    let kind = match opts.msg_type() {
        None => return Err(Reject::Malformed("no message type")),
        Some(MessageType::Unknown(_)) => return Err(Reject::Malformed("unknown message type")),
        Some(k) => k,
    };
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => nonzero(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => leases::normalize_hostname(h),
        _ => None,
    };
    Ok(Request {
        msg,
        kind,
        mac,
        requested,
        server_id,
        hostname,
    })
}

/// Checks the fixed header (RFC 2131 §2: BOOTREQUEST, Ethernet, magic cookie) and
/// copies it with only [`READ_OPTIONS`] into a new buffer for the decoder. Keeping every
/// other option away from `dhcproto` means no option the server does not need can make
/// decoding fail or panic (dhcproto 0.15 `debug_assert!`s the lengths of options 80, 81,
/// 94 and 152-155, and slices `chaddr` by an unchecked `hlen`), and instances of one
/// option end up adjacent, which is how the decoder concatenates them (RFC 3396).
/// Option overload (option 52) is not supported: clients do not use it in requests.
fn sanitize(payload: &[u8]) -> std::result::Result<Vec<u8>, Reject> {
    let (header, options) = payload
        .split_at_checked(BOOTP_HEADER_LEN + MAGIC_COOKIE.len())
        .ok_or(Reject::Malformed("shorter than a DHCP header"))?;
    let [op, htype, hlen, ..] = header else {
        return Err(Reject::Malformed("shorter than a DHCP header"));
    };
    if *op != 1 {
        return Err(Reject::Malformed("not a BOOTREQUEST"));
    }
    if (*htype, *hlen) != (1, 6) {
        return Err(Reject::Malformed("not an Ethernet client"));
    }
    if !header.ends_with(&MAGIC_COOKIE) {
        return Err(Reject::Malformed("no DHCP magic cookie"));
    }
    let mut out = Vec::with_capacity(header.len() + 64);
    out.extend_from_slice(header);
    for wanted in READ_OPTIONS {
        let mut rest = options;
        loop {
            match rest {
                [] | [255, ..] => break,
                [0, tail @ ..] => rest = tail,
                [code, len, tail @ ..] => {
                    // A truncated option ends the list, as in the decoder itself.
                    let Some((value, tail)) = tail.split_at_checked(usize::from(*len)) else {
                        break;
                    };
                    if *code == wanted {
                        out.push(*code);
                        out.push(*len);
                        out.extend_from_slice(value);
                    }
                    rest = tail;
                }
                [_] => break,
            }
        }
    }
    out.push(255);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::test_util::TempDir;
    use crate::Error;
    use dhcproto::v4::Flags;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 122, n)
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, n])
    }

    fn config(dir: &TempDir) -> NetworkConfig {
        NetworkConfig {
            state_dir: dir.0.clone(),
            domain: Some("skiff.test".into()),
            ..Default::default()
        }
    }

    fn server(tag: &str) -> (TempDir, DhcpServer) {
        let dir = TempDir::new(tag);
        let s = DhcpServer::new(&config(&dir)).unwrap();
        (dir, s)
    }

    /// A client message of `kind` from `mac`, adjusted by `f`.
    fn msg(kind: MessageType, mac: MacAddr, f: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        f(&mut m);
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    fn opt(m: &mut Message, o: DhcpOption) {
        m.opts_mut().insert(o);
    }

    fn decode(r: &DhcpReply) -> Message {
        assert!(r.payload.len() >= MIN_REPLY_LEN);
        Message::decode(&mut Decoder::new(&r.payload)).unwrap()
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    fn discover(s: &mut DhcpServer, mac: MacAddr, now: SystemTime) -> Option<Ipv4Addr> {
        let r = s.handle(&msg(MessageType::Discover, mac, |_| {}), mac, now)?;
        let m = decode(&r);
        assert_eq!(kind(&m), MessageType::Offer);
        Some(m.yiaddr())
    }

    fn select(s: &mut DhcpServer, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> Message {
        let p = msg(MessageType::Request, mac, |m| {
            opt(m, DhcpOption::ServerIdentifier(GW));
            opt(m, DhcpOption::RequestedIpAddress(ip));
        });
        decode(&s.handle(&p, mac, now).unwrap())
    }

    /// Full DORA; returns the bound address.
    fn dora(s: &mut DhcpServer, mac: MacAddr, now: SystemTime) -> Ipv4Addr {
        let ip = discover(s, mac, now).unwrap();
        let ack = select(s, mac, ip, now);
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), ip);
        ip
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn dora_binds_the_lowest_address_with_all_options() {
        let (_d, mut s) = server("dora");
        let now = SystemTime::now();
        let m = mac(1);
        let p = msg(MessageType::Discover, m, |msg| {
            msg.set_flags(Flags::default().set_broadcast());
        });
        let r = s.handle(&p, m, now).unwrap();
        assert_eq!(
            (r.dst_ip, r.dst_mac),
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        );
        let offer = decode(&r);
        assert_eq!(kind(&offer), MessageType::Offer);
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234_5678);
        assert_eq!(offer.chaddr(), &m.0);
        assert_eq!(offer.yiaddr(), ip(2));
        let o = offer.opts();
        let expect = [
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![GW]),
            DhcpOption::DomainNameServer(vec![GW]),
            DhcpOption::DomainName("skiff.test".into()),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::Renewal(1800),
            DhcpOption::Rebinding(3150),
            DhcpOption::ServerIdentifier(GW),
            DhcpOption::InterfaceMtu(1500),
            DhcpOption::BroadcastAddr(ip(255)),
        ];
        for e in expect {
            assert_eq!(o.get(OptionCode::from(&e)), Some(&e));
        }
        assert!(o.get(OptionCode::Hostname).is_none());
        // Without the broadcast flag the reply is unicast to the offered address.
        let r = s
            .handle(&msg(MessageType::Discover, m, |_| {}), m, now)
            .unwrap();
        assert_eq!((r.dst_ip, r.dst_mac), (ip(2), m));
        assert_eq!(s.leases().count(), 0);
        let ack = select(&mut s, m, ip(2), now);
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(
            ack.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        let l: Vec<_> = s.leases().collect();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].mac, l[0].ip), (m, ip(2)));
        assert_eq!(leases::secs_until(l[0].expires, now), 3600);
        assert_eq!((s.stats().offers, s.stats().acks), (2, 1));
        // A second client gets the next address.
        assert_eq!(dora(&mut s, mac(2), now), ip(3));
    }

    #[test]
    fn offers_reserve_and_requested_address_is_honoured() {
        let (_d, mut s) = server("reserve");
        let now = SystemTime::now();
        assert_eq!(discover(&mut s, mac(1), now), Some(ip(2)));
        // Held for mac(1): mac(2) gets the next one, even when asking for it.
        let p = msg(MessageType::Discover, mac(2), |m| {
            opt(m, DhcpOption::RequestedIpAddress(ip(2)));
        });
        assert_eq!(decode(&s.handle(&p, mac(2), now).unwrap()).yiaddr(), ip(3));
        // mac(2) may not SELECT mac(1)'s offer.
        assert_eq!(kind(&select(&mut s, mac(2), ip(2), now)), MessageType::Nak);
        // A free requested address is given.
        let p = msg(MessageType::Discover, mac(3), |m| {
            opt(m, DhcpOption::RequestedIpAddress(ip(77)));
        });
        assert_eq!(decode(&s.handle(&p, mac(3), now).unwrap()).yiaddr(), ip(77));
        // Out-of-range requests are not.
        let p = msg(MessageType::Discover, mac(4), |m| {
            opt(m, DhcpOption::RequestedIpAddress(ip(1)));
        });
        assert_eq!(decode(&s.handle(&p, mac(4), now).unwrap()).yiaddr(), ip(4));
        // Once the hold ran out, the address is free again.
        let later = now + OFFER_HOLD + secs(1);
        assert_eq!(discover(&mut s, mac(5), later), Some(ip(2)));
    }

    #[test]
    fn selecting_another_server_drops_our_offer() {
        let (_d, mut s) = server("other");
        let now = SystemTime::now();
        assert_eq!(discover(&mut s, mac(1), now), Some(ip(2)));
        let p = msg(MessageType::Request, mac(1), |m| {
            opt(
                m,
                DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 122, 200)),
            );
            opt(
                m,
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 122, 99)),
            );
        });
        assert!(s.handle(&p, mac(1), now).is_none());
        assert_eq!(s.stats().ignored, 1);
        assert_eq!(s.leases().count(), 0);
        assert_eq!(discover(&mut s, mac(2), now), Some(ip(2)));
    }

    #[test]
    fn renew_and_rebind_extend_the_lease_unicast() {
        let (_d, mut s) = server("renew");
        let now = SystemTime::now();
        let a = dora(&mut s, mac(1), now);
        for (n, broadcast) in [(1800, false), (3150, true)] {
            let t = now + secs(n);
            let p = msg(MessageType::Request, mac(1), |m| {
                m.set_ciaddr(a);
                if broadcast {
                    m.set_flags(Flags::default().set_broadcast());
                }
            });
            let r = s.handle(&p, mac(1), t).unwrap();
            assert_eq!((r.dst_ip, r.dst_mac), (a, mac(1)));
            let ack = decode(&r);
            assert_eq!(kind(&ack), MessageType::Ack);
            assert_eq!((ack.yiaddr(), ack.ciaddr()), (a, a));
            let l = s.leases().next().unwrap();
            assert_eq!(leases::secs_until(l.expires, t), 3600);
        }
        assert_eq!(s.stats().acks, 3);
        // Renewing someone else's address is refused, by broadcast.
        dora(&mut s, mac(2), now);
        let p = msg(MessageType::Request, mac(2), |m| {
            m.set_ciaddr(a);
        });
        let r = s.handle(&p, mac(2), now).unwrap();
        assert_eq!(kind(&decode(&r)), MessageType::Nak);
        assert_eq!(
            (r.dst_ip, r.dst_mac),
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        );
        // As is renewing an address outside the subnet.
        let p = msg(MessageType::Request, mac(1), |m| {
            m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 5));
        });
        assert_eq!(
            kind(&decode(&s.handle(&p, mac(1), now).unwrap())),
            MessageType::Nak
        );
        assert_eq!(s.stats().naks, 2);
        // The refused client's own lease is untouched.
        assert_eq!(s.leases().find(|l| l.mac == mac(1)).unwrap().ip, a);
    }

    #[test]
    fn init_reboot_acks_the_right_address_and_naks_the_wrong_one() {
        let (_d, mut s) = server("reboot");
        let now = SystemTime::now();
        let a = dora(&mut s, mac(1), now);
        let b = dora(&mut s, mac(2), now);
        let reboot = |want: Ipv4Addr| {
            msg(MessageType::Request, mac(1), move |m| {
                opt(m, DhcpOption::RequestedIpAddress(want));
            })
        };
        let r = s.handle(&reboot(a), mac(1), now + secs(10)).unwrap();
        assert_eq!(kind(&decode(&r)), MessageType::Ack);
        assert_eq!((r.dst_ip, r.dst_mac), (a, mac(1)));
        // Someone else's address.
        let r = s.handle(&reboot(b), mac(1), now).unwrap();
        assert_eq!(kind(&decode(&r)), MessageType::Nak);
        assert_eq!(r.dst_ip, Ipv4Addr::BROADCAST);
        // Another network (the guest moved).
        let r = s
            .handle(&reboot(Ipv4Addr::new(10, 0, 2, 15)), mac(1), now)
            .unwrap();
        let nak = decode(&r);
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            nak.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(GW))
        );
        // The gateway's own address.
        assert_eq!(
            kind(&decode(&s.handle(&reboot(GW), mac(1), now).unwrap())),
            MessageType::Nak
        );
        // A free address of the range, for a client whose lease we lost, is granted.
        let p = msg(MessageType::Request, mac(3), |m| {
            opt(m, DhcpOption::RequestedIpAddress(ip(100)));
        });
        assert_eq!(
            kind(&decode(&s.handle(&p, mac(3), now).unwrap())),
            MessageType::Ack
        );
        assert_eq!(s.stats().naks, 3);
    }

    #[test]
    fn selecting_an_address_outside_the_subnet_is_naked() {
        let (_d, mut s) = server("subnet");
        let now = SystemTime::now();
        discover(&mut s, mac(1), now).unwrap();
        let nak = select(&mut s, mac(1), Ipv4Addr::new(10, 0, 0, 9), now);
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(s.leases().count(), 0);
        assert_eq!(s.stats().naks, 1);
    }

    #[test]
    fn release_frees_and_the_client_gets_the_address_back() {
        let (_d, mut s) = server("release");
        let now = SystemTime::now();
        let a = dora(&mut s, mac(1), now);
        // Releasing someone else's lease does nothing.
        let p = msg(MessageType::Release, mac(2), |m| {
            m.set_ciaddr(a);
            opt(m, DhcpOption::ServerIdentifier(GW));
        });
        assert!(s.handle(&p, mac(2), now).is_none());
        assert_eq!(s.leases().count(), 1);
        assert_eq!(s.stats().ignored, 1);
        let p = msg(MessageType::Release, mac(1), |m| {
            m.set_ciaddr(a);
            opt(m, DhcpOption::ServerIdentifier(GW));
        });
        assert!(s.handle(&p, mac(1), now).is_none());
        assert_eq!(s.leases().count(), 0);
        assert_eq!(s.stats().releases, 1);
        // Another client starts at the lowest address but avoids the released one.
        assert_eq!(discover(&mut s, mac(2), now), Some(ip(3)));
        assert_eq!(dora(&mut s, mac(1), now), a);
    }

    #[test]
    fn decline_quarantines_the_address() {
        let (_d, mut s) = server("decline");
        let now = SystemTime::now();
        let a = dora(&mut s, mac(1), now);
        let decline = msg(MessageType::Decline, mac(1), |m| {
            opt(m, DhcpOption::RequestedIpAddress(a));
            opt(m, DhcpOption::ServerIdentifier(GW));
        });
        // Only the holder may decline it.
        assert!(s.handle(&decline, mac(2), now).is_none());
        let other = msg(MessageType::Decline, mac(2), |m| {
            opt(m, DhcpOption::RequestedIpAddress(a));
        });
        assert!(s.handle(&other, mac(2), now).is_none());
        assert_eq!((s.stats().declines, s.leases().count()), (0, 1));
        assert!(s.handle(&decline, mac(1), now).is_none());
        assert_eq!((s.stats().declines, s.leases().count()), (1, 0));
        let b = discover(&mut s, mac(1), now).unwrap();
        assert_ne!(b, a);
        assert_ne!(discover(&mut s, mac(2), now), Some(a));
        // Nor can a client take it by asking.
        assert_eq!(kind(&select(&mut s, mac(3), a, now)), MessageType::Nak);
        // After the quarantine it is used again.
        let later = now + DECLINE_QUARANTINE + secs(1);
        s.expire(later);
        assert_eq!(discover(&mut s, mac(4), later), Some(a));
    }

    #[test]
    fn inform_gets_options_without_a_lease() {
        let (_d, mut s) = server("inform");
        let now = SystemTime::now();
        let p = msg(MessageType::Inform, mac(1), |m| {
            m.set_ciaddr(ip(50));
        });
        let r = s.handle(&p, mac(1), now).unwrap();
        assert_eq!((r.dst_ip, r.dst_mac), (ip(50), mac(1)));
        let ack = decode(&r);
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        let o = ack.opts();
        assert!(o.get(OptionCode::AddressLeaseTime).is_none());
        assert!(o.get(OptionCode::Renewal).is_none());
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![GW]))
        );
        assert_eq!(s.leases().count(), 0);
        assert_eq!(s.stats().informs, 1);
        // From outside the subnet: ignored.
        let p = msg(MessageType::Inform, mac(1), |m| {
            m.set_ciaddr(Ipv4Addr::new(10, 1, 1, 1));
        });
        assert!(s.handle(&p, mac(1), now).is_none());
    }

    #[test]
    fn static_host_gets_its_address_and_name() {
        let dir = TempDir::new("static");
        let cfg = NetworkConfig {
            static_hosts: vec![
                "52:54:00:12:34:09,192.168.122.3,Web".parse().unwrap(),
                "52:54:00:12:34:0a,192.168.122.200".parse().unwrap(),
            ],
            dhcp_range: (ip(2), ip(4)),
            ..config(&dir)
        };
        let mut s = DhcpServer::new(&cfg).unwrap();
        let now = SystemTime::now();
        let r = s
            .handle(&msg(MessageType::Discover, mac(9), |_| {}), mac(9), now)
            .unwrap();
        let offer = decode(&r);
        assert_eq!(offer.yiaddr(), ip(3));
        assert_eq!(
            offer.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web".into()))
        );
        // A client name does not override the configured one.
        let p = msg(MessageType::Request, mac(9), |m| {
            opt(m, DhcpOption::ServerIdentifier(GW));
            opt(m, DhcpOption::RequestedIpAddress(ip(3)));
            opt(m, DhcpOption::Hostname("other".into()));
        });
        let ack = decode(&s.handle(&p, mac(9), now).unwrap());
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(
            ack.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(s.leases().next().unwrap().hostname.as_deref(), Some("web"));
        // The static host may not have another address.
        assert_eq!(kind(&select(&mut s, mac(9), ip(4), now)), MessageType::Nak);
        // Static hosts outside the range work too, even without a lease.
        assert_eq!(discover(&mut s, mac(10), now), Some(ip(200)));
        // Dynamic clients skip static addresses and cannot take static names.
        assert_eq!(discover(&mut s, mac(1), now), Some(ip(2)));
        let p = msg(MessageType::Request, mac(1), |m| {
            opt(m, DhcpOption::ServerIdentifier(GW));
            opt(m, DhcpOption::RequestedIpAddress(ip(2)));
            opt(m, DhcpOption::Hostname("web".into()));
        });
        assert_eq!(
            kind(&decode(&s.handle(&p, mac(1), now).unwrap())),
            MessageType::Ack
        );
        assert_eq!(s.lookup_name("WEB"), Some(ip(3)));
        assert_eq!(s.lookup_ip(ip(2)), None);
        assert_eq!(s.lookup_ip(ip(3)), Some("web"));
        assert_eq!(kind(&select(&mut s, mac(2), ip(3), now)), MessageType::Nak);
        assert_eq!(discover(&mut s, mac(2), now), Some(ip(4)));
    }

    #[test]
    fn exhaustion_is_counted() {
        let dir = TempDir::new("exhaust");
        let cfg = NetworkConfig {
            dhcp_range: (ip(2), ip(3)),
            ..config(&dir)
        };
        let mut s = DhcpServer::new(&cfg).unwrap();
        let now = SystemTime::now();
        assert_eq!(dora(&mut s, mac(1), now), ip(2));
        assert_eq!(discover(&mut s, mac(2), now), Some(ip(3)));
        assert_eq!(discover(&mut s, mac(3), now), None);
        assert_eq!(s.stats().exhausted, 1);
        // The offer runs out, and mac(3) gets its address.
        let later = now + OFFER_HOLD + secs(1);
        assert_eq!(discover(&mut s, mac(3), later), Some(ip(3)));
        // And once mac(1)'s lease expired, a newcomer can have it.
        let much_later = now + secs(3601);
        s.expire(much_later);
        assert_eq!(s.leases().count(), 0);
        // mac(1)'s address is kept for it while another one is free...
        assert_eq!(discover(&mut s, mac(4), much_later), Some(ip(3)));
        // ...but is not wasted when nothing else is.
        assert_eq!(discover(&mut s, mac(5), much_later), Some(ip(2)));
    }

    #[test]
    fn leases_survive_a_restart() {
        let dir = TempDir::new("restart");
        let cfg = config(&dir);
        let now = SystemTime::now();
        let (a, b) = {
            let mut s = DhcpServer::new(&cfg).unwrap();
            dora(&mut s, mac(1), now);
            let a = dora(&mut s, mac(2), now);
            let p = msg(MessageType::Request, mac(3), |m| {
                opt(m, DhcpOption::RequestedIpAddress(ip(40)));
                opt(m, DhcpOption::Hostname("Db".into()));
            });
            assert_eq!(
                kind(&decode(&s.handle(&p, mac(3), now).unwrap())),
                MessageType::Ack
            );
            (a, ip(40))
        };
        assert!(dir.0.join("leases.json").is_file());
        let mut s = DhcpServer::new(&cfg).unwrap();
        assert_eq!(s.leases().count(), 3);
        assert_eq!(s.lookup_name("db"), Some(b));
        assert_eq!(discover(&mut s, mac(2), now), Some(a));
        assert_eq!(discover(&mut s, mac(3), now), Some(b));
        // A new client does not get a stored address.
        assert_eq!(discover(&mut s, mac(4), now), Some(ip(4)));
        // A configuration that no longer has the address in range drops its lease.
        let narrow = NetworkConfig {
            dhcp_range: (ip(2), ip(20)),
            ..cfg.clone()
        };
        let s = DhcpServer::new(&narrow).unwrap();
        assert_eq!(s.leases().count(), 2);
        // A corrupt file is an error naming it.
        std::fs::write(dir.0.join("leases.json"), b"{not json").unwrap();
        let e = DhcpServer::new(&cfg).unwrap_err();
        assert!(
            matches!(e, Error::Leases { ref path, .. } if path.ends_with("leases.json")),
            "{e}"
        );
    }

    #[test]
    fn writes_are_limited_but_never_lost() {
        let (dir, mut s) = server("writes");
        let file = dir.0.join("leases.json");
        let on_disk = |ip: Ipv4Addr| {
            std::fs::read_to_string(&file)
                .unwrap()
                .contains(&format!("\"{ip}\""))
        };
        let now = SystemTime::now();
        let a = dora(&mut s, mac(1), now);
        assert!(on_disk(a));
        // Within the interval: held back, written by the next expire() after it.
        let b = dora(&mut s, mac(2), now);
        assert!(!on_disk(b));
        s.expire(now + secs(1));
        assert!(on_disk(b));
        // Or when the server goes away.
        let c = dora(&mut s, mac(3), now + secs(1));
        assert!(!on_disk(c));
        drop(s);
        assert!(on_disk(c));
    }

    #[test]
    fn state_dir_is_created() {
        let dir = TempDir::new("mkdir");
        let cfg = NetworkConfig {
            state_dir: dir.0.join("a/b"),
            ..Default::default()
        };
        let mut s = DhcpServer::new(&cfg).unwrap();
        assert!(cfg.state_dir.is_dir());
        dora(&mut s, mac(1), SystemTime::now());
        assert!(cfg.state_dir.join("leases.json").is_file());
    }

    #[test]
    fn host_names_answer_dns() {
        let (_d, mut s) = server("names");
        let now = SystemTime::now();
        let request = |m: MacAddr, want: Ipv4Addr, name: &str| {
            let name = name.to_owned();
            msg(MessageType::Request, m, move |msg| {
                opt(msg, DhcpOption::RequestedIpAddress(want));
                opt(msg, DhcpOption::Hostname(name));
            })
        };
        let g0 = s.generation();
        s.handle(&request(mac(1), ip(10), "MyHost.example.org"), mac(1), now)
            .unwrap();
        assert!(s.generation() > g0);
        assert_eq!(s.lookup_name("myhost"), Some(ip(10)));
        assert_eq!(s.lookup_name("MYHOST"), Some(ip(10)));
        assert_eq!(s.lookup_ip(ip(10)), Some("myhost"));
        assert_eq!(s.lookup_name("nobody"), None);
        assert_eq!(s.lookup_ip(ip(11)), None);
        // A renewal without option 12 keeps the name and the generation.
        let g1 = s.generation();
        let renew = msg(MessageType::Request, mac(1), |m| {
            m.set_ciaddr(ip(10));
        });
        s.handle(&renew, mac(1), now + secs(60)).unwrap();
        assert_eq!((s.generation(), s.lookup_ip(ip(10))), (g1, Some("myhost")));
        // Invalid names are ignored.
        s.handle(&request(mac(2), ip(11), "bad_name"), mac(2), now)
            .unwrap();
        assert_eq!(s.lookup_ip(ip(11)), None);
        // The newest claim to a name wins.
        s.handle(&request(mac(2), ip(11), "myhost"), mac(2), now)
            .unwrap();
        assert_eq!(s.lookup_name("myhost"), Some(ip(11)));
        assert_eq!(s.lookup_ip(ip(10)), None);
        // Release removes the name.
        let g2 = s.generation();
        let release = msg(MessageType::Release, mac(2), |m| {
            m.set_ciaddr(ip(11));
        });
        s.handle(&release, mac(2), now);
        assert_eq!(s.lookup_name("myhost"), None);
        assert!(s.generation() > g2);
    }

    #[test]
    fn expiry_removes_leases_but_remembers_addresses() {
        let (_d, mut s) = server("expire");
        let now = SystemTime::now();
        dora(&mut s, mac(1), now);
        let a = dora(&mut s, mac(2), now);
        s.expire(now + secs(3599));
        assert_eq!(s.leases().count(), 2);
        let later = now + secs(3600);
        s.expire(later);
        assert_eq!(s.leases().count(), 0);
        // Newcomers avoid the addresses remembered for their previous holders.
        assert_eq!(discover(&mut s, mac(3), later), Some(ip(4)));
        assert_eq!(discover(&mut s, mac(2), later), Some(a));
        // Renewing after expiry is still fine while nobody took the address.
        let p = msg(MessageType::Request, mac(2), |m| {
            m.set_ciaddr(a);
        });
        assert_eq!(
            kind(&decode(&s.handle(&p, mac(2), later).unwrap())),
            MessageType::Ack
        );
    }

    /// A valid DISCOVER with `extra` raw option bytes inserted before the end option.
    fn raw_discover(m: MacAddr, extra: &[u8]) -> Vec<u8> {
        let mut p = msg(MessageType::Discover, m, |_| {});
        assert_eq!(p.pop(), Some(255));
        p.extend_from_slice(extra);
        p.push(255);
        p
    }

    #[test]
    fn bad_input_is_dropped_and_counted() {
        let (_d, mut s) = server("bad");
        let now = SystemTime::now();
        let m = mac(1);
        let good = msg(MessageType::Discover, m, |_| {});
        let with = |i: usize, v: u8| {
            let mut p = good.clone();
            p[i] = v;
            p
        };
        let malformed: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![1]),
            ("truncated header", good[..239].to_vec()),
            (
                "garbage",
                (0..600u32).map(|i| (i * 7919 % 251) as u8).collect(),
            ),
            ("bootreply", with(0, 2)),
            ("op 0", with(0, 0)),
            ("htype 6", with(1, 6)),
            ("hlen 16", with(2, 16)),
            ("hlen 200", with(2, 200)),
            ("bad cookie", with(236, 0)),
            ("no options", good[..240].to_vec()),
            ("no message type", {
                let mut p = good[..240].to_vec();
                p.extend_from_slice(&[12, 3, b'a', b'b', b'c', 255]);
                p
            }),
            ("unknown message type", raw_type(m, 200)),
            ("message type truncated", {
                let mut p = good[..240].to_vec();
                p.extend_from_slice(&[53, 5, 1]);
                p
            }),
            ("message type zero length", {
                let mut p = good[..240].to_vec();
                p.extend_from_slice(&[53, 0, 255]);
                p
            }),
            (
                "request naming nothing",
                msg(MessageType::Request, m, |_| {}),
            ),
        ];
        for (what, p) in &malformed {
            let before = s.stats().malformed;
            assert!(s.handle(p, m, now).is_none(), "{what}");
            assert_eq!(s.stats().malformed, before + 1, "{what}");
        }
        let ignored: Vec<(&str, Vec<u8>, MacAddr)> = vec![
            ("chaddr != src", good.clone(), mac(2)),
            (
                "multicast chaddr",
                msg(
                    MessageType::Discover,
                    MacAddr([1, 0, 0x5e, 0, 0, 1]),
                    |_| {},
                ),
                MacAddr([1, 0, 0x5e, 0, 0, 1]),
            ),
            (
                "zero chaddr",
                msg(MessageType::Discover, MacAddr::default(), |_| {}),
                MacAddr::default(),
            ),
            (
                "relayed",
                msg(MessageType::Discover, m, |x| {
                    x.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
                }),
                m,
            ),
            ("offer from a client", msg(MessageType::Offer, m, |_| {}), m),
            ("ack from a client", msg(MessageType::Ack, m, |_| {}), m),
            (
                "release of nothing",
                msg(MessageType::Release, m, |_| {}),
                m,
            ),
            (
                "decline of nothing",
                msg(MessageType::Decline, m, |_| {}),
                m,
            ),
        ];
        for (what, p, src) in &ignored {
            let before = s.stats().ignored;
            assert!(s.handle(p, *src, now).is_none(), "{what}");
            assert_eq!(s.stats().ignored, before + 1, "{what}");
        }
        assert_eq!(s.stats().offers, 0);
        // Options that make the decoder assert or misbehave, odd lengths, unknown and
        // truncated options: the message still works, they are never looked at.
        let odd: Vec<&[u8]> = vec![
            &[80, 5, 1, 2, 3, 4, 5], // rapid commit with data
            &[81, 1, 0],             // FQDN too short
            &[94, 0],                // client NDI empty
            &[151, 0],               // BLQ status, no code
            &[152, 1, 0],            // BLQ base time, short
            &[121, 3, 33, 1, 2],     // bad classless route
            &[12, 2, 0xff, 0xfe],    // host name not UTF-8
            &[50, 3, 1, 2, 3],       // requested IP, short
            &[54, 0],                // server id, empty
            &[0, 0, 0, 250, 9, 1],   // pads, then a truncated option
        ];
        for extra in odd {
            let p = raw_discover(m, extra);
            let r = s.handle(&p, m, now);
            assert!(r.is_some(), "{extra:?}");
        }
        // A maximal datagram full of options.
        let mut big = Vec::new();
        while big.len() < 65_000 {
            big.extend_from_slice(&[200, 255]);
            big.extend_from_slice(&[0xaa; 255]);
            big.extend_from_slice(&[12, 255]);
            big.extend_from_slice(&[b'a'; 255]);
        }
        assert!(s.handle(&raw_discover(m, &big), m, now).is_some());
        // None of it bound anything.
        assert_eq!(s.leases().count(), 0);
    }

    fn raw_type(m: MacAddr, t: u8) -> Vec<u8> {
        let mut p = msg(MessageType::Discover, m, |_| {})[..240].to_vec();
        p.extend_from_slice(&[53, 1, t, 255]);
        p
    }

    #[test]
    fn random_mutations_never_panic_and_memory_stays_bounded() {
        let dir = TempDir::new("fuzz");
        let cfg = NetworkConfig {
            dhcp_range: (ip(2), ip(40)),
            ..config(&dir)
        };
        let mut s = DhcpServer::new(&cfg).unwrap();
        let now = SystemTime::now();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let kinds = [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Decline,
            MessageType::Release,
            MessageType::Inform,
        ];
        for i in 0..20_000u32 {
            let m = MacAddr([0x52, 0x54, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let k = kinds[rand() as usize % kinds.len()];
            let r = rand();
            let mut p = msg(k, m, |x| {
                if r & 1 != 0 {
                    opt(x, DhcpOption::RequestedIpAddress(ip((r >> 8) as u8)));
                }
                if r & 2 != 0 {
                    opt(x, DhcpOption::ServerIdentifier(GW));
                }
                if r & 4 != 0 {
                    x.set_ciaddr(ip((r >> 16) as u8));
                }
            });
            // Flip a few bytes, sometimes truncate or extend.
            for _ in 0..(rand() % 4) {
                let at = rand() as usize % p.len();
                p[at] = rand() as u8;
            }
            match rand() % 8 {
                0 => p.truncate(rand() as usize % p.len()),
                1 => p.extend((0..rand() % 300).map(|_| rand() as u8)),
                _ => {}
            }
            let _ = s.handle(&p, m, now + secs(u64::from(i)));
            assert!(s.offers.len() <= MAX_OFFERS);
            assert!(s.leases().count() <= 39);
            assert!(s.declined.len() <= 39);
        }
        let st = s.stats();
        assert!(st.acks > 0 && st.offers > 0 && st.malformed > 0, "{st:?}");
    }
}
