//! Why a connection is allowed or denied, read from the compiled maps with the datapath
//! algorithm ([`crate::lookup`]): for each checked side, the deciding tier, policy and rule
//! (or the end-of-tier / no-tier default), the first Log rule passed, and the staged
//! (counterfactual) verdict.

use std::fmt;
use std::net::IpAddr;

use bulkhead_common::{PolicyValueV2, action, direction, verdict_flags};

use crate::compile::Compiled;
use crate::lookup::{self, Endpoint, Verdict};
use crate::model::{Model, PodRef};
use crate::tiered::PolicyId;

/// One side's decision, in model terms. The reference evaluator produces the same type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub allowed: bool,
    /// Deciding tier; `None` when no tier decided (nothing applies, or every applicable tier
    /// passed): allow.
    pub tier: Option<String>,
    /// Deciding policy; `None` for a tier's default action or when no tier decided.
    pub policy: Option<PolicyId>,
    /// Deciding rule: index in the policy's ingress/egress list (for Kubernetes
    /// NetworkPolicies, the index of the KNP rule).
    pub rule_index: Option<usize>,
    /// The tier's default action decided (no rule of it did).
    pub end_of_tier: bool,
    /// First Log rule passed on the way.
    pub log: Option<(PolicyId, usize)>,
}

impl Decision {
    /// Allow because no tier decided anything.
    pub fn default_allow() -> Decision {
        Decision { allowed: true, tier: None, policy: None, rule_index: None, end_of_tier: false, log: None }
    }

    /// Decodes a map value with the compile's tables.
    pub fn from_value(compiled: &Compiled, v: &PolicyValueV2) -> Decision {
        let policy = compiled.policy_entry(v.policy_index).map(|e| e.id.clone());
        Decision {
            allowed: v.action == action::ALLOW,
            tier: compiled.tier_name(v.tier_index).map(str::to_string),
            rule_index: policy.as_ref().map(|_| usize::from(v.rule_index)),
            policy,
            end_of_tier: v.flags & verdict_flags::END_OF_TIER != 0,
            log: if v.flags & verdict_flags::LOG != 0 {
                compiled.policy_entry(v.log_policy_index).map(|e| (e.id.clone(), usize::from(v.log_rule_index)))
            } else {
                None
            },
        }
    }

    fn from_verdict(compiled: &Compiled, v: &Verdict) -> Decision {
        match &v.hit {
            Some(h) => Decision::from_value(compiled, h),
            None if v.allowed => Decision::default_allow(),
            None => Decision { allowed: false, ..Decision::default_allow() },
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "ALLOW" } else { "DENY" };
        match (&self.tier, &self.policy, self.rule_index) {
            (Some(t), Some(p), Some(r)) => write!(f, "{verdict} by {p} rule {r} (tier {t})")?,
            (Some(t), _, _) if self.end_of_tier => write!(f, "{verdict} by the end-of-tier default of tier {t}")?,
            (Some(t), _, _) => write!(f, "{verdict} (tier {t})")?,
            (None, _, _) => write!(f, "{verdict}: no tier decided (none applies, or all passed)")?,
        }
        if let Some((p, r)) = &self.log {
            write!(f, "; logged by {p} rule {r}")?;
        }
        Ok(())
    }
}

/// One checked side of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideExplanation {
    pub pod: PodRef,
    /// [`direction`] value.
    pub direction: u8,
    /// The peer address and its identity from the ipcache.
    pub peer_ip: IpAddr,
    pub peer_identity: u32,
    pub local_identity: u32,
    pub enforced: Decision,
    /// The counterfactual verdict, for endpoints with staged policies.
    pub staged: Option<Decision>,
    /// The endpoint overflowed the maps and drops everything.
    pub fail_closed: bool,
}

/// Why a connection is allowed or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: u8,
    pub port: u16,
    /// The source pod's egress check (absent when the source is not a pod).
    pub egress: Option<SideExplanation>,
    /// The destination pod's ingress check (absent when the destination is not a pod).
    pub ingress: Option<SideExplanation>,
    pub allowed: bool,
    /// The verdict if staged policies were enforced.
    pub staged_allowed: bool,
    /// Anything else worth saying (unknown endpoints).
    pub notes: Vec<String>,
}

