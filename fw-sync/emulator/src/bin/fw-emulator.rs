//! `fw-emulator panos|fortios [OPTIONS]`: runs one emulator until killed, for the vendor
//! client checks and for trying fw-sync by hand. Each vendor module parses its own options.

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let vendor = if args.len() > 1 { args.remove(1) } else { String::new() };
    match vendor.as_str() {
        "panos" => bulkhead_fw_emulator::panos::main(args),
        "fortios" => bulkhead_fw_emulator::fortios::main(args),
        _ => anyhow::bail!("usage: fw-emulator panos|fortios [OPTIONS] (--help after the vendor for its options)"),
    }
}
