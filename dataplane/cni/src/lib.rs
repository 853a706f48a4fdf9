//! Bulkhead's chained CNI plugin (`bulkhead-cni`) and the wire format it speaks with the node
//! agent. The binary is a thin wrapper around [`plugin::run`]; the agent uses [`api`] for its
//! control socket.

pub mod api;
pub mod install;
pub mod netlink;
pub mod plugin;
