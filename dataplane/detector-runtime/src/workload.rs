//! Workloads: how each is watched (mode, actions, options) and what the agent reports of it.

use super::*;

/// How a workload is watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record execs and outbound flows into the profile; no enforcement.
    #[default]
    Learn,
    /// Report execs outside the profile; no action.
    Monitor,
    /// Act on execs outside the profile (see [`Actions`]).
    Protect,
}

impl Mode {
    pub(crate) fn kernel(self) -> u8 {
        match self {
            Mode::Learn => det::mode::LEARN,
            Mode::Monitor => det::mode::MONITOR,
            Mode::Protect => det::mode::PROTECT,
        }
    }
}

/// What happens on a finding decided in user space in protect mode (network findings on the
/// flow event, syscall findings of the sequence model). None set = alert only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetActions {
    /// Write the isolation entry (TC drops the endpoint's traffic but the allow-list).
    pub isolate: bool,
    /// Freeze the workload's cgroup.
    pub pause: bool,
    /// Kill every process of the workload's cgroup.
    pub terminate: bool,
}

/// What happens on a file finding in protect mode. `kill` and `isolate` are done by the file
/// probe itself, before the syscall runs (for paths the kernel could not judge, by the agent
/// once it has resolved them); `pause` and `terminate` by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileActions {
    pub kill: bool,
    pub isolate: bool,
    pub pause: bool,
    pub terminate: bool,
}

/// What happens on a violation in protect mode. Exec violations: `kill` and `isolate` are
/// done by the exec probe itself; `pause` and `terminate` by the agent on the probe's event.
/// Network findings: the per-finding [`NetActions`], all in user space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actions {
    /// SIGKILL the offending process (in the kernel).
    pub kill: bool,
    /// Drop the workload's traffic except the isolation allow-list (in the kernel).
    pub isolate: bool,
    /// Freeze the workload's cgroup (user space).
    pub pause: bool,
    /// Kill every process of the workload's cgroup (user space).
    pub terminate: bool,
    /// On an outbound flow to a peer the profile never saw.
    #[serde(default)]
    pub new_peer: NetActions,
    /// On an outbound flow to a known peer on a port/protocol the profile never saw.
    #[serde(default)]
    pub new_port: NetActions,
    /// On a port scan ([`network::ScanConfig`]).
    #[serde(default)]
    pub port_scan: NetActions,
    /// On an inbound flow from a client, or to a port, the profile never saw.
    #[serde(default)]
    pub new_inbound: NetActions,
    /// On a finding of the syscall-sequence model ([`sequence`]).
    #[serde(default)]
    pub syscall_anomaly: NetActions,
    /// On a write, create, delete, rename or chmod/chown in a directory the profile never
    /// changed that way ([`files`]).
    #[serde(default)]
    pub file_write: FileActions,
    /// On a read of a sensitive path the profile never read.
    #[serde(default)]
    pub sensitive_read: FileActions,
    /// On a listing of a directory the profile never listed.
    #[serde(default)]
    pub dir_list: FileActions,
}

/// A workload to monitor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Name in events and commands (e.g. the pod's `namespace/name`).
    pub name: String,
    /// The workload's cgroup v2 folder.
    pub cgroup: PathBuf,
    /// The endpoint's host-side interface (in the agent's node namespace), for isolation.
    pub interface: Option<String>,
    pub mode: Mode,
    pub actions: Actions,
    /// Count the workload's syscalls.
    pub syscalls: bool,
    /// Executables allowed besides the profile's.
    pub allowed_execs: Vec<String>,
}

/// More about a monitored workload: its shared profile, scan thresholds, managing policy.
/// The default (no shared profile, default thresholds, managed through the API) is what
/// [`Detector::monitor`] uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadOptions {
    /// Profile shared with other workloads of that name; `None` = the workload's own (its name).
    #[serde(default)]
    pub profile: Option<String>,
    /// The labels keying the profile (informational, copied into a new profile).
    #[serde(default)]
    pub profile_labels: BTreeMap<String, String>,
    /// Port-scan thresholds.
    #[serde(default)]
    pub scan: network::ScanConfig,
    /// The DetectorPolicy (`namespace/name`) managing this workload; `None` = the API.
    #[serde(default)]
    pub policy: Option<String>,
    /// The syscall-sequence model's settings; `None` = no sequence model (no syscall stream).
    #[serde(default)]
    pub sequences: Option<SequenceConfig>,
    /// What this workload may still reach while isolated (address of either family or
    /// 0.0.0.0 for any, port, IP protocol), besides the API's list for every workload.
    #[serde(default)]
    pub isolation_allow: Vec<(IpAddr, u16, u8)>,
    /// The file-system baseline's settings; `None` = no file baseline (no file probe).
    #[serde(default)]
    pub files: Option<files::FileConfig>,
}

