//! Compiles the benchmark load generator (bench-ebpf) for bpfel-unknown-none, like dhcp-user
//! does for the XDP program.
use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    let generator = Package {
        name: "bench-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([generator], Toolchain::default())
}
