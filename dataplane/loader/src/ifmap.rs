//! Tables keyed by host interface index, each kept in two kernel maps: an array for indexes
//! below [`capacity::IFINDEX_DIRECT`] (the datapath's lookup is inlined by the verifier: no
//! call, no hashing, on every packet) and a hash for higher ones, which a node with enough
//! interface churn reaches. Callers see one table: the endpoints ([`EndpointMap`]) and the
//! detector's isolation entries ([`IsolationMap`]).

use std::borrow::{Borrow, BorrowMut};
use std::path::Path;

use aya::Pod;
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use bulkhead_common::detect::{self as det, IsolationV1};
use bulkhead_common::{EndpointV4, capacity, ifindex_is_direct, map_names};

/// A value that can sit in the array half: an all-zero (default) slot means "no entry".
pub trait Slot: Pod + Default {
    /// Whether the slot holds an entry.
    fn present(&self) -> bool;
    /// Marks a value about to be written as an entry.
    fn mark_present(&mut self);
}

impl Slot for EndpointV4 {
    fn present(&self) -> bool {
        self.present != 0
    }
    fn mark_present(&mut self) {
        self.present = 1;
    }
}

impl Slot for IsolationV1 {
    fn present(&self) -> bool {
        self.since_ns != 0
    }
    fn mark_present(&mut self) {
        // The kernel's clocks never read 0 on a running system; keep "isolated" unambiguous.
        self.since_ns = self.since_ns.max(1);
    }
}

/// One table over its array and hash maps.
pub struct IfindexMap<T, V: Pod> {
    direct: Array<T, V>,
    other: HashMap<T, u32, V>,
    names: (&'static str, &'static str),
}

/// The endpoint table ([`map_names::ENDPOINTS_DIRECT`], [`map_names::ENDPOINTS`]).
pub type EndpointMap<T> = IfindexMap<T, EndpointV4>;
/// The isolation table ([`det::map_names::ISOLATION_DIRECT`], [`det::map_names::ISOLATION`]).
pub type IsolationMap<T> = IfindexMap<T, IsolationV1>;

/// A failed call on one of the two kernel maps of a table.
#[derive(Debug, thiserror::Error)]
#[error("eBPF map {map}: {source}")]
pub struct IfindexMapError {
    pub map: &'static str,
    #[source]
    pub source: MapError,
}

impl<T: Borrow<MapData>, V: Slot> IfindexMap<T, V> {
    /// Wraps the array and the hash half; `names` are their map names, for errors.
    pub fn new(direct: Array<T, V>, other: HashMap<T, u32, V>, names: (&'static str, &'static str)) -> Self {
        IfindexMap { direct, other, names }
    }

    fn direct_err(&self) -> impl Fn(MapError) -> IfindexMapError + use<T, V> {
        let map = self.names.0;
        move |source| IfindexMapError { map, source }
    }

    fn other_err(&self) -> impl Fn(MapError) -> IfindexMapError + use<T, V> {
        let map = self.names.1;
        move |source| IfindexMapError { map, source }
    }

    /// The entry of `ifindex`, if there is one.
    pub fn get(&self, ifindex: u32) -> Result<Option<V>, IfindexMapError> {
        if ifindex_is_direct(ifindex) {
            let v = self.direct.get(&ifindex, 0).map_err(self.direct_err())?;
            Ok(v.present().then_some(v))
        } else {
            match self.other.get(&ifindex, 0) {
                Ok(v) => Ok(Some(v)),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(self.other_err()(e)),
            }
        }
    }

    /// Every entry. Reads the array in batches (a few calls; one syscall per slot on a
    /// kernel without batched reads).
    pub fn entries(&self) -> Result<Vec<(u32, V)>, IfindexMapError> {
        let mut out = Vec::new();
        match crate::batch::array_all(&self.direct) {
            Ok(all) => out.extend(all.into_iter().filter(|(i, v)| *i < capacity::IFINDEX_DIRECT && v.present())),
            Err(_) => {
                for i in 0..capacity::IFINDEX_DIRECT {
                    let v = self.direct.get(&i, 0).map_err(self.direct_err())?;
                    if v.present() {
                        out.push((i, v));
                    }
                }
            }
        }
        for item in self.other.iter() {
            out.push(item.map_err(self.other_err())?);
        }
        Ok(out)
    }

    /// Interface indexes that have an entry.
    pub fn ifindexes(&self) -> Result<Vec<u32>, IfindexMapError> {
        Ok(self.entries()?.into_iter().map(|(i, _)| i).collect())
    }
}

impl<T: BorrowMut<MapData>, V: Slot> IfindexMap<T, V> {
    /// Writes `ifindex`'s entry (marked present).
    pub fn insert(&mut self, ifindex: u32, mut value: V) -> Result<(), IfindexMapError> {
        value.mark_present();
        if ifindex_is_direct(ifindex) {
            let err = self.direct_err();
            self.direct.set(ifindex, value, 0).map_err(err)
        } else {
            let err = self.other_err();
            self.other.insert(ifindex, value, 0).map_err(err)
        }
    }

    /// Removes `ifindex`'s entry; removing a missing one is not an error.
    pub fn remove(&mut self, ifindex: u32) -> Result<(), IfindexMapError> {
        if ifindex_is_direct(ifindex) {
            let err = self.direct_err();
            self.direct.set(ifindex, V::default(), 0).map_err(err)
        } else {
            match self.other.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(self.other_err()(e)),
            }
        }
    }
}

fn open<V: Pod>(dir: &Path, direct: &'static str, other: &'static str) -> Result<(Array<MapData, V>, HashMap<MapData, u32, V>), IfindexMapError> {
    let pinned = |name: &'static str| {
        MapData::from_pin(dir.join(name)).map_err(|e| IfindexMapError { map: name, source: e })
    };
    let a = Array::try_from(Map::Array(pinned(direct)?)).map_err(|source| IfindexMapError { map: direct, source })?;
    let h = HashMap::try_from(Map::HashMap(pinned(other)?)).map_err(|source| IfindexMapError { map: other, source })?;
    Ok((a, h))
}

impl IfindexMap<MapData, EndpointV4> {
    /// The endpoint table pinned under `dir`.
    pub fn open_endpoints(dir: &Path) -> Result<Self, IfindexMapError> {
        let names = (map_names::ENDPOINTS_DIRECT, map_names::ENDPOINTS);
        let (a, h) = open(dir, names.0, names.1)?;
        Ok(IfindexMap::new(a, h, names))
    }
}

impl IfindexMap<MapData, IsolationV1> {
    /// The isolation table pinned under `dir`.
    pub fn open_isolation(dir: &Path) -> Result<Self, IfindexMapError> {
        let names = (det::map_names::ISOLATION_DIRECT, det::map_names::ISOLATION);
        let (a, h) = open(dir, names.0, names.1)?;
        Ok(IfindexMap::new(a, h, names))
    }
}