/// Explains a connection from `src` to `dst` (`port`: the policy port, see
/// [`crate::lookup`]) from the compiled maps. `model` names pods behind addresses.
pub fn explain(compiled: &Compiled, model: &Model, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> Explanation {
    explain_family(compiled, model, src, dst, protocol, port, false)
}

/// As [`explain`], between the pods' IPv6 addresses with `v6` (an address given as such
/// keeps its own family).
pub fn explain_family(compiled: &Compiled, model: &Model, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16, v6: bool) -> Explanation {
    // An explicit address decides the family for pods on the other side.
    let v6 = match (src, dst) {
        (Endpoint::Ip(a), _) | (_, Endpoint::Ip(a)) => a.is_ipv6(),
        _ => v6,
    };
    let mut out = Explanation {
        src: src.clone(),
        dst: dst.clone(),
        protocol,
        port,
        egress: None,
        ingress: None,
        allowed: false,
        staged_allowed: false,
        notes: Vec::new(),
    };
    let (Some((s_ep, s_ip)), Some((d_ep, d_ip))) = (lookup::resolve(compiled, src, v6), lookup::resolve(compiled, dst, v6)) else {
        for e in [src, dst] {
            if lookup::resolve(compiled, e, v6).is_none() {
                let known = matches!(e, Endpoint::Pod(r) if model.pods.contains_key(r));
                out.notes.push(format!(
                    "{e:?} has no datapath ({}): nothing to or from it is allowed",
                    if !known {
                        "unknown pod"
                    } else if v6 {
                        "pod without an IPv6 address"
                    } else {
                        "pod without an address"
                    }
                ));
            }
        }
        return out;
    };
    let side = |ep: (&PodRef, &crate::compile::EndpointEntry), dir: u8, peer_ip: IpAddr| {
        let (r, e) = ep;
        let v = lookup::check(compiled, e, peer_ip, dir, protocol, port);
        let staged = lookup::check_staged(compiled, e, peer_ip, dir, protocol, port).map(|s| Decision::from_verdict(compiled, &s));
        SideExplanation {
            pod: r.clone(),
            direction: dir,
            peer_ip,
            peer_identity: lookup::ipcache_lookup(compiled, peer_ip).identity,
            local_identity: if peer_ip.is_ipv6() { e.identity6 } else { e.identity },
            enforced: Decision::from_verdict(compiled, &v),
            staged,
            fail_closed: v.fail_closed,
        }
    };
    out.egress = s_ep.map(|ep| side(ep, direction::EGRESS, d_ip));
    out.ingress = d_ep.map(|ep| side(ep, direction::INGRESS, s_ip));
    let sides = [&out.egress, &out.ingress];
    out.allowed = sides.iter().all(|s| s.as_ref().is_none_or(|s| s.enforced.allowed));
    out.staged_allowed =
        sides.iter().all(|s| s.as_ref().is_none_or(|s| s.staged.as_ref().unwrap_or(&s.enforced).allowed));
    out
}

fn dir_name(d: u8) -> &'static str {
    if d == direction::INGRESS { "ingress" } else { "egress" }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |e: &Endpoint| match e {
            Endpoint::Pod(r) => format!("pod {r}"),
            Endpoint::Ip(ip) => ip.to_string(),
        };
        writeln!(
            f,
            "{} -> {} protocol {} port {}: {}",
            ep(&self.src),
            ep(&self.dst),
            self.protocol,
            self.port,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        for s in [&self.egress, &self.ingress].into_iter().flatten() {
            write!(
                f,
                "  {} at pod {} (identity {}, peer {} identity {}): ",
                dir_name(s.direction),
                s.pod,
                s.local_identity,
                s.peer_ip,
                s.peer_identity
            )?;
            if s.fail_closed {
                writeln!(f, "DENY: the endpoint overflowed the maps and fails closed")?;
            } else {
                writeln!(f, "{}", s.enforced)?;
            }
            if let Some(st) = &s.staged {
                writeln!(f, "    staged: {st}")?;
            }
        }
        if self.egress.is_none() && self.ingress.is_none() && self.notes.is_empty() {
            writeln!(f, "  neither side is a pod: no check")?;
        }
        if self.staged_allowed != self.allowed {
            writeln!(f, "  with staged policies enforced: {}", if self.staged_allowed { "ALLOWED" } else { "DENIED" })?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}
