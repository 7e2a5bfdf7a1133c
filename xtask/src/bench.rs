//! `cargo xtask bench`: measurements, never assertions.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::{cargo, exec};

#[derive(Args)]
pub struct BenchArgs {
    /// Only the XDP microbenchmark (BPF_PROG_TEST_RUN): ns per ACK, per punt, per pass.
    #[arg(long)]
    fastpath: bool,
    /// Shorter runs, for CI-sized checks.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "xdpdhcp-tests",
        "--bin",
        "fastpath-bench",
        "--",
    ]);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(json) = &args.json {
        cmd.arg("--json").arg(root.join(json));
    }
    exec(&mut cmd)?;
    if !args.fastpath {
        println!(
            "(the side-by-side server benchmarks are not built yet; this ran the fastpath microbenchmark)"
        );
    }
    Ok(())
}
