//! Command-line parsing and dispatch. Every flag's value is checked before anything is
//! opened; errors name the flag.

mod net;
mod run;

use clap::{Parser, Subcommand};

/// skiff: a minimal KVM hypervisor whose guests get NAT networking with no setup.
#[derive(Parser, Debug)]
#[command(name = "skiff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a microVM with its serial console on the terminal.
    Run(run::RunArgs),
    /// Networks: run one, as libvirt's default network does for its guests.
    #[command(subcommand)]
    Net(net::NetCommand),
}

/// Logs go to stderr; `RUST_LOG` filters them (default: info; warn for `skiff run`, whose
/// terminal is the guest's console).
pub fn init_logging() {
    let default = if std::env::args().nth(1).as_deref() == Some("run") {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Parses the command line and runs the command; returns the process exit status.
pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Net(c) => net::run(c).map(|()| 0),
    }
}
