//! `skiff run`: boot a microVM with its serial console on the terminal and its network card
//! on the built-in NAT.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    /// Default: the resources/ guest image (built on first use), with its initramfs.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
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
    /// A command for the guest image to run (`sh -c`, the words joined with spaces); skiff
    /// then exits with its status. Passed base64-encoded as `skiff.cmd=` on the kernel
    /// command line.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Linux's x86 COMMAND_LINE_SIZE, its terminating NUL included: the kernel keeps no more.
const LINUX_CMDLINE_MAX: usize = 2048;
/// Room left on the command line for the devices skiff announces (`virtio_mmio.device=`).
const CMDLINE_DEVICE_ROOM: usize = 64;

/// Standard base64 (RFC 4648, with padding), as `base64 -w0` writes it.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = u32::from(c[0]) << 16
            | u32::from(c.get(1).copied().unwrap_or(0)) << 8
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The kernel command line: `cmdline`, plus `skiff.cmd=BASE64` when a command was given
/// after `--` (the guest image's init runs it with `sh -c` and prints its status).
fn guest_cmdline(cmdline: &str, command: &[String]) -> anyhow::Result<String> {
    if command.is_empty() {
        return Ok(cmdline.to_string());
    }
    let text = command.join(" ");
    if text.trim().is_empty() {
        anyhow::bail!("COMMAND (after --) is empty");
    }
    let param = format!("skiff.cmd={}", base64(text.as_bytes()));
    let line = match cmdline.trim_end() {
        "" => param,
        c => format!("{c} {param}"),
    };
    let max = LINUX_CMDLINE_MAX - 1 - CMDLINE_DEVICE_ROOM;
    if line.len() > max {
        anyhow::bail!(
            "COMMAND (after --): with it the kernel command line is {} bytes (the command \
             goes base64-encoded into skiff.cmd=), more than the {max} Linux keeps; \
             shorten the command",
            line.len()
        );
    }
    Ok(line)
}

/// The resources/ guest image's files.
#[derive(Debug, PartialEq, Eq)]
struct GuestImage {
    kernel: PathBuf,
    initrd: PathBuf,
}

/// resources/build-guest.sh: `$SKIFF_RESOURCES/build-guest.sh`, else in a `resources/`
/// directory above the executable (target/release/skiff -> ../../resources).
fn build_guest_script() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SKIFF_RESOURCES") {
        let p = PathBuf::from(dir).join("build-guest.sh");
        if !p.is_file() {
            anyhow::bail!("SKIFF_RESOURCES: {} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("the skiff executable's path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    for dir in exe.ancestors().skip(1).take(4) {
        let p = dir.join("resources").join("build-guest.sh");
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "--kernel not given, and no resources/build-guest.sh above {} to build the default \
         guest image: give --kernel, or set SKIFF_RESOURCES to a skiff clone's resources/",
        exe.display()
    )
}

/// The image's files from build-guest.sh's `KEY=VALUE` lines: the vmlinux (PVH entry) if
/// `exists`, else the bzImage; and the initramfs.
fn parse_guest_paths(text: &str, exists: impl Fn(&Path) -> bool) -> anyhow::Result<GuestImage> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let kernel = [get("SKIFF_GUEST_VMLINUX"), get("SKIFF_GUEST_BZIMAGE")]
        .into_iter()
        .flatten()
        .find(|p| exists(p))
        .context("no SKIFF_GUEST_VMLINUX or SKIFF_GUEST_BZIMAGE that exists")?;
    let initrd = get("SKIFF_GUEST_INITRAMFS").context("no SKIFF_GUEST_INITRAMFS")?;
    Ok(GuestImage { kernel, initrd })
}

