//! `cargo xtask bench`: measurements, never assertions.
//!
//! Runs the XDP microbenchmark (BPF_PROG_TEST_RUN), then xdpdhcp side by side with Kea, ISC
//! dhcpd and dnsmasq in network namespaces (the `bench` binary of the tests crate). The full
//! run writes BENCHMARKS.md and bench-chart.png at the repository root.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::{as_root, build_release, exec, tests_bin};

#[derive(Args)]
pub struct BenchArgs {
    /// Only the XDP microbenchmark (BPF_PROG_TEST_RUN): ns per ACK, per punt, per pass.
    #[arg(long)]
    fastpath: bool,
    /// Smaller client counts and shorter steps: under three minutes, for CI-sized checks
    /// (BENCHMARKS.md is left alone).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Only these servers: xdpdhcp, kea, dhcpd, dnsmasq (comma-separated).
    #[arg(long, value_name = "LIST")]
    servers: Option<String>,
    /// Only these workloads: renew, dora, perfdhcp, reboot, failover, scale (comma-separated).
    #[arg(long, value_name = "LIST")]
    workloads: Option<String>,
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    as_root("the benchmarks")?;

    // 1. The XDP program alone.
    let fastpath_json =
        std::env::temp_dir().join(format!("xdpdhcp-fastpath-{}.json", std::process::id()));
    let mut cmd = tests_bin("fastpath-bench");
    if args.quick {
        cmd.arg("--quick");
    }
    let microbench_json = if args.fastpath {
        args.json.as_ref().map(|j| root.join(j))
    } else {
        Some(fastpath_json.clone())
    };
    if let Some(json) = &microbench_json {
        cmd.arg("--json").arg(json);
    }
    exec(&mut cmd)?;
    if args.fastpath {
        return Ok(());
    }

    // 2. The servers side by side.
    build_release()?;
    let mut cmd = tests_bin("bench");
    cmd.env("XDPDHCP_BIN", root.join("target/release/xdpdhcp"));
    cmd.arg("--fastpath-json").arg(&fastpath_json);
    if args.quick {
        cmd.args(["--quick", "--command", "cargo xtask bench --quick"]);
    } else {
        cmd.arg("--report").arg(root);
    }
    if let Some(json) = &args.json {
        cmd.arg("--json").arg(root.join(json));
    }
    if let Some(s) = &args.servers {
        cmd.args(["--servers", s]);
    }
    if let Some(w) = &args.workloads {
        cmd.args(["--workloads", w]);
    }
    let result = exec(&mut cmd);
    let _ = std::fs::remove_file(&fastpath_json);
    result
}
