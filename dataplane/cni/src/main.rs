//! `bulkhead-cni`: called by the container runtime with `CNI_*` in the environment and the
//! network config on stdin. Results go to stdout; errors too, as the spec's JSON error object,
//! with a non-zero exit.
//!
//! `bulkhead-cni install --bin-dir DIR --conf-dir DIR [--instance NAME]` (no runtime passes
//! arguments) installs the plugin on a node: see [`bulkhead_cni::install`].

use std::io::Read as _;
use std::path::PathBuf;

fn install(args: &[String]) -> Result<(), String> {
    let (mut bin, mut conf, mut instance) = (PathBuf::from("/opt/cni/bin"), PathBuf::from("/etc/cni/net.d"), None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a}: needs a value"));
        match a.as_str() {
            "--bin-dir" => bin = value()?.into(),
            "--conf-dir" => conf = value()?.into(),
            "--instance" => instance = Some(value()?),
            other => return Err(format!("unknown argument {other:?} (expected --bin-dir, --conf-dir, --instance)")),
        }
    }
    let me = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
    let r = bulkhead_cni::install::install(&me, &bin, &conf, instance.as_deref())?;
    println!(
        "installed {}; {} {}",
        r.binary.display(),
        if r.conflist_changed { "chained into" } else { "already chained in" },
        r.conflist.display()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("install") {
        if let Err(e) = install(&args[1..]) {
            eprintln!("bulkhead-cni install: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let env = bulkhead_cni::plugin::Env::from_process();
    match bulkhead_cni::plugin::run(&env, &stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err((version, e)) => {
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}
