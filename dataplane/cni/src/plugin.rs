//! The CNI commands of `bulkhead-cni` (spec 0.3.x, 0.4.0, 1.0.0; GC and STATUS of 1.1.0), as
//! a chained plugin after a main plugin (bridge, ptp) that made the container's veth.
//!
//! ADD passes `prevResult` through unchanged, finds the host side of the container's
//! interface from its peer index inside the container's netns (cross-checked with the host
//! interfaces `prevResult` lists, which holds also when the host veth is a bridge port), and
//! registers the attachment with the node agent, which answers once the programs are attached
//! and the entries written. No agent: code 11 (try again later), nothing left behind. DEL
//! never fails: without an agent it is queued on disk and replayed when the agent starts.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::api::{self, Attachment, Request};

/// Versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long ADD waits for the agent to enforce the endpoint.
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A CNI error: printed as JSON on stdout with a non-zero exit (spec §Error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The error object in `version`.
    pub fn to_json(&self, version: &str) -> String {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}

/// Spec error codes used here.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const BAD_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    /// Plugin-specific: CHECK found the endpoint missing or not enforced.
    pub const NOT_ENFORCED: u32 = 100;
    /// Plugin-specific: the agent refused the attachment.
    pub const AGENT_REFUSED: u32 = 101;
}

/// The CNI environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    /// Reads `CNI_*` from the process environment.
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env { command: v("CNI_COMMAND"), container_id: v("CNI_CONTAINERID"), netns: v("CNI_NETNS"), ifname: v("CNI_IFNAME"), args: v("CNI_ARGS") }
    }

    fn arg(&self, key: &str) -> Option<&str> {
        self.args.split(';').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v).filter(|v| !v.is_empty())
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(code::BAD_ENV, "missing environment variable", format!("{name} is required for {}", self.command)));
        }
        Ok(())
    }

    fn check_names(&self) -> Result<(), CniError> {
        let id_ok = self.container_id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && self.container_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !id_ok {
            return Err(CniError::new(code::BAD_ENV, "invalid CNI_CONTAINERID", format!("{:?} does not match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", self.container_id)));
        }
        let if_ok = !self.ifname.is_empty() && self.ifname.len() < 16 && !self.ifname.contains(['/', ':']) && !self.ifname.contains(char::is_whitespace);
        if !if_ok || self.ifname == "." || self.ifname == ".." {
            return Err(CniError::new(code::BAD_ENV, "invalid CNI_IFNAME", format!("{:?} is not a valid interface name", self.ifname)));
        }
        Ok(())
    }
}

/// The plugin's configuration (its own keys in the network config).
struct Config {
    version: String,
    prev_result: Option<Value>,
    /// The agent instance to register with (`instance`, default `node`).
    instance: String,
    raw: Value,
}

fn parse_config(stdin: &[u8]) -> Result<Config, CniError> {
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| CniError::new(code::DECODE, "cannot decode the network config on stdin", e.to_string()))?;
    let version = raw.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0").to_string();
    let instance = match raw.get("instance") {
        None => "node".to_string(),
        Some(Value::String(s)) if valid_instance(s) => s.clone(),
        Some(v) => return Err(CniError::new(code::INVALID_CONFIG, "invalid network config", format!("key \"instance\": {v} is not an agent instance name"))),
    };
    Ok(Config { version, prev_result: raw.get("prevResult").filter(|v| !v.is_null()).cloned(), instance, raw })
}