/// The resources/ guest image, built first if it is not cached (saying so: minutes).
fn default_guest() -> anyhow::Result<GuestImage> {
    let script = build_guest_script()?;
    let run = |arg: &str, stderr: Stdio| {
        Command::new("bash")
            .arg(&script)
            .arg(arg)
            .stdin(Stdio::null())
            .stderr(stderr)
            .output()
            .with_context(|| format!("{} {arg}: cannot run it with bash", script.display()))
    };
    let out = run("--no-build", Stdio::piped())?;
    let out = match out.status.code() {
        Some(0) => out,
        Some(3) => {
            eprintln!("skiff: building the default guest image (first run takes minutes)...");
            let out = run("--print-paths", Stdio::inherit())?;
            if !out.status.success() {
                anyhow::bail!(
                    "{} --print-paths: {} (its messages are above)",
                    script.display(),
                    out.status
                );
            }
            out
        }
        _ => anyhow::bail!(
            "{} --no-build: {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    };
    parse_guest_paths(&String::from_utf8_lossy(&out.stdout), Path::is_file)
        .with_context(|| format!("{}: its output", script.display()))
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
        // The VM has a fixed address so that forwards know it: its own --dhcp-host if the
        // user gave one, else the first of the DHCP range (unless another host has that).
        let ip = match nc.static_hosts.iter().find(|h| h.mac == mac) {
            Some(h) => h.ip,
            None => {
                let (first, last) = (u32::from(nc.dhcp_range.0), u32::from(nc.dhcp_range.1));
                let ip = (first..=last)
                    .map(Ipv4Addr::from)
                    .find(|ip| nc.static_hosts.iter().all(|h| h.ip != *ip))
                    .ok_or_else(|| anyhow::anyhow!("--dhcp-range: no address left for the VM"))?;
                nc.static_hosts.push(StaticHost {
                    mac,
                    ip,
                    name: None,
                });
                ip
            }
        };
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
    let mut cfg = VmConfig {
        kernel: a.kernel.clone().unwrap_or_default(),
        initrd: a.initrd,
        cmdline: guest_cmdline(&a.cmdline, &a.command)?,
        vcpus: a.cpus,
        memory_mib: a.memory,
        net,
        mac,
    };
    if a.kernel.is_none() {
        // The flags first: a bad one should not wait for a build.
        cfg.validate()?;
        let image = default_guest()?;
        cfg.kernel = image.kernel;
        cfg.initrd = cfg.initrd.or(Some(image.initrd));
    }
    let (stop_rx, stop_tx) = UnixStream::pair().context("stop pipe")?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let tx = stop_tx.try_clone().context("stop pipe")?;
        signal_hook::low_level::pipe::register(sig, tx).context("signal handler")?;
    }
    // Raw mode until the VM ends; restored on errors too, and by a panic hook.
    let raw = vm::console::RawTerminal::enter().context("stdin: terminal raw mode")?;
    let result = vm::run(&cfg, stop_rx.as_raw_fd());
    drop(raw);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain:?}");
        }
        // Every alphabet position, the last two included.
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64(&[0, 0x10, 0x83]), "ABCD");
    }

    #[test]
    fn command_goes_into_skiff_cmd() {
        assert_eq!(
            guest_cmdline(DEFAULT_CMDLINE, &[]).unwrap(),
            DEFAULT_CMDLINE
        );
        // printf %s 'echo hi; exit 3' | base64 -w0
        assert_eq!(
            guest_cmdline(DEFAULT_CMDLINE, &words(&["echo", "hi;", "exit", "3"])).unwrap(),
            "console=ttyS0 reboot=k panic=1 skiff.cmd=ZWNobyBoaTsgZXhpdCAz"
        );
        assert_eq!(
            guest_cmdline("", &words(&["true"])).unwrap(),
            "skiff.cmd=dHJ1ZQ=="
        );
        // Quotes and non-ASCII survive: the encoding has no blank for the kernel to split at.
        let line = guest_cmdline("x ", &words(&["echo", "'a b'", "é"])).unwrap();
        assert_eq!(
            line,
            format!("x skiff.cmd={}", base64("echo 'a b' é".as_bytes()))
        );
        assert!(!line["x ".len()..].contains(' '));
    }

    #[test]
    fn bad_commands_name_the_command() {
        let e = guest_cmdline(DEFAULT_CMDLINE, &words(&[""])).unwrap_err();
        assert!(e.to_string().contains("COMMAND"), "{e}");
        let long = words(&[&"x".repeat(2000)]);
        let e = guest_cmdline(DEFAULT_CMDLINE, &long).unwrap_err();
        assert!(e.to_string().contains("COMMAND (after --)"), "{e}");
        // Just under the limit still goes.
        let fits = (LINUX_CMDLINE_MAX - 1 - CMDLINE_DEVICE_ROOM - "skiff.cmd=".len()) / 4 * 3;
        guest_cmdline("", &words(&[&"x".repeat(fits)])).unwrap();
    }

    #[test]
    fn guest_paths_from_build_guest_output() {
        let out = "SKIFF_GUEST_DIR=/c/k\nSKIFF_GUEST_VMLINUX=/c/k/vmlinux\n\
                   SKIFF_GUEST_BZIMAGE=/c/k/bzImage\nSKIFF_GUEST_INITRAMFS=/c/k/initramfs.cpio.gz\n";
        let want = |k: &str| GuestImage {
            kernel: PathBuf::from(k),
            initrd: PathBuf::from("/c/k/initramfs.cpio.gz"),
        };
        assert_eq!(
            parse_guest_paths(out, |_| true).unwrap(),
            want("/c/k/vmlinux")
        );
        let no_vmlinux = |p: &Path| !p.ends_with("vmlinux");
        assert_eq!(
            parse_guest_paths(out, no_vmlinux).unwrap(),
            want("/c/k/bzImage")
        );
        assert!(parse_guest_paths(out, |_| false).is_err());
        assert!(parse_guest_paths("SKIFF_GUEST_VMLINUX=/v\n", |_| true).is_err());
        assert!(parse_guest_paths("", |_| true).is_err());
    }

    #[test]
    fn kernel_is_optional_and_the_command_trails() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            run: RunArgs,
        }
        let t = T::try_parse_from(["skiff", "--cpus", "2", "--", "ls", "-l", "/"]).unwrap();
        assert!(t.run.kernel.is_none());
        assert_eq!(t.run.command, words(&["ls", "-l", "/"]));
        let t = T::try_parse_from(["skiff", "--kernel", "k"]).unwrap();
        assert_eq!(t.run.kernel, Some(PathBuf::from("k")));
        assert!(t.run.command.is_empty());
    }
}
