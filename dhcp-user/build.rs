//! Compiles the XDP program (dhcp-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker; the object lands in OUT_DIR and is embedded by `src/fastpath/object.rs`.
//! `cargo xtask setup` installs what this needs.
use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    let ebpf = Package {
        name: "dhcp-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../dhcp-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
