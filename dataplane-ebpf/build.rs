//! Linker arguments for bpf-linker.
//!
//! bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default, which sets LLVM's
//! store budget for inline memset to zero: every zeroed padding field (a 3-byte `_pad` in a
//! conntrack or peer key) became a BPF-to-BPF call to a `memset` loop. On the hot path that
//! was two or three calls per packet, each paying the kernel's return thunk. Without the flag
//! LLVM expands memset and memcpy into plain stores, as for any other target.
fn main() {
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
