//! Building the frames the network sends: Ethernet II, ARP, IPv4, TCP, UDP and ICMP headers
//! written at named offsets into a caller's buffer, with their checksums.
//!
//! Parsing goes the other way through etherparse's checked slices; this module only writes,
//! so the data path fills headers in place around a payload that is already in the buffer
//! (the host socket read it there) and never copies the payload.

use std::net::Ipv4Addr;

use etherparse::checksum::Sum16BitWords;

use crate::config::MacAddr;

/// Ethernet II header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options (RFC 791 §3.1).
pub const IPV4_LEN: usize = 20;
/// UDP header length (RFC 768).
pub const UDP_LEN: usize = 8;
/// TCP header length without options (RFC 9293 §3.1).
pub const TCP_LEN: usize = 20;
/// ICMP echo header length (RFC 792).
pub const ICMP_ECHO_LEN: usize = 8;
/// Minimum Ethernet frame length without FCS; shorter frames are padded with zeros (802.3).
pub const MIN_FRAME: usize = 60;
/// Offset of the IPv4 header in a frame.
pub const IP_OFF: usize = ETH_LEN;
/// Offset of the transport header in a frame whose IPv4 header has no options.
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// TCP flag bits (RFC 9293 §3.1).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// Writes an Ethernet II header at the start of `buf` (at least [`ETH_LEN`] bytes).
pub fn write_eth(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes an IPv4 header (no options, DF set, TTL 64) at `buf[IP_OFF..]` for a datagram whose
/// payload is `payload_len` bytes, including the header checksum (RFC 791 §3.1).
pub fn write_ipv4(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) {
    let h = &mut buf[IP_OFF..IP_OFF + IPV4_LEN];
    let total = (IPV4_LEN + payload_len) as u16;
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    // Don't Fragment: we never emit datagrams larger than the MTU.
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = Sum16BitWords::new().add_slice(h).ones_complement().to_be();
    h[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The IPv4 pseudo-header sum used by TCP and UDP checksums (RFC 9293 §3.1, RFC 768).
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Sum16BitWords {
    Sum16BitWords::new()
        .add_4bytes(src.octets())
        .add_4bytes(dst.octets())
        .add_2bytes([0, proto])
        .add_2bytes((len as u16).to_be_bytes())
}

/// Fields of a TCP segment to write.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags, from [`tcp_flags`].
    pub flags: u8,
    /// Window field (already scaled down by the sender's shift).
    pub window: u16,
    /// MSS option to include (SYN segments only).
    pub mss: Option<u16>,
    /// Window scale option to include (SYN segments only).
    pub wscale: Option<u8>,
}

impl TcpFields {
    /// Length of the TCP header these fields produce, options included.
    pub fn header_len(&self) -> usize {
        let mut n = TCP_LEN;
        if self.mss.is_some() {
            n += 4;
        }
        if self.wscale.is_some() {
            n += 4;
        }
        n
    }
}

/// Writes a whole Ethernet + IPv4 + TCP frame into `buf` around a payload of `payload_len`
/// bytes already at `buf[L4_OFF + f.header_len()..]`; returns the frame length (padded to
/// [`MIN_FRAME`]). `buf` must hold the frame.
#[allow(clippy::too_many_arguments)]
pub fn write_tcp_frame(
    buf: &mut [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    f: &TcpFields,
    payload_len: usize,
) -> usize {
    let hl = f.header_len();
    let seg_len = hl + payload_len;
    write_eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    write_ipv4(buf, src, dst, PROTO_TCP, seg_len);
    let t = &mut buf[L4_OFF..L4_OFF + hl];
    t[0..2].copy_from_slice(&f.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&f.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&f.seq.to_be_bytes());
    t[8..12].copy_from_slice(&f.ack.to_be_bytes());
    t[12] = ((hl / 4) as u8) << 4;
    t[13] = f.flags;
    t[14..16].copy_from_slice(&f.window.to_be_bytes());
    t[16..20].copy_from_slice(&[0, 0, 0, 0]);
    let mut o = TCP_LEN;
    if let Some(mss) = f.mss {
        t[o..o + 4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        o += 4;
    }
    if let Some(ws) = f.wscale {
        // NOP pad, then kind 3 length 3 (RFC 7323 §2.2).
        t[o..o + 4].copy_from_slice(&[1, 3, 3, ws]);
    }
    let sum = pseudo_sum(src, dst, PROTO_TCP, seg_len)
        .add_slice(&buf[L4_OFF..L4_OFF + seg_len])
        .ones_complement()
        .to_be();
    buf[L4_OFF + 16..L4_OFF + 18].copy_from_slice(&sum.to_be_bytes());
    pad(buf, L4_OFF + seg_len)
}

/// Writes a whole Ethernet + IPv4 + UDP frame around a payload of `payload_len` bytes already
/// at `buf[L4_OFF + UDP_LEN..]`; returns the frame length (padded to [`MIN_FRAME`]).
#[allow(clippy::too_many_arguments)]
pub fn write_udp_frame(
    buf: &mut [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload_len: usize,
) -> usize {
    let len = UDP_LEN + payload_len;
    write_eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    write_ipv4(buf, src, dst, PROTO_UDP, len);
    let u = &mut buf[L4_OFF..L4_OFF + UDP_LEN];
    u[0..2].copy_from_slice(&src_port.to_be_bytes());
    u[2..4].copy_from_slice(&dst_port.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    let sum = pseudo_sum(src, dst, PROTO_UDP, len)
        .add_slice(&buf[L4_OFF..L4_OFF + len])
        .to_ones_complement_with_no_zero()
        .to_be();
    buf[L4_OFF + 6..L4_OFF + 8].copy_from_slice(&sum.to_be_bytes());
    pad(buf, L4_OFF + len)
}

/// Writes a whole Ethernet + IPv4 + ICMP frame whose ICMP message (header and data, with a
/// zero checksum field) is already at `buf[L4_OFF..L4_OFF + icmp_len]`; fills in the ICMP
/// checksum (RFC 792) and returns the frame length (padded to [`MIN_FRAME`]).
pub fn write_icmp_frame(
    buf: &mut [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_len: usize,
) -> usize {
    write_eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    write_ipv4(buf, src, dst, PROTO_ICMP, icmp_len);
    buf[L4_OFF + 2..L4_OFF + 4].copy_from_slice(&[0, 0]);
    let sum = Sum16BitWords::new()
        .add_slice(&buf[L4_OFF..L4_OFF + icmp_len])
        .ones_complement()
        .to_be();
    buf[L4_OFF + 2..L4_OFF + 4].copy_from_slice(&sum.to_be_bytes());
    pad(buf, L4_OFF + icmp_len)
}

/// ARP operation codes (RFC 826).
pub mod arp_op {
    /// Request.
    pub const REQUEST: u16 = 1;
    /// Reply.
    pub const REPLY: u16 = 2;
}

/// Writes an Ethernet/IPv4 ARP packet (RFC 826) in a frame; returns the frame length (60).
pub fn write_arp_frame(
    buf: &mut [u8],
    op: u16,
    sha: MacAddr,
    spa: Ipv4Addr,
    tha: MacAddr,
    tpa: Ipv4Addr,
) -> usize {
    let eth_dst = if op == arp_op::REQUEST {
        MacAddr::BROADCAST
    } else {
        tha
    };
    write_eth(buf, eth_dst, sha, ETHERTYPE_ARP);
    let a = &mut buf[ETH_LEN..ETH_LEN + 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha.0);
    a[14..18].copy_from_slice(&spa.octets());
    a[18..24].copy_from_slice(&tha.0);
    a[24..28].copy_from_slice(&tpa.octets());
    pad(buf, ETH_LEN + 28)
}

/// Zero-pads a frame of `len` bytes to [`MIN_FRAME`]; returns the new length.
pub fn pad(buf: &mut [u8], len: usize) -> usize {
    if len < MIN_FRAME {
        buf[len..MIN_FRAME].fill(0);
        MIN_FRAME
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn tcp_frame_parses_with_valid_checksums() {
        let mut buf = vec![0u8; 200];
        let f = TcpFields {
            src_port: 80,
            dst_port: 4000,
            seq: 7,
            ack: 9,
            flags: tcp_flags::SYN | tcp_flags::ACK,
            window: 1000,
            mss: Some(1460),
            wscale: Some(7),
        };
        let payload_at = L4_OFF + f.header_len();
        buf[payload_at..payload_at + 3].copy_from_slice(b"abc");
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let n = write_tcp_frame(&mut buf, B, A, src, dst, &f, 3);
        let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("not tcp")
        };
        assert_eq!(t.payload(), b"abc");
        assert_eq!(t.sequence_number(), 7);
        assert!(t.syn() && t.ack());
        assert_eq!(
            t.calc_checksum_ipv4(src.octets(), dst.octets()).unwrap(),
            t.checksum()
        );
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&buf[IP_OFF..]).unwrap();
        assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum());
    }

    #[test]
    fn short_frames_are_padded() {
        let mut buf = vec![0xaau8; 100];
        let n = write_arp_frame(
            &mut buf,
            arp_op::REPLY,
            A,
            Ipv4Addr::new(1, 2, 3, 4),
            B,
            Ipv4Addr::new(1, 2, 3, 5),
        );
        assert_eq!(n, MIN_FRAME);
        assert!(buf[42..60].iter().all(|&b| b == 0));
        let n = write_udp_frame(
            &mut buf,
            B,
            A,
            Ipv4Addr::LOCALHOST,
            1,
            Ipv4Addr::LOCALHOST,
            2,
            0,
        );
        assert_eq!(n, MIN_FRAME);
    }
}
