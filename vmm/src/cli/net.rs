//! `skiff net ...`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use net::config::{parse_dns_upstream, Ipv4Subnet, PortForward, StaticHost, MAX_MTU, MIN_MTU};
use net::{Attachments, Network, NetworkConfig};

#[derive(Subcommand, Debug)]
pub enum NetCommand {
    /// Run a network until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

/// The network's shape; defaults are libvirt's default network.
#[derive(Args, Debug)]
pub struct NetworkArgs {
    /// Guest subnet, with the gateway's address: A.B.C.D/N.
    #[arg(long, value_name = "CIDR", default_value = "192.168.122.1/24", value_parser = parse_subnet)]
    subnet: Ipv4Subnet,
    /// First and last address handed out by DHCP (default .2 to .254 of the subnet).
    #[arg(long, value_name = "FIRST,LAST", value_parser = parse_range)]
    dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// DNS domain of the network (DHCP option 15; guest names answered under it).
    #[arg(long)]
    domain: Option<String>,
    /// MTU given to guests, 576 to 65520.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(i64::from(MIN_MTU)..=i64::from(MAX_MTU)))]
    mtu: u16,
    /// DHCP lease time, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    lease_time: u64,
    /// Static DHCP host: MAC,IP[,NAME]. Repeatable.
    #[arg(long, value_name = "MAC,IP[,NAME]", value_parser = |s: &str| s.parse::<StaticHost>())]
    dhcp_host: Vec<StaticHost>,
    /// DNS upstream resolver ADDR[:PORT]; repeatable; default: /etc/resolv.conf's.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_dns_upstream)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Map the gateway address to 127.0.0.1 instead of the host's own address.
    #[arg(long, conflicts_with = "host_address")]
    host_loopback: bool,
    /// The host address connections to the gateway reach (default: the default-route
    /// interface's address).
    #[arg(long, value_name = "ADDR")]
    host_address: Option<Ipv4Addr>,
    /// Maximum number of NAT flows.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_flows: usize,
    /// Where leases are kept (default: a per-user state directory).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Unix socket for QEMU `-netdev stream` clients.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// TAP device to attach (created if missing). Repeatable.
    #[arg(long, value_name = "NAME")]
    tap: Vec<String>,
    /// Unix socket for a vhost-user-net frontend (QEMU `-netdev vhost-user`, Cloud
    /// Hypervisor); each is a port, serving one frontend at a time. Repeatable.
    #[arg(long, value_name = "PATH")]
    vhost_user: Vec<PathBuf>,
    /// Record every frame the switch carries in this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Port forward from the host: tcp|udp:[HOSTADDR:]HOSTPORT:GUESTIP:GUESTPORT. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = |s: &str| s.parse::<PortForward>())]
    forward: Vec<PortForward>,
    #[command(flatten)]
    network: NetworkArgs,
}

fn parse_subnet(s: &str) -> Result<Ipv4Subnet, String> {
    s.parse()
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}': expected FIRST,LAST"))?;
    let a = a
        .parse()
        .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
    let b = b
        .parse()
        .map_err(|_| format!("'{b}' is not an IPv4 address"))?;
    Ok((a, b))
}

impl NetworkArgs {
    /// `--state-dir`, if given.
    pub fn state_dir(&self) -> Option<&PathBuf> {
        self.state_dir.as_ref()
    }

    /// The configuration these flags describe (checked by `Network::new`).
    pub fn to_config(&self) -> NetworkConfig {
        let d = NetworkConfig::default();
        let s = self.subnet;
        let range = self.dhcp_range.unwrap_or_else(|| {
            let net = u32::from(s.network());
            let bcast = u32::from(s.broadcast());
            // Like libvirt: everything after the gateway's .1 up to the last host address.
            (Ipv4Addr::from(net + 2), Ipv4Addr::from(bcast - 1))
        });
        NetworkConfig {
            subnet: s,
            dhcp_range: range,
            domain: self.domain.clone(),
            mtu: self.mtu,
            lease_time: Duration::from_secs(self.lease_time),
            static_hosts: self.dhcp_host.clone(),
            dns_upstreams: self.dns_upstream.clone(),
            host_address: self.host_address,
            host_loopback: self.host_loopback,
            forwards: Vec::new(),
            max_flows: self.max_flows,
            state_dir: self.state_dir.clone().unwrap_or(d.state_dir.clone()),
            ..d
        }
    }
}

pub fn run(c: NetCommand) -> anyhow::Result<()> {
    match c {
        NetCommand::Serve(a) => serve(a),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = a.network.to_config();
    cfg.forwards = a.forward.clone();
    if a.socket.is_none() && a.tap.is_empty() && a.vhost_user.is_empty() {
        tracing::warn!("no --socket, --tap or --vhost-user: nothing can attach to this network");
    }
    let att = Attachments {
        socket: a.socket.clone(),
        taps: a.tap.clone(),
        pcap: a.pcap.clone(),
    };
    let mtu = cfg.mtu;
    let mut network = Network::new(cfg, &att)?;
    for p in &a.vhost_user {
        let port = vmm::vhost_user::VhostUserPort::listen(p, vmm::vhost_user::mac_for(p), mtu)?;
        let id = network.attach(Box::new(port));
        tracing::info!("port {id}: vhost-user-net on {}", p.display());
    }
    let (stop_rx, stop_tx) = UnixStream::pair().context("stop pipe")?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tx = stop_tx.try_clone().context("stop pipe")?;
        signal_hook::low_level::pipe::register(sig, tx).context("signal handler")?;
    }
    if let Some(p) = &a.socket {
        tracing::info!("listening for stream clients on {}", p.display());
    }
    tracing::info!("ready");
    network.run(stop_rx.as_raw_fd())?;
    Ok(())
}