/// A monitored workload as the agent keeps it (persisted, so a restarted agent knows it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadState {
    pub spec: WorkloadSpec,
    pub cgroup_id: u64,
    /// Kernel id of the workload's (shared) profile.
    pub profile_id: u32,
    pub ifindex: u32,
    #[serde(default)]
    pub opts: WorkloadOptions,
    /// Restored in monitor or protect mode while its profile was gone (deleted, lost): it
    /// only alerts (the kernel reports execs, user space takes no action) until a profile
    /// exists again: imported, learned (the workload set to learn), or the mode set anew.
    #[serde(default)]
    pub profile_missing: bool,
    /// When (monotonic ns) the workload last left learn mode; 0 = never. Flow events are
    /// read from a ring after the fact, so a flow the workload opened while learning can be
    /// judged after the switch: its timestamp, not the moment it is read, says which mode it
    /// belongs to. Not persisted: a restarted agent has read the ring's old events.
    #[serde(skip)]
    pub learned_until_ns: u64,
}

impl WorkloadState {
    /// The mode the kernel and the actions follow: protect only alerts while the profile is
    /// missing, since an empty profile would make every exec and peer a finding.
    pub fn effective_mode(&self) -> Mode {
        if self.profile_missing && self.spec.mode == Mode::Protect { Mode::Monitor } else { self.spec.mode }
    }

    /// Whether an event stamped `ts_ns` (monotonic) is learned rather than judged.
    pub fn learns_at(&self, ts_ns: u64) -> bool {
        self.spec.mode == Mode::Learn || ts_ns < self.learned_until_ns
    }

    /// The stamp a workload keeps when its mode becomes `mode`, having been `old`.
    pub(crate) fn learned_until_after(old: Option<&WorkloadState>, mode: Mode) -> u64 {
        match old {
            _ if mode == Mode::Learn => 0,
            Some(o) if o.spec.mode == Mode::Learn => bulkhead_loader::clock::monotonic_ns(),
            Some(o) => o.learned_until_ns,
            None => 0,
        }
    }

    /// The name of the profile this workload learns into and is judged by.
    pub fn profile_name(&self) -> &str {
        self.opts.profile.as_deref().unwrap_or(&self.spec.name)
    }
}

/// A workload's state for status output.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub mode: Mode,
    pub actions: Actions,
    /// The shared profile's name.
    pub profile: String,
    /// Executables in the profile.
    pub learned_execs: usize,
    /// Outbound destinations in the profile.
    pub learned_peers: usize,
    /// Normal syscalls held by the profile's sequence model (0 = none learned).
    pub learned_syscalls: usize,
    /// Directories in the profile's file baseline.
    pub learned_dirs: usize,
    /// Whether the workload's syscalls go to the sequence model.
    pub sequence_model: bool,
    pub isolated: bool,
    pub frozen: bool,
    /// The managing DetectorPolicy, if any.
    pub policy: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mode: Mode, learned_until_ns: u64) -> WorkloadState {
        WorkloadState {
            spec: WorkloadSpec { name: "ns/w".into(), mode, ..Default::default() },
            cgroup_id: 1,
            profile_id: 1,
            ifindex: 0,
            opts: WorkloadOptions::default(),
            profile_missing: false,
            learned_until_ns,
        }
    }

    #[test]
    fn a_flow_opened_while_learning_is_learned_even_when_read_after_the_switch() {
        let learning = state(Mode::Learn, 0);
        let before = bulkhead_loader::clock::monotonic_ns();
        let stamp = WorkloadState::learned_until_after(Some(&learning), Mode::Monitor);
        assert!(stamp >= before, "the switch is stamped with the time it happened: {stamp} < {before}");
        let monitoring = state(Mode::Monitor, stamp);
        assert!(monitoring.learns_at(stamp - 1), "an event from before the switch is learned");
        assert!(!monitoring.learns_at(stamp), "an event from the switch on is judged");
        // Monitor -> protect keeps the stamp; back to learn clears it; a new workload has none.
        assert_eq!(WorkloadState::learned_until_after(Some(&monitoring), Mode::Protect), stamp);
        assert_eq!(WorkloadState::learned_until_after(Some(&monitoring), Mode::Learn), 0);
        assert_eq!(WorkloadState::learned_until_after(None, Mode::Protect), 0);
        assert!(state(Mode::Learn, 0).learns_at(u64::MAX), "learn mode learns whatever the time");
    }
}
