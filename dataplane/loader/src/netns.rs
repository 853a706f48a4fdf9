//! Network namespaces by name (`/var/run/netns/<name>`, as `ip netns` makes them).

use crate::error::DataplaneError;

/// Path of a named network namespace.
pub use bulkhead_netns::path;

/// Moves the calling thread into the named network namespace. Network namespaces are a
/// per-thread attribute, so only this thread moves; callers dedicate a thread to it.
pub fn enter(name: &str) -> Result<(), DataplaneError> {
    bulkhead_netns::enter(name).map_err(|source| DataplaneError::Netns { name: name.to_string(), source })
}

/// Interface index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}
