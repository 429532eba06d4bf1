//! Who owns a connection: process id, command name, cgroup v2 path and, when the path
//! shows one, the container id. Shared by `watch` (owners recorded by the kernel at
//! connect/listen time, cgroup paths resolved here) and `ls` (owners found from the
//! sockets' inodes in /proc, once per snapshot).
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::FastMap;

/// Where the cgroup v2 hierarchy usually is (`/sys/fs/cgroup/unified` on hybrid hosts).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                // "... mount_point options - fstype source super_options"
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
        })
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
}

/// The process a connection belongs to. Its texts are shared (every event of a
/// connection names the same owner): a clone allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Thread-group id (what `ps` calls the pid).
    pub pid: u32,
    /// The process's command name (`comm`, at most 15 bytes).
    pub comm: Arc<str>,
    /// cgroup v2 path, e.g. `/system.slice/nginx.service`; null when unknown.
    pub cgroup: Option<Arc<str>>,
    /// Container id when the cgroup path shows one (docker, containerd, CRI-O, podman).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Arc<str>>,
    /// cgroup v2 id as the kernel recorded it (0: none); resolved into `cgroup` by the
    /// agent.
    #[serde(skip)]
    pub cgroup_id: u64,
}

impl Owner {
    pub fn new(pid: u32, comm: String, cgroup: Option<String>) -> Owner {
        let container_id = cgroup.as_deref().and_then(container_id).map(Arc::from);
        Owner {
            pid,
            comm: comm.into(),
            cgroup: cgroup.map(Arc::from),
            container_id,
            cgroup_id: 0,
        }
    }

    /// From a kernel record; `None` when the kernel did not know the owner.
    pub fn from_kernel(raw: &kaprobe_common::Owner) -> Option<Owner> {
        (raw.tgid != 0).then(|| Owner {
            pid: raw.tgid,
            comm: match std::str::from_utf8(comm_bytes(&raw.comm)) {
                Ok(text) => text.into(),
                Err(_) => comm_text(&raw.comm).into(),
            },
            cgroup: None,
            container_id: None,
            cgroup_id: raw.cgroup_id,
        })
    }

    /// Is this the owner a kernel record names (as [`Owner::from_kernel`] would make it,
    /// before [`Owner::resolve`])?
    pub fn is_from_kernel(&self, raw: &kaprobe_common::Owner) -> bool {
        self.pid == raw.tgid
            && self.cgroup_id == raw.cgroup_id
            && self.cgroup.is_none()
            // (A name that is not UTF-8 was changed by from_kernel: never equal.)
            && self.comm.as_bytes() == comm_bytes(&raw.comm)
    }

    /// Fills `cgroup` and `container_id` from `cgroup_id`.
    pub fn resolve(&mut self, paths: &mut CgroupPaths) {
        if self.cgroup.is_none() && self.cgroup_id != 0 {
            if let Some(cgroup) = paths.cgroup(self.cgroup_id) {
                self.cgroup = Some(cgroup.path.clone());
                self.container_id = cgroup.container_id.clone();
            }
        }
    }
}

/// The container id in a cgroup path: a run of 64 hex digits in one of its components
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, `/docker/<id>`, `/kubepods/.../<id>`). The innermost wins.
pub fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        let bytes = component.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let run = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                .count();
            if run == 64 {
                return Some(component[start..start + 64].to_owned());
            }
            start += run.max(1);
        }
        None
    })
}

/// A NUL-padded `comm` from the kernel as text.
pub fn comm_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(comm_bytes(raw)).into_owned()
}

/// A NUL-padded `comm` without its padding.
fn comm_bytes(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}

/// The cgroup v2 path of a process (`0::<path>` in /proc/PID/cgroup).
pub fn cgroup_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The command name of a process.
pub fn comm_of_pid(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// The owner of a live process, from /proc.
pub fn owner_of_pid(pid: u32) -> Option<Owner> {
    let comm = comm_of_pid(pid)?;
    Some(Owner::new(pid, comm, cgroup_of_pid(pid)))
}

/// Socket inode → (pid, fd): the process holding it (the lowest pid when several share
/// it, e.g. after fork) and one of its descriptors for it. One pass over /proc/*/fd: for
/// snapshots (`ls`), not per event.
pub fn socket_fds() -> HashMap<u64, (u32, i32)> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    let mut pids: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            owners.entry(inode).or_insert((pid, num));
        }
    }
    owners
}

