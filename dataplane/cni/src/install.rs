//! `bulkhead-cni install`: what the agent's init container runs on a node. Copies the plugin
//! into the CNI binary folder and chains it at the end of the node's network configuration
//! (the first `*.conflist` in name order, the one the runtime uses), as Cilium's generic-veth
//! chaining and Istio's CNI do. Idempotent: a configuration that already chains the plugin is
//! only updated; every file is replaced atomically.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The plugin's `type` in a conflist.
pub const PLUGIN_TYPE: &str = "bulkhead-cni";

/// What an install did.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub conflist: PathBuf,
    /// False when the conflist already chained the plugin with the same settings.
    pub conflist_changed: bool,
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().ok_or_else(|| format!("{}: no parent folder", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("bulkhead")));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Chains the plugin into `conf_dir`'s first conflist and copies `binary` into `bin_dir`.
pub fn install(binary: &Path, bin_dir: &Path, conf_dir: &Path, instance: Option<&str>) -> Result<Installed, String> {
    let mut lists: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(|e| format!("CNI configuration folder {}: {e}", conf_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    lists.sort();
    let conflist = lists.into_iter().next().ok_or_else(|| {
        format!("{}: no *.conflist (the main network plugin writes one; a single-plugin *.conf must become a conflist to be chained)", conf_dir.display())
    })?;
    let text = std::fs::read_to_string(&conflist).map_err(|e| format!("{}: {e}", conflist.display()))?;
    let mut conf: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", conflist.display()))?;
    let plugins = conf
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("{}: plugins: missing or not a list", conflist.display()))?;
    let mut ours = json!({"type": PLUGIN_TYPE});
    if let Some(i) = instance {
        ours["instance"] = i.into();
    }
    let before = plugins.clone();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    // Last in the chain: it needs the main plugin's result (the pod's interface and IPs).
    plugins.push(ours);
    let conflist_changed = *plugins != before;
    let bin = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    write_atomic(&target, &bin, 0o755)?;
    if conflist_changed {
        let out = serde_json::to_vec_pretty(&conf).map_err(|e| e.to_string())?;
        write_atomic(&conflist, &out, 0o644)?;
    }
    Ok(Installed { binary: target, conflist, conflist_changed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_once_and_keeps_the_main_plugin_first() {
        let root = std::env::temp_dir().join(format!("bh-cni-install-{}", std::process::id()));
        let (bin, conf) = (root.join("bin"), root.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("10-bridge.conflist"), r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#).unwrap();
        std::fs::write(conf.join("99-other.conflist"), r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#).unwrap();
        let me = std::env::current_exe().unwrap();
        let first = install(&me, &bin, &conf, Some("node")).expect("install");
        assert!(first.conflist_changed && first.conflist.ends_with("10-bridge.conflist"));
        let again = install(&me, &bin, &conf, Some("node")).expect("install again");
        assert!(!again.conflist_changed, "a second install changes nothing");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(conf.join("10-bridge.conflist")).unwrap()).unwrap();
        let types: Vec<&str> = v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["bridge", "portmap", PLUGIN_TYPE]);
        assert_eq!(v["plugins"][2]["instance"], "node");
        assert!(bin.join(PLUGIN_TYPE).is_file());
        let untouched = std::fs::read_to_string(conf.join("99-other.conflist")).unwrap();
        assert!(!untouched.contains(PLUGIN_TYPE));
        std::fs::write(conf.join("00-broken.conflist"), "{").unwrap();
        let err = install(&me, &bin, &conf, None).unwrap_err();
        assert!(err.contains("00-broken.conflist") && err.contains("not JSON"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
