//! `cargo xtask`: the project's commands. Every command first makes sure the machine has what
//! it needs (`setup`), so a fresh machine needs no manual step.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xdpdhcp development tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src for nightly, a bpf-linker built
    /// against nightly's LLVM, and the Debian packages of the peer servers and clients.
    /// Idempotent; every other command runs it first.
    Setup,
    /// Build the daemon (and the XDP program it embeds) in release mode.
    Build,
    /// Run every test (as root: the tests load XDP programs and create network namespaces).
    Test {
        /// Run only the tests whose names contain FILTER.
        filter: Option<String>,
    },
    /// Measure: the XDP microbenchmark, then xdpdhcp against Kea, ISC dhcpd and dnsmasq
    /// (`--fastpath`: only the microbenchmark; `--quick`: under three minutes).
    Bench(bench::BenchArgs),
    /// Build and run the daemon on a real NIC: `cargo xtask run -- serve --config FILE`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build and run the network-namespace lab: the daemon with XDP, dhclient, udhcpc, a relay
    /// (`-- --hold` keeps it up to look around).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace")?;
    match cli.command {
        Task::Setup => setup::run(&root),
        Task::Build => {
            setup::ensure(&root)?;
            build_release()
        }
        Task::Test { filter } => {
            setup::ensure(&root)?;
            test(filter.as_deref())
        }
        Task::Bench(args) => {
            setup::ensure(&root)?;
            bench::run(&root, &args)
        }
        Task::Run { args } => {
            setup::ensure(&root)?;
            build_release()?;
            exec(Command::new(root.join("target/release/xdpdhcp")).args(args))
        }
        Task::Lab { args } => {
            setup::ensure(&root)?;
            build_release()?;
            as_root("the lab")?;
            exec(
                tests_bin("lab")
                    .args(args)
                    .env("XDPDHCP_BIN", root.join("target/release/xdpdhcp")),
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, inheriting stdio; fails if it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo run` of one of the binaries in `tests/` (lab, benchmarks), built in release mode.
fn tests_bin(name: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "xdpdhcp-tests",
        "--bin",
        name,
        "--",
    ]);
    cmd
}

fn build_release() -> Result<()> {
    exec(cargo().args(["build", "--release", "-p", "dhcp-user"]))
}

fn as_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} loads XDP programs and creates network namespaces: run it as root");
    }
    Ok(())
}

fn test(filter: Option<&str>) -> Result<()> {
    as_root("the test suite")?;
    // The end-to-end tests run the real daemon binary: build it first (debug, like the tests).
    exec(cargo().args(["build", "-p", "dhcp-user", "--bin", "xdpdhcp"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    cmd.env("XDPDHCP_BIN", workspace_root().join("target/debug/xdpdhcp"));
    cmd.arg("--");
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    exec(&mut cmd)
}