fn valid_instance(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Runs one CNI command; `Ok(Some(text))` is printed on stdout.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, (String, CniError)> {
    let version_of = |stdin: &[u8]| -> String {
        serde_json::from_slice::<Value>(stdin).ok().and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string)).unwrap_or_else(|| "1.0.0".into())
    };
    let fail = |e: CniError| (version_of(stdin), e);
    if env.command == "VERSION" {
        let v = version_of(stdin);
        return Ok(Some(json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS}).to_string()));
    }
    let cfg = parse_config(stdin).map_err(fail)?;
    if !SUPPORTED_VERSIONS.contains(&cfg.version.as_str()) {
        return Err(fail(CniError::new(code::INCOMPATIBLE_VERSION, "Incompatible CNI version", format!("config version {:?}; supported: {}", cfg.version, SUPPORTED_VERSIONS.join(", ")))));
    }
    let socket = api::socket_path(&cfg.instance);
    match env.command.as_str() {
        "ADD" => add(env, &cfg, &socket).map_err(fail),
        "DEL" => {
            del(env, &cfg, &socket);
            Ok(None)
        }
        "CHECK" => check(env, &socket).map(|()| None).map_err(fail),
        "STATUS" => match api::call(&socket, &Request::Status, Duration::from_secs(5)) {
            Ok(r) if r.ok => Ok(None),
            Ok(r) => Err(fail(CniError::new(code::NOT_READY, "agent not ready", r.error.unwrap_or_default()))),
            Err(e) => Err(fail(CniError::new(code::NOT_READY, "agent not ready", format!("{}: {e}", socket.display())))),
        },
        "GC" => {
            let valid = cfg
                .raw
                .get("cni.dev/valid-attachments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| Some((x.get("containerID")?.as_str()?.to_string(), x.get("ifname")?.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            match api::call(&socket, &Request::Gc { valid }, AGENT_TIMEOUT) {
                Ok(r) if r.ok => Ok(None),
                Ok(r) => Err(fail(CniError::new(code::AGENT_REFUSED, "garbage collection failed", r.error.unwrap_or_default()))),
                Err(e) => Err(fail(CniError::new(code::TRY_AGAIN_LATER, "agent unreachable", format!("{}: {e}", socket.display())))),
            }
        }
        other => Err(fail(CniError::new(code::BAD_ENV, "invalid CNI_COMMAND", format!("{other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC")))),
    }
}

fn add(env: &Env, cfg: &Config, socket: &std::path::Path) -> Result<Option<String>, CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_NETNS", &env.netns)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    env.check_names()?;
    let prev = cfg.prev_result.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "invalid network config", "no prevResult: bulkhead-cni is a chained plugin and runs after a main plugin (bridge, ptp)")
    })?;
    let peer = crate::netlink::peer_ifindex(&env.netns, &env.ifname)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "cannot find the container interface's host side", format!("{} in {}: {e}", env.ifname, env.netns)))?;
    let host_interface = crate::netlink::ifname_of(peer)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "cannot find the container interface's host side", format!("peer index {peer} of {} is not in this namespace", env.ifname)))?;
    let (host_listed, ips) = read_prev_result(prev, &env.ifname);
    if !host_listed.is_empty() && !host_listed.contains(&host_interface) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult disagrees with the container's interface",
            format!("the peer of {} is {host_interface}, prevResult's host interfaces are {}", env.ifname, host_listed.join(", ")),
        ));
    }
    // A pod without an address of either family would get no endpoint and fail closed:
    // refuse it here, where the runtime sees why.
    if ips.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid prevResult", format!("no IP address for interface {}", env.ifname)));
    }
    let attachment = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        host_interface,
        ips,
        pod_namespace: env.arg("K8S_POD_NAMESPACE").unwrap_or("default").to_string(),
        pod_name: env.arg("K8S_POD_NAME").unwrap_or(&env.container_id).to_string(),
        cgroup: env.arg("BULKHEAD_CGROUP").map(PathBuf::from),
    };
    match api::call(socket, &Request::Add(attachment), AGENT_TIMEOUT) {
        Ok(r) if r.ok => {}
        Ok(r) => return Err(CniError::new(code::AGENT_REFUSED, "the agent refused the endpoint", r.error.unwrap_or_default())),
        Err(e) => return Err(CniError::new(code::TRY_AGAIN_LATER, "the Bulkhead agent is unreachable; try again later", format!("{}: {e}", socket.display()))),
    }
    // The prevResult, passed through in the config's version.
    let mut out = prev.clone();
    out["cniVersion"] = Value::String(cfg.version.clone());
    Ok(Some(out.to_string()))
}

/// Host-side interface names (no `sandbox`) and the addresses (both families) of the
/// container's interface `ifname`, from a 0.3/0.4/1.0 result.
fn read_prev_result(prev: &Value, ifname: &str) -> (Vec<String>, Vec<IpAddr>) {
    let ifaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let sandboxed = |i: &Value| i.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let host: Vec<String> = ifaces.iter().filter(|i| !sandboxed(i)).filter_map(|i| i.get("name")?.as_str().map(str::to_string)).collect();
    let ours = ifaces.iter().position(|i| sandboxed(i) && i.get("name").and_then(Value::as_str) == Some(ifname));
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|ip| match (ours, ip.get("interface").and_then(Value::as_u64)) {
                    (Some(o), Some(i)) => i as usize == o,
                    _ => true,
                })
                .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    (host, ips)
}

