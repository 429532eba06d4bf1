//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets
//! (through anonymous structs and unions), enum values, and the argument lists of
//! tracepoints (`btf_trace_<name>` typedefs). This is how kaprobe learns the running
//! kernel's layout at start-up instead of hard-coding it.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    path::Path,
};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum BtfError {
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF has no field `{0}.{1}`")]
    NoMember(String, String),
    #[error("kernel BTF has no enum `{0}`")]
    NoEnum(String),
    #[error("kernel BTF has no value `{1}` in enum `{0}`")]
    NoEnumValue(String, String),
    #[error("kernel BTF has no tracepoint `{0}` (typedef btf_trace_{0})")]
    NoTracepoint(String),
    #[error("kernel field `{0}` is a bitfield; kaprobe needs a whole field")]
    Bitfield(String),
}

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (include/uapi/linux/btf.h).
mod k {
    pub(crate) const INT: u32 = 1;
    pub(crate) const PTR: u32 = 2;
    pub(crate) const ARRAY: u32 = 3;
    pub(crate) const STRUCT: u32 = 4;
    pub(crate) const UNION: u32 = 5;
    pub(crate) const ENUM: u32 = 6;
    pub(crate) const FWD: u32 = 7;
    pub(crate) const TYPEDEF: u32 = 8;
    pub(crate) const VOLATILE: u32 = 9;
    pub(crate) const CONST: u32 = 10;
    pub(crate) const RESTRICT: u32 = 11;
    pub(crate) const FUNC: u32 = 12;
    pub(crate) const FUNC_PROTO: u32 = 13;
    pub(crate) const VAR: u32 = 14;
    pub(crate) const DATASEC: u32 = 15;
    pub(crate) const FLOAT: u32 = 16;
    pub(crate) const DECL_TAG: u32 = 17;
    pub(crate) const TYPE_TAG: u32 = 18;
    pub(crate) const ENUM64: u32 = 19;
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
    /// Bitfield size in bits (0: not a bitfield).
    bitfield: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Void (id 0) or a kind kaprobe never needs to look into.
    Other,
    Int {
        size: u32,
    },
    Ptr {
        ty: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        values: Vec<(u32, i64)>,
    },
    /// Typedef, const, volatile, restrict, type tag: a name or qualifier over `ty`.
    Alias {
        ty: u32,
    },
    FuncProto {
        params: Vec<(u32, u32)>,
    },
}

/// A field's place in a struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// Offset in bytes from the start of the outer struct.
    pub(crate) offset: u32,
    /// Size in bytes.
    pub(crate) size: u32,
}

/// Parsed BTF.
pub(crate) struct Btf {
    types: Vec<Type>,
    names: Vec<u32>,
    strings: Vec<u8>,
    /// The first type of each name hash ([`name_hash`])...
    first_by_hash: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    /// ...and, for each type, the next one with the same name hash (0: none). A distribution
    /// kernel's BTF has ~150k types: an index of owned names cost ~40 ms of start-up (an
    /// allocation each, SipHash); this one is two flat tables.
    next_same_hash: Vec<u32>,
}

