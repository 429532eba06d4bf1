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

use crate::{
    FastMap,
    event::owner::{Owner, container_id},
};

/// Where the cgroup v2 hierarchy usually is (`/sys/fs/cgroup/unified` on hybrid hosts).
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
pub(crate) fn cgroup2_root() -> PathBuf {
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

/// The cgroup v2 path of a process (`0::<path>` in /proc/PID/cgroup).
pub(crate) fn cgroup_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The command name of a process.
pub(crate) fn comm_of_pid(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// The owner of a live process, from /proc.
pub(crate) fn owner_of_pid(pid: u32) -> Option<Owner> {
    let comm = comm_of_pid(pid)?;
    Some(Owner::new(pid, comm, cgroup_of_pid(pid)))
}

/// Socket inode → (pid, fd): the process holding it (the lowest pid when several share
/// it, e.g. after fork) and one of its descriptors for it. One pass over /proc/*/fd: for
/// snapshots (`ls`), not per event.
pub(crate) fn socket_fds() -> HashMap<u64, (u32, i32)> {
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

/// The owners kernel records name, interned, their cgroup paths resolved: a record that
/// names a known owner (under churn, nearly every one: a few processes own most
/// connections) costs one look-up, no allocation, and its events share the owner.
#[derive(Default)]
pub(crate) struct Owners {
    cgroups: CgroupPaths,
    /// (tgid, cgroup id, comm) as the kernel recorded them → the owner.
    interned: FastMap<(u32, u64, [u8; 16]), Owner>,
}

impl Owners {
    /// Owners kept at most (beyond: forgotten all at once, and interned again as they come).
    const MAX: usize = 4096;

    /// The owner a kernel record names; `None` when the kernel did not know it.
    pub(crate) fn named(&mut self, raw: &kaprobe_common::Owner) -> Option<Owner> {
        if raw.tgid == 0 {
            return None;
        }
        let key = (raw.tgid, raw.cgroup_id, raw.comm);
        if let Some(o) = self.interned.get(&key) {
            return Some(o.clone());
        }
        let mut o = Owner::from_kernel(raw)?;
        self.cgroups.resolve(&mut o);
        // A cgroup not found yet (made since the last scan) is looked up again next time.
        if o.cgroup.is_some() || o.cgroup_id == 0 {
            if self.interned.len() >= Self::MAX {
                self.interned.clear();
            }
            self.interned.insert(key, o.clone());
        }
        Some(o)
    }

    /// The path of cgroup `id` (0: none).
    pub(crate) fn cgroup_path(&mut self, id: u64) -> Option<Arc<str>> {
        self.cgroups.cgroup(id).map(|c| c.path.clone())
    }

    /// Fills an owner's cgroup path from its id if it was not known yet.
    pub(crate) fn resolve(&mut self, owner: &mut Owner) {
        self.cgroups.resolve(owner);
    }
}

/// cgroup id (what `bpf_get_current_cgroup_id()` returns: the inode number of the
/// cgroup's directory in cgroup2fs) → path, with a cache. A miss rescans the hierarchy,
/// at most once per [`CgroupPaths::RESCAN`], so a burst of unknown ids costs one walk.
pub(crate) struct CgroupPaths {
    root: PathBuf,
    paths: FastMap<u64, Cgroup>,
    scanned: Option<Instant>,
}

/// A cgroup as owners name it.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    pub(crate) path: Arc<str>,
    /// [`container_id`] of the path.
    pub(crate) container_id: Option<Arc<str>>,
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
    /// Fills `cgroup` and `container_id` from `cgroup_id`.
    pub(crate) fn resolve(&mut self, owner: &mut Owner) {
        if owner.cgroup.is_none() && owner.cgroup_id != 0 {
            if let Some(cgroup) = self.cgroup(owner.cgroup_id) {
                *owner = owner.with_cgroup(cgroup.path.clone(), cgroup.container_id.clone());
            }
        }
    }

    pub(crate) const RESCAN: Duration = Duration::from_secs(1);

    pub(crate) fn new(root: &Path) -> CgroupPaths {
        CgroupPaths {
            root: root.to_path_buf(),
            paths: FastMap::default(),
            scanned: None,
        }
    }

    /// Cgroup `id`, if it exists (or existed at the last scan).
    pub(crate) fn cgroup(&mut self, id: u64) -> Option<&Cgroup> {
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
    fn owners_are_interned() {
        let mut owners = Owners::default();
        let mut raw = kaprobe_common::Owner {
            tgid: 7,
            ..Default::default()
        };
        raw.comm[..5].copy_from_slice(b"nginx");
        let a = owners.named(&raw).expect("an owner");
        let b = owners.named(&raw).expect("an owner");
        // One allocation, shared.
        assert!(std::ptr::eq(&*a, &*b));
        assert_eq!((a.pid, &*a.comm, a.cgroup.as_deref()), (7, "nginx", None));
        // Another process, another owner; none for an unknown one.
        raw.tgid = 8;
        assert_eq!(owners.named(&raw).map(|o| o.pid), Some(8));
        assert!(!std::ptr::eq(&*a, &*owners.named(&raw).unwrap()));
        raw.tgid = 0;
        assert_eq!(owners.named(&raw), None);
        // A cgroup id that does not exist is not interned (looked up again next time).
        raw.tgid = 9;
        raw.cgroup_id = u64::MAX;
        let c = owners.named(&raw).expect("an owner");
        assert_eq!((c.cgroup_id, c.cgroup.as_deref()), (u64::MAX, None));
        assert!(!owners.interned.contains_key(&(9, u64::MAX, raw.comm)));
        // Bounded: forgotten all at once when full.
        for tgid in 100..100 + Owners::MAX as u32 + 10 {
            raw.tgid = tgid;
            raw.cgroup_id = 0;
            owners.named(&raw);
        }
        assert!(owners.interned.len() <= Owners::MAX);
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
                assert_eq!(paths.cgroup(ino).map(|c| &*c.path), Some(&**cg));
            }
        }
    }
}
