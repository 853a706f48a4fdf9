//! The conntrack tables from user space, through a memory mapping of the array map
//! (`BPF_F_MMAPABLE`): reading a table is reading memory, and removing an entry takes the
//! slot with the same compare-and-swap the TC programs use (layout and protocol in
//! [`bulkhead_common::ct`]). A syscall per slot could not do that: an update writes the whole
//! slot and would overwrite a flow the datapath had just put there.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use aya::maps::{Map, MapData};
use bulkhead_common::CtValueV2;
use bulkhead_common::ct::{Slot, WAYS};

use crate::error::DataplaneError;

/// One family's table, mapped. `S` is [`bulkhead_common::ct::CtSlotV1`] or
/// [`bulkhead_common::ct::Ct6SlotV1`].
pub struct CtTable<S> {
    /// Keeps the map (and so the mapping's object) open.
    _map: MapData,
    name: &'static str,
    base: NonNull<S>,
    slots: usize,
    bytes: usize,
}

// SAFETY: the mapping is shared memory every access to which goes through volatile reads
// and atomics; the handle owns it.
unsafe impl<S> Send for CtTable<S> {}
unsafe impl<S> Sync for CtTable<S> {}

/// A consistent copy of a live slot, with where it was and the state it had.
#[derive(Clone, Copy, Debug)]
pub struct Entry<S: Slot> {
    pub index: usize,
    state: u64,
    pub key: S::Key,
    pub value: CtValueV2,
}

impl<S: Slot> CtTable<S> {
    /// Maps the array map `map` (named `name` in errors), which must hold slots of `S`.
    pub fn new(map: Map, name: &'static str) -> Result<CtTable<S>, DataplaneError> {
        let data = match map {
            Map::Array(d) => d,
            _ => {
                return Err(DataplaneError::MapContent { map: name, detail: "not an array map (an older conntrack layout?)".into() });
            }
        };
        let info = data.info().map_err(|source| DataplaneError::Map { map: name, source })?;
        if info.value_size() as usize != size_of::<S>() {
            return Err(DataplaneError::MapContent { map: name, detail: format!("slots of {} bytes, expected {}", info.value_size(), size_of::<S>()) });
        }
        let slots = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (slots * size_of::<S>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's fd; the kernel refuses it unless the array
        // was created BPF_F_MMAPABLE.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, data.fd().as_fd().as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(DataplaneError::Io { what: "mapping a conntrack table (BPF_F_MMAPABLE array)", source: std::io::Error::last_os_error() });
        }
        let base = NonNull::new(p.cast::<S>()).ok_or_else(|| DataplaneError::MapContent { map: name, detail: "mapped at address 0".into() })?;
        Ok(CtTable { _map: data, name, base, slots, bytes })
    }

    /// The map's name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots
    }

    fn state_word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < self.slots);
        // SAFETY: slot `i` is inside the mapping; its first 8 bytes are the 8-byte aligned
        // state word (seq, live) every writer changes atomically.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(i).cast::<u64>()) }
    }

    /// A consistent copy of slot `i` if it holds a flow: the state is read before and after
    /// the copy, and a slot a writer held or changed in between is skipped.
    pub fn read(&self, i: usize) -> Option<Entry<S>> {
        let st = self.state_word(i).load(Ordering::Acquire);
        if st & 1 != 0 || st >> 32 == 0 {
            return None;
        }
        // SAFETY: inside the mapping; any bit pattern is a valid slot (plain integers).
        let copy = unsafe { std::ptr::read_volatile(self.base.as_ptr().add(i)) };
        fence(Ordering::Acquire);
        (self.state_word(i).load(Ordering::Acquire) == st).then(|| Entry { index: i, state: st, key: *copy.key(), value: *copy.value() })
    }

    /// Every live entry.
    pub fn entries(&self) -> Vec<Entry<S>> {
        (0..self.slots).filter_map(|i| self.read(i)).collect()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        (0..self.slots).filter(|&i| self.state_word(i).load(Ordering::Relaxed) >> 32 != 0).count()
    }

    /// Whether no slot holds a flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `key`, from its bucket.
    pub fn get(&self, key: &S::Key) -> Option<Entry<S>> {
        let base = S::bucket_of(key) as usize * WAYS as usize;
        (base..base + WAYS as usize).filter_map(|i| self.read(i)).find(|e| e.key == *key)
    }

    /// Removes `e` if its slot still holds it as read (same state): false when the datapath
    /// changed or took the slot since, which the next sweep sees.
    pub fn remove(&self, e: &Entry<S>) -> bool {
        let word = self.state_word(e.index);
        if word.compare_exchange(e.state, e.state + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        // Ours: the next even sequence, not live.
        word.store(u64::from((e.state as u32).wrapping_add(2)), Ordering::Release);
        true
    }

    /// Removes the entry of `key`, if it has one and no writer holds it.
    pub fn remove_key(&self, key: &S::Key) -> bool {
        self.get(key).is_some_and(|e| self.remove(&e))
    }

    /// Writes `key`'s entry into its own slot or a free one of its bucket (tests, benchmarks
    /// and tools seed tables this way; the datapath inserts its own). False when the bucket
    /// is full or a writer held the slot.
    pub fn insert(&self, key: &S::Key, value: &CtValueV2) -> bool {
        let base = S::bucket_of(key) as usize * WAYS as usize;
        let own = (base..base + WAYS as usize).find(|&i| self.read(i).is_some_and(|e| e.key == *key));
        let free = || (base..base + WAYS as usize).find(|&i| self.state_word(i).load(Ordering::Acquire) >> 32 == 0);
        let Some(i) = own.or_else(free) else { return false };
        let word = self.state_word(i);
        let st = word.load(Ordering::Acquire);
        if st & 1 != 0 || word.compare_exchange(st, st + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        let slot = S::new(*key, *value);
        // SAFETY: the slot is ours (odd sequence); everything after the state word is
        // copied, the state itself is released below.
        unsafe {
            let dst = self.base.as_ptr().add(i).cast::<u8>().add(8);
            let src = (&slot as *const S).cast::<u8>().add(8);
            std::ptr::copy_nonoverlapping(src, dst, size_of::<S>() - 8);
        }
        word.store(1u64 << 32 | u64::from((st as u32).wrapping_add(2)), Ordering::Release);
        true
    }
}

impl<S> Drop for CtTable<S> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