/// Never fails: an agent that cannot be reached gets the DEL from its queue when it starts.
fn del(env: &Env, cfg: &Config, socket: &std::path::Path) {
    if env.container_id.is_empty() || env.ifname.is_empty() {
        return;
    }
    let req = Request::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    if matches!(api::call(socket, &req, AGENT_TIMEOUT), Ok(r) if r.ok) {
        return;
    }
    let dir = api::del_queue_dir(&cfg.instance);
    let name = format!("{}-{}.json", env.container_id, env.ifname);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&req).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
}

fn check(env: &Env, socket: &std::path::Path) -> Result<(), CniError> {
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let req = Request::Check { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    match api::call(socket, &req, AGENT_TIMEOUT) {
        Ok(r) if r.ok => Ok(()),
        Ok(r) => Err(CniError::new(code::NOT_ENFORCED, "the endpoint is not enforced", r.error.unwrap_or_default())),
        Err(e) => Err(CniError::new(code::TRY_AGAIN_LATER, "the Bulkhead agent is unreachable; try again later", format!("{}: {e}", socket.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env { command: cmd.into(), container_id: "c1".into(), netns: "/run/netns/none".into(), ifname: "eth0".into(), args: String::new() }
    }

    #[test]
    fn version_lists_the_spec_versions() {
        let out = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#).expect("VERSION").expect("output");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        for s in ["0.4.0", "1.0.0"] {
            assert!(v["supportedVersions"].as_array().expect("list").iter().any(|x| x == s), "{out}");
        }
    }

    #[test]
    fn bad_input_gets_the_spec_codes_and_names_the_key() {
        let err = |e: &Env, stdin: &[u8]| run(e, stdin).expect_err("must fail").1;
        assert_eq!(err(&env("ADD"), b"{not json").code, code::DECODE);
        assert_eq!(err(&env("ADD"), br#"{"cniVersion":"9.9.9"}"#).code, code::INCOMPATIBLE_VERSION);
        let e = err(&env("ADD"), br#"{"cniVersion":"1.0.0","instance":"../x"}"#);
        assert!(e.code == code::INVALID_CONFIG && e.details.contains("instance"), "{e:?}");
        let e = err(&Env { netns: String::new(), ..env("ADD") }, br#"{"cniVersion":"1.0.0"}"#);
        assert!(e.code == code::BAD_ENV && e.details.contains("CNI_NETNS"), "{e:?}");
        let e = err(&Env { container_id: "-bad id".into(), ..env("ADD") }, br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(e.code, code::BAD_ENV, "{e:?}");
        let e = err(&env("ADD"), br#"{"cniVersion":"1.0.0"}"#);
        assert!(e.code == code::INVALID_CONFIG && e.details.contains("prevResult"), "{e:?}");
        assert_eq!(err(&env("FROB"), br#"{"cniVersion":"1.0.0"}"#).code, code::BAD_ENV);
    }

    #[test]
    fn del_never_fails_even_without_agent_netns_or_prior_add() {
        let cfg = br#"{"cniVersion":"1.0.0","instance":"bh-cni-unit-none"}"#;
        for e in [env("DEL"), Env { netns: String::new(), ..env("DEL") }] {
            assert_eq!(run(&e, cfg).expect("DEL succeeds"), None);
        }
        let _ = std::fs::remove_dir_all(api::del_queue_dir("bh-cni-unit-none").parent().expect("instance dir"));
    }

    #[test]
    fn prev_result_of_both_formats_gives_host_interfaces_and_the_container_address() {
        let v040: Value = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"br0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
                "ips":[{"version":"4","address":"10.88.7.2/24","interface":2,"gateway":"10.88.7.1"}]}"#,
        )
        .expect("json");
        let (host, ips) = read_prev_result(&v040, "eth0");
        assert_eq!(host, vec!["br0".to_string(), "veth1".to_string()]);
        assert_eq!(ips, vec![IpAddr::from([10, 88, 7, 2])]);
        let v100: Value = serde_json::from_str(r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"x"}],"ips":[{"address":"10.1.0.5/32","interface":0}]}"#).expect("json");
        assert_eq!(read_prev_result(&v100, "eth0").1, vec![IpAddr::from([10, 1, 0, 5])]);
        let dual: Value = serde_json::from_str(r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"x"}],"ips":[{"address":"10.1.0.5/32","interface":0},{"address":"fd00::5/128","interface":0}]}"#).expect("json");
        assert_eq!(read_prev_result(&dual, "eth0").1, vec![IpAddr::from([10, 1, 0, 5]), "fd00::5".parse::<IpAddr>().expect("v6")], "both families");
    }
}
