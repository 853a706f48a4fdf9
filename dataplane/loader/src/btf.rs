//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets, for
//! the few kernel structures the exec probe follows (task -> mm -> exe_file -> inode). aya
//! 0.14 parses BTF but keeps member offsets private; the format is simple enough to read
//! here (kernel Documentation/bpf/btf.rst).

use std::collections::HashMap;

/// Where a BTF could not be read, or a member is missing.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("BTF: {0}")]
    Format(&'static str),
    #[error("BTF: no member {member} in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset (bitfields are never followed here, so the low 24 bits with kind_flag).
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Struct/union members (empty for other kinds).
    members: Vec<Member>,
}

/// The parsed type section: types by id (id 0 is void) and struct ids by name.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Format("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys() -> Result<Btf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        Btf::parse(&data)
    }

    /// Parses raw BTF (little-endian).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != 0xeb9f {
            return Err(BtfError::Format("bad magic (or big-endian)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len, str_off, str_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize, u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let types_b = b.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfError::Format("type section out of bounds"))?;
        let strings = b.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfError::Format("string section out of bounds"))?.to_vec();
        let mut types = vec![Type { name: 0, kind: 0, members: Vec::new() }];
        let mut off = 0;
        while off < types_b.len() {
            let (name, info) = (u32_at(types_b, off)?, u32_at(types_b, off + 4)?);
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
            off += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen as usize {
                        let m = off + i * 12;
                        let raw = u32_at(types_b, m + 8)?;
                        members.push(Member { name: u32_at(types_b, m)?, type_id: u32_at(types_b, m + 4)?, bit_offset: if kflag == 1 { raw & 0xff_ffff } else { raw } });
                    }
                    12 * vlen as usize
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                _ => 0,
            };
            off += extra;
            types.push(Type { name, kind, members });
        }
        let mut btf = Btf { types, strings, structs: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let n = btf.name(t.name).to_string();
                btf.structs.entry(n).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in struct `strukt`, looking through anonymous struct and union
    /// members (the kernel wraps many fields in them).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::NoMember { strukt: strukt.into(), member: member.into() };
        let id = *self.structs.get(strukt).ok_or_else(missing)?;
        self.find(id, member, 0).map(|bits| bits / 8).ok_or_else(missing)
    }

    fn find(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == member {
                return Some(base_bits + m.bit_offset);
            }
        }
        // Anonymous members: search inside them.
        for m in t.members.iter().filter(|m| m.name == 0) {
            if matches!(self.types.get(m.type_id as usize).map(|t| t.kind), Some(KIND_STRUCT | KIND_UNION)) {
                if let Some(b) = self.find(m.type_id, member, base_bits + m.bit_offset) {
                    return Some(b);
                }
            }
        }
        None
    }
}

/// Offsets the exec probe follows from the current task to the executable's inode.
pub fn exec_offsets(btf: &Btf) -> Result<bulkhead_common::detect::KernelOffsetsV1, BtfError> {
    Ok(bulkhead_common::detect::KernelOffsetsV1 {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_exe_file: btf.member_offset("mm_struct", "exe_file")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        inode_ino: btf.member_offset("inode", "i_ino")?,
        inode_sb: btf.member_offset("inode", "i_sb")?,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        inode_ctime_sec: btf.member_offset("inode", "i_ctime_sec")?,
        inode_ctime_nsec: btf.member_offset("inode", "i_ctime_nsec")?,
        valid: 1,
        mm_arg_start: btf.member_offset("mm_struct", "arg_start")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernels_offsets() {
        let Ok(btf) = Btf::from_sys() else {
            // Every kernel this project supports has BTF; a machine without is not one.
            panic!("/sys/kernel/btf/vmlinux unreadable");
        };
        let o = exec_offsets(&btf).expect("offsets");
        // mm_struct's fields sit in an anonymous struct: found through it.
        assert!(o.mm_exe_file > 0 && o.mm_exe_file < 1472, "{o:?}");
        assert!(o.inode_ino > 0 && o.inode_ctime_nsec > o.inode_ctime_sec, "{o:?}");
        assert!(btf.member_offset("inode", "no_such_member").is_err());
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }
}
