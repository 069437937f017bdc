//! `skiff run`: boot a microVM with its serial console on the terminal and its network card
//! on the built-in NAT.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use net::config::{ForwardProto, PortForward, StaticHost};
use net::MacAddr;
use vmm::vm::{self, NetMode, VmConfig};

use super::net::NetworkArgs;

/// Kernel command line used when `--cmdline` is not given: the console on COM1, reboot
/// through the i8042 (which ends the VM), and reboot one second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The guest kernel: an ELF vmlinux (PVH entry when it has the note) or a bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// An initramfs.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "STRING", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs, 1 to 32.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// Guest memory, MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    memory: u64,
    /// The network card: `nat` (the built-in NAT, libvirt's default network),
    /// `socket=PATH` (a client of `skiff net serve --socket PATH`) or `none`.
    #[arg(long, value_name = "nat|socket=PATH|none", default_value = "nat", value_parser = parse_net)]
    net: String,
    /// The card's MAC address (default: 52:54:00 and three random bytes).
    #[arg(long, value_name = "MAC", value_parser = |s: &str| s.parse::<MacAddr>())]
    mac: Option<MacAddr>,
    /// Port forward from the host to the VM: tcp|udp:[HOSTADDR:]HOSTPORT:GUESTPORT.
    #[arg(long, value_name = "SPEC")]
    forward: Vec<String>,
    #[command(flatten)]
    network: NetworkArgs,
}

fn parse_net(s: &str) -> Result<String, String> {
    match s {
        "nat" | "none" => Ok(s.to_string()),
        _ if s.starts_with("socket=") && s.len() > 7 => Ok(s.to_string()),
        _ => Err(format!("'{s}': expected nat, socket=PATH or none")),
    }
}

/// `tcp|udp:[HOSTADDR:]HOSTPORT:GUESTPORT` to the VM at `guest`.
fn parse_forward(s: &str, guest: Ipv4Addr) -> anyhow::Result<PortForward> {
    let parts: Vec<&str> = s.split(':').collect();
    let (proto, host, hp, gp) = match parts.as_slice() {
        [p, hp, gp] => (*p, "127.0.0.1", *hp, *gp),
        [p, h, hp, gp] => (*p, *h, *hp, *gp),
        _ => anyhow::bail!("--forward: '{s}': expected tcp|udp:[HOSTADDR:]HOSTPORT:GUESTPORT"),
    };
    let proto = match proto {
        "tcp" => ForwardProto::Tcp,
        "udp" => ForwardProto::Udp,
        _ => anyhow::bail!("--forward: '{s}': the protocol is tcp or udp"),
    };
    let host: Ipv4Addr = host
        .parse()
        .map_err(|_| anyhow::anyhow!("--forward: '{host}' is not an IPv4 address"))?;
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(anyhow::anyhow!("--forward: '{p}' is not a port (1-65535)")),
    };
    Ok(PortForward {
        proto,
        host: SocketAddrV4::new(host, port(hp)?),
        guest: SocketAddrV4::new(guest, port(gp)?),
    })
}

fn random_mac() -> MacAddr {
    let mut b = [0u8; 3];
    // SAFETY: writes at most 3 bytes into a live array; on failure the bytes stay zero.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 3, 0) };
    MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

/// Runs the VM; returns the process exit status.
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    let mac = a.mac.unwrap_or_else(random_mac);
    let mut run_state = None;
    let net = if a.net == "none" {
        NetMode::None
    } else if let Some(p) = a.net.strip_prefix("socket=") {
        if !a.forward.is_empty() {
            anyhow::bail!(
                "--forward: forwards belong to the network: give them to skiff net serve"
            );
        }
        NetMode::Socket(PathBuf::from(p))
    } else {
        let mut nc = a.network.to_config();
        // The VM has a fixed address, the first of the DHCP range, so that forwards know it.
        let ip = nc.dhcp_range.0;
        nc.static_hosts.push(StaticHost {
            mac,
            ip,
            name: None,
        });
        for f in &a.forward {
            nc.forwards.push(parse_forward(f, ip)?);
        }
        if a.network.state_dir().is_none() {
            // A VM's leases live as long as the VM.
            let d = std::env::temp_dir().join(format!("skiff-run-{}", std::process::id()));
            nc.state_dir = d.clone();
            run_state = Some(d);
        }
        NetMode::Nat(Box::new(nc))
    };
    let cfg = VmConfig {
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        vcpus: a.cpus,
        memory_mib: a.memory,
        net,
        mac,
    };
    let (stop_rx, stop_tx) = UnixStream::pair().context("stop pipe")?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tx = stop_tx.try_clone().context("stop pipe")?;
        signal_hook::low_level::pipe::register(sig, tx).context("signal handler")?;
    }
    let result = vm::run(&cfg, stop_rx.as_raw_fd());
    if let Some(d) = run_state {
        let _ = std::fs::remove_dir_all(d);
    }
    let reason = result?;
    let status = reason.status();
    if status == 0 {
        tracing::info!("VM ended: {reason}");
    } else {
        eprintln!("skiff: VM ended: {reason}");
    }
    Ok(status)
}
