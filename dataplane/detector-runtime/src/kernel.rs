//! What the detector writes into the kernel: exec profiles, workload entries, the isolation allow-list, and which probes are attached.

use super::*;

impl Detector {
    /// Makes the kernel's exec entries of a profile what the profile (and its workloads'
    /// extra allowed execs) holds: adds first, then removes what is no longer allowed.
    pub(crate) fn write_profile(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), DetectorError> {
        let (ids, paths, pairs, inline) = {
            let g = self.shared.state();
            let members: Vec<&WorkloadState> = g.workloads.values().filter(|w| w.profile_name() == name).collect();
            let ids: BTreeSet<u32> = members.iter().map(|w| w.profile_id).collect();
            let mut paths: BTreeSet<String> = g.profiles.get(name).map(|p| p.execs.clone()).unwrap_or_default();
            for w in &members {
                paths.extend(w.spec.allowed_execs.iter().cloned());
            }
            let hash = |p: &str| if p.is_empty() { 0 } else { det::path_hash(p.as_bytes()) };
            let pairs: BTreeSet<(u64, u64)> =
                g.profiles.get(name).map(|p| p.lineage.iter().map(|l| (hash(&l.parent), hash(&l.child))).collect()).unwrap_or_default();
            let inline: BTreeSet<String> = g.profiles.get(name).map(|p| p.inline_code.clone()).unwrap_or_default();
            (ids, paths, pairs, inline)
        };
        let want: BTreeSet<u64> = paths.iter().map(|p| det::path_hash(p.as_bytes())).collect();
        // Executables with learned lineage are judged on their parent too.
        let judged: BTreeSet<u64> = pairs.iter().map(|p| p.1).collect();
        for id in ids {
            // The pairs first: an exec entry that turns lineage judging on never meets a
            // partial set of them.
            for &(parent_hash, child_hash) in &pairs {
                let key = LineageKeyV1 { profile_id: id, _pad: 0, parent_hash, child_hash };
                dp.maps.det.lineage.insert(key, 1, 0).map_err(|e| map_err(det::map_names::LINEAGE, e))?;
            }
            for p in &paths {
                let h = det::path_hash(p.as_bytes());
                let key = ExecKeyV1 { profile_id: id, _pad: 0, path_hash: h };
                let mut v = det::exec_allow::ALLOWED;
                if judged.contains(&h) {
                    v |= det::exec_allow::LINEAGE;
                }
                if profile::is_interpreter(p) {
                    v |= det::exec_allow::INTERPRETER;
                }
                if inline.contains(p) {
                    v |= det::exec_allow::INLINE;
                }
                dp.maps.det.exec_allow.insert(key, v, 0).map_err(|e| map_err(det::map_names::EXEC_ALLOW, e))?;
            }
            let had = self.written_execs.insert(id, want.clone()).unwrap_or_default();
            for h in had.difference(&want) {
                let _ = dp.maps.det.exec_allow.remove(&ExecKeyV1 { profile_id: id, _pad: 0, path_hash: *h });
            }
            let had = self.written_lineage.insert(id, pairs.clone()).unwrap_or_default();
            for &(parent_hash, child_hash) in had.difference(&pairs) {
                let _ = dp.maps.det.lineage.remove(&LineageKeyV1 { profile_id: id, _pad: 0, parent_hash, child_hash });
            }
        }
        self.shared.sync_file_rules(name).map_err(det_err)
    }

    /// Writes the profile (allowed execs) and then the workload entry: the probe never sees
    /// protect mode with a half-written profile.
    pub(crate) fn write_workload(&mut self, dp: &mut Dataplane, w: &WorkloadState) -> Result<(), DetectorError> {
        self.write_profile(dp, w.profile_name())?;
        let a = w.spec.actions;
        let mut flags = 0;
        if a.kill {
            flags |= det::wl_flags::KILL_ON_EXEC;
        }
        if a.isolate {
            flags |= det::wl_flags::ISOLATE_ON_EXEC;
        }
        if w.spec.syscalls {
            flags |= det::wl_flags::SYSCALLS;
        }
        if w.opts.sequences.is_some() {
            flags |= det::wl_flags::SYSCALL_SEQ;
        }
        if w.opts.files.is_some() {
            flags |= det::wl_flags::FILES;
            for (fa, kill, isolate) in [
                (a.file_write, det::wl_flags::KILL_ON_FILE_WRITE, det::wl_flags::ISOLATE_ON_FILE_WRITE),
                (a.sensitive_read, det::wl_flags::KILL_ON_SENSITIVE_READ, det::wl_flags::ISOLATE_ON_SENSITIVE_READ),
                (a.dir_list, det::wl_flags::KILL_ON_DIR_LIST, det::wl_flags::ISOLATE_ON_DIR_LIST),
            ] {
                if fa.kill {
                    flags |= kill;
                }
                if fa.isolate {
                    flags |= isolate;
                }
            }
        }
        // The sequence thread learns of the workload before the kernel streams for it.
        self.shared.bump();
        let v = WorkloadV1 { profile_id: w.profile_id, ifindex: w.ifindex, mode: w.effective_mode().kernel(), _pad: [0; 3], flags };
        dp.maps.det.workloads.insert(w.cgroup_id, v, 0).map_err(|e| map_err(det::map_names::WORKLOADS, e))?;
        // Again after the write: confirming this generation means the thread has handled
        // every record sent under the old entry (see `Shared::wait_sequences_applied`).
        self.shared.bump();
        Ok(())
    }

