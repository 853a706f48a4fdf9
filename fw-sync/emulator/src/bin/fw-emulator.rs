//! Placeholder: the command that runs an emulator for the vendor-client checks.
fn main() {}
