//! Placeholder: being written.

/// Runs the emulator from the command line (`args[0]` is the program name).
pub fn main(_args: Vec<String>) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
