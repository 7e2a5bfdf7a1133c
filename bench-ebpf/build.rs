//! Link settings for the XDP object.
fn main() {
    // bpf-linker is an undeclared build dependency: rebuild when it changes.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // Let LLVM emit one load/store for an unaligned u16/u32/u64 instead of byte-by-byte
    // sequences (the reply is assembled at odd offsets). x86-64 and arm64 JITs handle
    // unaligned access natively; the verifier only objects under BPF_F_STRICT_ALIGNMENT.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo::rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    }
}
