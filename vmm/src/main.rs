//! `skiff`: the command-line entry point.
//!
//! `skiff run` boots a microVM; `skiff net serve` runs a NAT network (libvirt's default network, in user space) that QEMU
//! stream clients and TAP devices attach to.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::init_logging();
    let result = cli::run();
    // The console's raw mode never outlives skiff, whichever way `run` ended.
    vmm::vm::console::restore_terminal();
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(2)
        }
    }
}
