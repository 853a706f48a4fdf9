//! Builds the eBPF programs (dataplane-ebpf) with the nightly toolchain and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes!`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest).join("../../dataplane-ebpf");
    let root = root.canonicalize().with_context(|| format!("eBPF crate not found at {}", root.display()))?;
    let root = root.to_str().context("eBPF crate path is not UTF-8")?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/../dataplane/common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "bulkhead-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (needs the nightly toolchain with rust-src and bpf-linker; run scripts/setup.sh)")
}
