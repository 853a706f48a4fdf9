//! Batched reads and deletes of hash maps (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`,
//! kernel >= 5.6), which aya 0.14 does not offer. Walking a full conntrack map (262,144
//! entries) one entry at a time costs two syscalls per entry, about 280 ms of CPU here; in
//! batches of 4,096 it is a few dozen syscalls. A raw `bpf(2)` call rather than libbpf-rs for
//! these two commands: one struct, and no C library in the build.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

/// Entries per call; a hash bucket holding more than this would fail the call (ENOSPC).
const CHUNK: usize = 4096;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size passed; the
    // pointers in it point to buffers that outlive the call and are as large as `count` says.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Every entry of the hash map `fd` (keys `K`, values `V` as the map declares them; not for
/// per-CPU maps). Entries written or deleted during the walk may or may not be seen, as with
/// a one-by-one walk.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut out = Vec::new();
    // The kernel's resume token for hash maps is a bucket index (u32); 8 bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match res {
            Ok(()) => false,
            // The end of the map; the last entries came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel wrote `n` whole keys and values into the buffers (capacity
        // CHUNK each); K and V are Pod, so any bytes are valid.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped. Returns how many
/// were deleted.
pub fn delete_all<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr { keys: rest.as_ptr() as u64, count: n as u32, map_fd: fd.as_raw_fd() as u32, ..Default::default() };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {
                deleted += n;
                rest = &rest[n..];
            }
            // The key at `count` was gone already (expired and evicted meanwhile): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let done = (attr.count as usize).min(n);
                deleted += done;
                rest = &rest[(done + 1).min(rest.len())..];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Every slot of the array map `map`, in batches. Arrays take the same command (the
/// kernel's generic batch walk, whose cursor is the key): a 65,536-slot array is 16 calls
/// instead of 65,536, which is most of an agent's start-up on a fresh pin folder.
pub fn array_all<V: aya::Pod, T: std::borrow::Borrow<aya::maps::MapData>>(map: &aya::maps::Array<T, V>) -> io::Result<Vec<(u32, V)>> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    lookup_all(map.map().fd().as_fd())
}

/// The non-empty slots (`flags` not 0) of an array map among the indexes `range`: one batched
/// read ([`array_all`]), or one read per slot on a kernel without batched reads.
pub fn filled_slots<V: aya::Pod, T: std::borrow::Borrow<aya::maps::MapData>>(
    map: &aya::maps::Array<T, V>,
    range: std::ops::Range<u32>,
    flags: impl Fn(&V) -> u32,
) -> Vec<(u32, V)> {
    match array_all(map) {
        Ok(all) => all.into_iter().filter(|(i, v)| range.contains(i) && flags(v) != 0).collect(),
        Err(_) => range.filter_map(|i| map.get(&i, 0).ok().map(|v| (i, v))).filter(|(_, v)| flags(v) != 0).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_attr_is_the_kernels_layout() {
        // in_batch, out_batch, keys, values (8 each), count, map_fd (4 each), elem_flags,
        // flags (8 each).
        assert_eq!(size_of::<BatchAttr>(), 56);
    }
}