    pub(crate) fn write_isolation_allow(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let mut entries: Vec<(u32, (IpAddr, u16, u8))> = self.api_allow.iter().map(|e| (0, *e)).collect();
        {
            let g = self.shared.state();
            for w in g.workloads.values().filter(|w| w.ifindex != 0) {
                entries.extend(w.opts.isolation_allow.iter().map(|e| (w.ifindex, *e)));
            }
        }
        // Exact IPv6 entries in their own map; any-address entries (0.0.0.0) match both
        // families in the IPv4 map.
        let (mut new, mut new6) = (Vec::new(), Vec::new());
        for (ifindex, (a, p, protocol)) in entries {
            let port_be = p.to_be_bytes();
            match a {
                IpAddr::V4(a) => new.push(AllowKeyV2 { ifindex, addr_be: a.octets(), port_be, protocol, _pad: 0 }),
                IpAddr::V6(a) => new6.push(AllowKey6V1 { ifindex, addr_be: a.octets(), port_be, protocol, _pad: 0 }),
            }
        }
        let old: Vec<AllowKeyV2> = dp.maps.det.isolation_allow.keys().filter_map(Result::ok).collect();
        for k in &new {
            dp.maps.det.isolation_allow.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::ISOLATION_ALLOW, e))?;
        }
        for k in old.iter().filter(|k| !new.contains(k)) {
            let _ = dp.maps.det.isolation_allow.remove(k);
        }
        let old6: Vec<AllowKey6V1> = dp.maps.det.isolation_allow6.keys().filter_map(Result::ok).collect();
        for k in &new6 {
            dp.maps.det.isolation_allow6.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::ISOLATION_ALLOW6, e))?;
        }
        for k in old6.iter().filter(|k| !new6.contains(k)) {
            let _ = dp.maps.det.isolation_allow6.remove(k);
        }
        Ok(())
    }

    /// The syscall probe runs only while some workload wants syscall counts or sequences.
    pub(crate) fn sync_syscall_probe(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let want = self.shared.state().workloads.values().any(|w| w.spec.syscalls || w.opts.sequences.is_some());
        Ok(dp.set_syscall_probe(want)?)
    }

    /// The file probe runs only while some workload has a file baseline (attaching it puts
    /// every task's syscalls on the slower traced entry path).
    pub(crate) fn sync_file_probe(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let want = self.shared.state().workloads.values().any(|w| w.opts.files.is_some());
        Ok(dp.set_file_probe(want)?)
    }

    /// TC reports every new flow only of the monitored workloads' endpoints (FLOW_WATCH):
    /// the network model needs them, nothing else does, and a busy unmonitored pod next to
    /// them should not pay for events nobody reads. Endpoints past the per-endpoint array
    /// fall back to the global FLOW_EVENTS_ALL flag. Called after every sync too (the revision
    /// bump may have written the config first).
    pub fn sync_flow_events(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let ifindexes: BTreeSet<u32> = self.shared.state().workloads.values().map(|w| w.ifindex).filter(|&i| i != 0).collect();
        // Protect mode's learned destinations go in before the flags that make TC drop
        // everything else, and stale ones leave after.
        let (want, entries) = self.learned_plan();
        self.write_learned(dp, &entries, false)?;
        let werr = |e: aya::maps::MapError| map_err(bulkhead_common::map_names::FLOW_WATCH, e);
        let mut watched = match self.watched.take() {
            Some(w) => w,
            // First sync: whatever slots an earlier agent set.
            None => match bulkhead_loader::batch::array_all(&dp.maps.flow_watch) {
                Ok(all) => all.into_iter().filter(|&(_, v)| v != 0).collect(),
                Err(_) => (0..bulkhead_common::capacity::IFINDEX_DIRECT).filter_map(|i| dp.maps.flow_watch.get(&i, 0).ok().filter(|&v| v != 0).map(|v| (i, v))).collect(),
            },
        };
        for (&i, &v) in &want {
            if watched.get(&i) != Some(&v) {
                dp.maps.flow_watch.set(i, v, 0).map_err(werr)?;
                watched.insert(i, v);
            }
        }
        let gone: Vec<u32> = watched.keys().copied().filter(|i| !want.contains_key(i)).collect();
        for i in gone {
            dp.maps.flow_watch.set(i, 0, 0).map_err(werr)?;
            watched.remove(&i);
        }
        self.watched = Some(watched);
        self.write_learned(dp, &entries, true)?;
        let want = ifindexes.iter().any(|&i| !bulkhead_common::ifindex_is_direct(i));
        let mut cfg = dp.maps.config.get(&0, 0).map_err(|e| map_err(bulkhead_common::map_names::CONFIG, e))?;
        if cfg.tcp_established_timeout_ns == 0 {
            // Not configured yet: the first sync writes the config, and calls this again.
            return Ok(());
        }
        let flag = bulkhead_common::config_flags::FLOW_EVENTS_ALL;
        let next = if want { cfg.flags | flag } else { cfg.flags & !flag };
        if next != cfg.flags {
            cfg.flags = next;
            dp.maps.config.set(0, cfg, 0).map_err(|e| map_err(bulkhead_common::map_names::CONFIG, e))?;
            tracing::info!(on = want, "flow events for every new flow");
        }
        Ok(())
    }
}
