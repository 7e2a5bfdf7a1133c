//! Machine setup: nightly's rust-src, bpf-linker against nightly's own libLLVM, Debian packages.
//!
//! `ensure` checks quickly and installs only what is missing; `run` does the same, loudly.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::exec;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Packages the tests and benchmarks use: the peer servers, real clients, capture tools.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "kea-dhcp4-server",
    "kea-admin",
    "isc-dhcp-server",
    "isc-dhcp-client",
    "isc-dhcp-relay",
    "dnsmasq",
    "busybox",
    "tcpdump",
    "tshark",
    "bpftool",
    "sqlite3",
    // The benchmark chart's font.
    "fonts-dejavu-core",
];

pub fn run(root: &Path) -> Result<()> {
    ensure(root)?;
    println!("setup: nightly rust-src, bpf-linker and Debian packages are in place");
    Ok(())
}

pub fn ensure(root: &Path) -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker(root)?;
    ensure_packages()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly (eBPF builds core from source)");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

/// nightly's libLLVM: (sysroot lib dir, versioned file name, LLVM major).
fn nightly_llvm() -> Result<(PathBuf, String, u32)> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let version = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("no LLVM version in `rustc +nightly -vV`"))?;
    let soname = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("nightly ships no libLLVM.so.* in {}", lib.display()))?;
    Ok((lib, soname, major))
}

/// Is there a bpf-linker that runs and links nightly's libLLVM?
fn bpf_linker_matches(soname: &str) -> bool {
    let Ok(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let Ok(ldd) = output(Command::new("ldd").arg(path.trim())) else {
        return false;
    };
    let linked = ldd
        .lines()
        .any(|l| l.contains(soname) && !l.contains("not found"));
    linked
        && Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn ensure_bpf_linker(root: &Path) -> Result<()> {
    let (lib, soname, major) = nightly_llvm()?;
    if bpf_linker_matches(&soname) {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about a minute)"
    );
    // llvm-sys finds LLVM through LLVM_PREFIX/lib/libLLVM.so; the binary then needs the
    // versioned file at run time, which the rpath points at (nightly's own lib directory).
    let prefix = root.join("target/bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&soname), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    exec(
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            ),
    )?;
    if !bpf_linker_matches(&soname) {
        bail!("bpf-linker was built but does not run against {soname}; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    // Keep the packaged servers from starting on install: tests start their own copies.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = exec(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .and_then(|_| {
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}