/// cgroup id (what `bpf_get_current_cgroup_id()` returns: the inode number of the
/// cgroup's directory in cgroup2fs) → path, with a cache. A miss rescans the hierarchy,
/// at most once per [`CgroupPaths::RESCAN`], so a burst of unknown ids costs one walk.
pub struct CgroupPaths {
    root: PathBuf,
    paths: FastMap<u64, Cgroup>,
    scanned: Option<Instant>,
}

/// A cgroup as owners name it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: Arc<str>,
    /// [`container_id`] of the path.
    pub container_id: Option<Arc<str>>,
}

impl Cgroup {
    fn new(path: String) -> Cgroup {
        Cgroup {
            container_id: container_id(&path).map(Arc::from),
            path: path.into(),
        }
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        CgroupPaths::new(&cgroup2_root())
    }
}

impl CgroupPaths {
    pub const RESCAN: Duration = Duration::from_secs(1);

    pub fn new(root: &Path) -> CgroupPaths {
        CgroupPaths {
            root: root.to_path_buf(),
            paths: FastMap::default(),
            scanned: None,
        }
    }

    /// The path of cgroup `id`, if it exists (or existed at the last scan).
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        self.cgroup(id).map(|c| c.path.clone())
    }

    /// Cgroup `id`, if it exists (or existed at the last scan).
    pub fn cgroup(&mut self, id: u64) -> Option<&Cgroup> {
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id) {
            if self.scanned.is_some_and(|t| t.elapsed() < Self::RESCAN) {
                return None;
            }
            self.rescan();
        }
        self.paths.get(&id)
    }

    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                self.paths.insert(meta.ino(), Cgroup::new(path.clone()));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
        // Bounded: ids of removed cgroups are never reused (64-bit kernfs ids), and a host
        // has thousands of cgroups, not millions.
        if self.paths.len() > 1_000_000 {
            self.paths.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "3f4a9c1be2d04c5f8a7b6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/kubepods/besteffort/pod0a1b/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/docker/{id}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(container_id("/system.slice/nginx.service"), None);
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id(""), None);
        // 63 or 65 hex digits are not an id.
        assert_eq!(container_id(&format!("/docker/{}", &id[1..])), None);
        assert_eq!(container_id(&format!("/docker/{id}a")), None);
    }

    #[test]
    fn kernel_owners_are_recognised() {
        let mut raw = kaprobe_common::Owner {
            tgid: 7,
            cgroup_id: 99,
            ..kaprobe_common::Owner::default()
        };
        raw.comm[..4].copy_from_slice(b"curl");
        let o = Owner::from_kernel(&raw).unwrap();
        assert!(o.is_from_kernel(&raw));
        let mut other = raw;
        other.tgid = 8;
        assert!(!o.is_from_kernel(&other));
        other = raw;
        other.cgroup_id = 98;
        assert!(!o.is_from_kernel(&other));
        other = raw;
        other.comm[4] = b'2';
        assert!(!o.is_from_kernel(&other));
        // Not UTF-8: from_kernel's text differs from the bytes.
        other = raw;
        other.comm[0] = 0xff;
        assert!(!Owner::from_kernel(&other).unwrap().is_from_kernel(&other));
        let mut resolved = o.clone();
        resolved.cgroup = Some("/x".into());
        assert!(!resolved.is_from_kernel(&raw));
    }

    #[test]
    fn comm_is_cut_at_nul() {
        assert_eq!(comm_text(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm_text(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn this_process_is_found() {
        let me = std::process::id();
        let owner = owner_of_pid(me).expect("our own /proc entry");
        assert_eq!(owner.pid, me);
        assert!(!owner.comm.is_empty());
        let mut paths = CgroupPaths::default();
        if let Some(cg) = &owner.cgroup {
            let ino =
                std::fs::metadata(format!("{}{cg}", cgroup2_root().display())).map(|m| m.ino());
            if let Ok(ino) = ino {
                assert_eq!(paths.path(ino).as_deref(), Some(&**cg));
            }
        }
    }
}