/// FNV-1a of a name: the index key (collisions are resolved by comparing names).
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = name_hash(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads and parses a BTF file (e.g. `/sys/kernel/btf/vmlinux`).
    pub(crate) fn from_file(path: &Path) -> std::io::Result<Result<Self, BtfError>> {
        Ok(Self::parse(&std::fs::read(path)?))
    }

    /// Parses raw BTF (little-endian, as on every machine kaprobe runs on).
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF?)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len
            .checked_add(type_off)
            .ok_or(BtfError::Malformed("offset"))?;
        let strs_at = hdr_len
            .checked_add(str_off)
            .ok_or(BtfError::Malformed("offset"))?;
        let tdata = data
            .get(types_at..types_at.saturating_add(type_len))
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(strs_at..strs_at.saturating_add(str_len))
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type::Other];
        let mut names = vec![0];
        let mut at = 0;
        while at < tdata.len() {
            let name = u32_at(tdata, at)?;
            let info = u32_at(tdata, at + 4)?;
            let size_or_type = u32_at(tdata, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                k::INT => {
                    at += 4;
                    Type::Int { size: size_or_type }
                }
                k::PTR => Type::Ptr { ty: size_or_type },
                k::ARRAY => {
                    let elem = u32_at(tdata, at)?;
                    let len = u32_at(tdata, at + 8)?;
                    at += 12;
                    Type::Array { elem, len }
                }
                k::STRUCT | k::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name = u32_at(tdata, at)?;
                        let ty = u32_at(tdata, at + 4)?;
                        let off = u32_at(tdata, at + 8)?;
                        at += 12;
                        let (bit_offset, bitfield) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name,
                            ty,
                            bit_offset,
                            bitfield,
                        });
                    }
                    Type::Composite {
                        size: size_or_type,
                        members,
                    }
                }
                k::ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name = u32_at(tdata, at)?;
                        let raw = u32_at(tdata, at + 4)?;
                        at += 8;
                        let v = if kind_flag {
                            raw as i32 as i64
                        } else {
                            raw as i64
                        };
                        values.push((name, v));
                    }
                    Type::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                k::ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name = u32_at(tdata, at)?;
                        let lo = u32_at(tdata, at + 4)? as u64;
                        let hi = u32_at(tdata, at + 8)? as u64;
                        at += 12;
                        values.push((name, ((hi << 32) | lo) as i64));
                    }
                    Type::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                k::FWD | k::FUNC | k::FLOAT => Type::Other,
                k::TYPEDEF | k::VOLATILE | k::CONST | k::RESTRICT | k::TYPE_TAG => {
                    Type::Alias { ty: size_or_type }
                }
                k::FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        params.push((u32_at(tdata, at)?, u32_at(tdata, at + 4)?));
                        at += 8;
                    }
                    Type::FuncProto { params }
                }
                k::VAR | k::DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                k::DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
            names.push(name);
        }
        if at != tdata.len() {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }
        let mut btf = Btf {
            first_by_hash: HashMap::default(),
            next_same_hash: vec![0; types.len()],
            types,
            names,
            strings,
        };
        // From the last id down, so that each chain lists its ids in increasing order.
        for id in (1..btf.types.len() as u32).rev() {
            let name = btf.name(id);
            if !name.is_empty() {
                let head = btf
                    .first_by_hash
                    .entry(name_hash(name.as_bytes()))
                    .or_insert(0);
                btf.next_same_hash[id as usize] = *head;
                *head = id;
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |&n| self.str_at(n))
    }

    fn ty(&self, id: u32) -> &Type {
        self.types.get(id as usize).unwrap_or(&Type::Other)
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Type::Alias { ty } => id = *ty,
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.ty(self.resolve(id)) {
            Type::Int { size } | Type::Composite { size, .. } | Type::Enum { size, .. } => *size,
            Type::Ptr { .. } => 8,
            Type::Array { elem, len } => self.size_of(*elem).saturating_mul(*len),
            _ => 0,
        }
    }

    /// The first type named `name` (in id order) that `pred` accepts.
    fn find(&self, name: &str, pred: impl Fn(&Type) -> bool) -> Option<u32> {
        let mut id = *self.first_by_hash.get(&name_hash(name.as_bytes()))?;
        while id != 0 {
            if self.name(id) == name && pred(self.ty(id)) {
                return Some(id);
            }
            id = self.next_same_hash.get(id as usize).copied().unwrap_or(0);
        }
        None
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        // Skip empty forward-declared duplicates: take the struct with members.
        self.find(
            name,
            |t| matches!(t, Type::Composite { members, .. } if !members.is_empty()),
        )
        .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Finds member `name` of composite `id`, looking through anonymous members. Returns the
    /// bit offset and the member.
    fn member_in(&self, id: u32, name: &str) -> Option<(u32, Member)> {
        let Type::Composite { members, .. } = self.ty(self.resolve(id)) else {
            return None;
        };
        for m in members {
            if m.name != 0 && self.str_at(m.name) == name {
                return Some((m.bit_offset, m.clone()));
            }
        }
        for m in members {
            if m.name == 0 {
                if let Some((off, found)) = self.member_in(m.ty, name) {
                    return Some((m.bit_offset + off, found));
                }
            }
        }
        None
    }

    /// Offset and size of `path` (dot-separated, e.g. `ipv4.sysctl_tcp_keepalive_time`) in
    /// struct `strukt`.
    pub(crate) fn field(&self, strukt: &str, path: &str) -> Result<Field, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut bits = 0u32;
        let mut last: Option<Member> = None;
        for part in path.split('.') {
            let (off, m) = self
                .member_in(id, part)
                .ok_or_else(|| BtfError::NoMember(strukt.to_owned(), path.to_owned()))?;
            bits += off;
            id = m.ty;
            last = Some(m);
        }
        let m = last.ok_or_else(|| BtfError::NoMember(strukt.to_owned(), path.to_owned()))?;
        if m.bitfield != 0 || !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield(format!("{strukt}.{path}")));
        }
        Ok(Field {
            offset: bits / 8,
            size: self.size_of(m.ty),
        })
    }

    /// All `(name, value)` pairs of enum `name`.
    pub(crate) fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = self
            .find(name, |t| matches!(t, Type::Enum { .. }))
            .ok_or_else(|| BtfError::NoEnum(name.to_owned()))?;
        let Type::Enum { values, .. } = self.ty(id) else {
            return Err(BtfError::NoEnum(name.to_owned()));
        };
        Ok(values
            .iter()
            .map(|&(n, v)| (self.str_at(n).to_owned(), v))
            .collect())
    }

    /// The value of `variant` in enum `name`.
    pub(crate) fn enum_value(&self, name: &str, variant: &str) -> Result<i64, BtfError> {
        self.enum_values(name)?
            .into_iter()
            .find(|(n, _)| n == variant)
            .map(|(_, v)| v)
            .ok_or_else(|| BtfError::NoEnumValue(name.to_owned(), variant.to_owned()))
    }

    /// The argument types of tracepoint `name`, from its `btf_trace_<name>` typedef
    /// (a pointer to a function whose first parameter is the `void *` context, left out).
    /// Each argument is described as C-like text, e.g. `const struct sock *`.
    pub(crate) fn tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let tdname = format!("btf_trace_{name}");
        let no = || BtfError::NoTracepoint(name.to_owned());
        let id = self
            .find(&tdname, |t| matches!(t, Type::Alias { .. }))
            .ok_or_else(no)?;
        let Type::Ptr { ty } = self.ty(self.resolve(id)) else {
            return Err(no());
        };
        let proto = self.resolve(*ty);
        let Type::FuncProto { params } = self.ty(proto) else {
            return Err(no());
        };
        Ok(params
            .iter()
            .skip(1)
            .map(|&(_, ty)| self.describe(ty))
            .collect())
    }

    /// C-like text for a type: enough to tell arguments apart.
    fn describe(&self, id: u32) -> String {
        let name = self.name(id);
        match self.ty(id) {
            Type::Alias { ty } if name.is_empty() => {
                // const/volatile: keep the qualifier visible only for readability.
                self.describe(*ty)
            }
            Type::Ptr { ty } => format!("{} *", self.describe(*ty)),
            Type::Composite { .. } => format!("struct {name}"),
            Type::Enum { .. } => format!("enum {name}"),
            _ if name.is_empty() => "void".into(),
            _ => name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw BTF, one type at a time (ids from 1).
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        fn head(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32) {
            let n = self.s(name);
            self.word(n);
            self.word((kind << 24) | vlen | ((kind_flag as u32) << 31));
            self.word(size_or_type);
        }
        fn int(&mut self, name: &str, size: u32) {
            self.head(name, k::INT, 0, false, size);
            self.word(size * 8);
        }
        fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            self.head(name, kind, members.len() as u32, false, size);
            for &(m, ty, bit_off) in members {
                let n = self.s(m);
                self.word(n);
                self.word(ty);
                self.word(bit_off);
            }
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// struct inner { u32 a; u32 b; };
    /// struct outer { u64 x; union { struct inner in; u64 y; }; struct { u16 p; u8 q; }; u8 z; };
    /// enum sock_flags { SOCK_DEAD = 0, SOCK_KEEPOPEN = 3 };
    /// typedef void (*btf_trace_demo)(void *, const struct outer *, int);
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("u32", 4); // 1
        b.int("u64", 8); // 2
        b.int("u8", 1); // 3
        b.composite(k::STRUCT, "inner", 8, &[("a", 1, 0), ("b", 1, 32)]); // 4
        b.composite(k::UNION, "", 8, &[("in", 4, 0), ("y", 2, 0)]); // 5
        b.int("u16", 2); // 6
        b.composite(k::STRUCT, "", 4, &[("p", 6, 0), ("q", 3, 16)]); // 7
        b.composite(
            k::STRUCT,
            "outer",
            24,
            &[("x", 2, 0), ("", 5, 64), ("", 7, 128), ("z", 3, 160)],
        ); // 8
        b.head("sock_flags", k::ENUM, 2, false, 4); // 9
        let (d, kk) = (b.s("SOCK_DEAD"), b.s("SOCK_KEEPOPEN"));
        b.word(d);
        b.word(0);
        b.word(kk);
        b.word(3);
        b.head("", k::CONST, 0, false, 8); // 10: const struct outer
        b.head("", k::PTR, 0, false, 10); // 11: const struct outer *
        b.head("", k::PTR, 0, false, 0); // 12: void *
        b.int("int", 4); // 13
        b.head("", k::FUNC_PROTO, 3, false, 0); // 14
        for ty in [12, 11, 13] {
            b.word(0);
            b.word(ty);
        }
        b.head("", k::PTR, 0, false, 14); // 15
        b.head("btf_trace_demo", k::TYPEDEF, 0, false, 15); // 16
        b.finish()
    }

    #[test]
    fn fields_through_anonymous_members() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.field("outer", "x"), Ok(Field { offset: 0, size: 8 }));
        assert_eq!(btf.field("outer", "y"), Ok(Field { offset: 8, size: 8 }));
        assert_eq!(
            btf.field("outer", "in.b"),
            Ok(Field {
                offset: 12,
                size: 4
            })
        );
        assert_eq!(
            btf.field("outer", "q"),
            Ok(Field {
                offset: 18,
                size: 1
            })
        );
        assert_eq!(
            btf.field("outer", "z"),
            Ok(Field {
                offset: 20,
                size: 1
            })
        );
        assert_eq!(
            btf.field("outer", "nope"),
            Err(BtfError::NoMember("outer".into(), "nope".into()))
        );
        assert_eq!(
            btf.field("missing", "x"),
            Err(BtfError::NoStruct("missing".into()))
        );
    }

    #[test]
    fn enums_and_tracepoint_prototypes() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.enum_value("sock_flags", "SOCK_KEEPOPEN"), Ok(3));
        assert!(btf.enum_value("sock_flags", "SOCK_LINGER").is_err());
        assert_eq!(
            btf.tracepoint_args("demo"),
            Ok(vec!["struct outer *".to_owned(), "int".to_owned()])
        );
        assert_eq!(
            btf.tracepoint_args("absent"),
            Err(BtfError::NoTracepoint("absent".into()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = sample();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = (seed >> 32) as u8;
            }
            if let Ok(btf) = Btf::parse(&bytes) {
                let _ = btf.field("outer", "in.b");
                let _ = btf.tracepoint_args("demo");
            }
        }
        assert!(matches!(
            Btf::parse(b"not btf at all"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn the_running_kernel_has_what_kaprobe_needs() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux on this machine");
            return;
        }
        let btf = Btf::from_file(path).expect("read").expect("parse");
        let (config, protos) =
            crate::kernel::facts::config_from_btf(&btf).expect("all fields and tracepoints");
        assert!(config.sk_timer > 0 && config.icsk_probes_out > config.sk_timer);
        assert_eq!(protos.len(), crate::kernel::facts::TRACEPOINTS.len());
        let state = protos
            .iter()
            .find(|p| p.name == "inet_sock_set_state")
            .expect("set_state");
        assert_eq!(state.args.len(), 3, "{state:?}");
    }
}
