//! `bulkhead-cni`: called by the container runtime with `CNI_*` in the environment and the
//! network config on stdin. Results go to stdout; errors too, as the spec's JSON error object,
//! with a non-zero exit.

use std::io::Read as _;

fn main() {
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
