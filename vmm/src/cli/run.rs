//! `skiff run`: boot a microVM with its serial console on the terminal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use vmm::vm::{self, VmConfig};

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
}

/// Runs the VM; the process exits with the VM's status.
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    let cfg = VmConfig {
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        vcpus: a.cpus,
        memory_mib: a.memory,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("signal handler")?;
    }
    let reason = vm::run(&cfg)?;
    let _ = stop.load(Ordering::Relaxed);
    let status = reason.status();
    if status == 0 {
        tracing::info!("VM ended: {reason}");
    } else {
        eprintln!("skiff: VM ended: {reason}");
    }
    Ok(status)
}
