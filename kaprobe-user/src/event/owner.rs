//! Who owns a connection, as the event log names it: process id, command name, cgroup v2
//! path and, when the path shows one, the container id.
use std::{ops::Deref, sync::Arc};

use serde::Serialize;

/// The process a connection belongs to: one allocation shared by every connection and
/// event that names it (the agent interns the owners kernel records name), so that a clone
/// is one reference count, and two clones compare by address first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct Owner(Arc<OwnerData>);

/// What an [`Owner`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OwnerData {
    /// Thread-group id (what `ps` calls the pid).
    pub(crate) pid: u32,
    /// The process's command name (`comm`, at most 15 bytes).
    pub(crate) comm: Arc<str>,
    /// cgroup v2 path, e.g. `/system.slice/nginx.service`; null when unknown.
    pub(crate) cgroup: Option<Arc<str>>,
    /// Container id when the cgroup path shows one (docker, containerd, CRI-O, podman).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container_id: Option<Arc<str>>,
    /// cgroup v2 id as the kernel recorded it (0: none); resolved into `cgroup` by the
    /// agent.
    #[serde(skip)]
    pub(crate) cgroup_id: u64,
}

impl Deref for Owner {
    type Target = OwnerData;

    fn deref(&self) -> &OwnerData {
        &self.0
    }
}

impl From<OwnerData> for Owner {
    fn from(data: OwnerData) -> Owner {
        Owner(Arc::new(data))
    }
}

impl Owner {
    pub(crate) fn new(pid: u32, comm: String, cgroup: Option<String>) -> Owner {
        let container_id = cgroup.as_deref().and_then(container_id).map(Arc::from);
        Owner::from(OwnerData {
            pid,
            comm: comm.into(),
            cgroup: cgroup.map(Arc::from),
            container_id,
            cgroup_id: 0,
        })
    }

    /// From a kernel record; `None` when the kernel did not know the owner.
    pub(crate) fn from_kernel(raw: &kaprobe_common::Owner) -> Option<Owner> {
        (raw.tgid != 0).then(|| {
            Owner::from(OwnerData {
                pid: raw.tgid,
                comm: match std::str::from_utf8(comm_bytes(&raw.comm)) {
                    Ok(text) => text.into(),
                    Err(_) => comm_text(&raw.comm).into(),
                },
                cgroup: None,
                container_id: None,
                cgroup_id: raw.cgroup_id,
            })
        })
    }

    /// Is this the owner a kernel record names (as [`Owner::from_kernel`] would make it,
    /// its cgroup path resolved or not)?
    pub(crate) fn is_from_kernel(&self, raw: &kaprobe_common::Owner) -> bool {
        self.pid == raw.tgid
            && self.cgroup_id == raw.cgroup_id
            // (A name that is not UTF-8 was changed by from_kernel: never equal.)
            && self.comm.as_bytes() == comm_bytes(&raw.comm)
    }

    /// To change what it says (a copy if it is shared).
    pub(crate) fn data_mut(&mut self) -> &mut OwnerData {
        Arc::make_mut(&mut self.0)
    }

    /// The same owner, as named by the cgroup id this agent has just resolved.
    pub(crate) fn with_cgroup(&self, path: Arc<str>, container_id: Option<Arc<str>>) -> Owner {
        Owner::from(OwnerData {
            cgroup: Some(path),
            container_id,
            ..(*self.0).clone()
        })
    }
}

/// The container id in a cgroup path: a run of 64 hex digits in one of its components
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, `/docker/<id>`, `/kubepods/.../<id>`). The innermost wins.
pub(crate) fn container_id(path: &str) -> Option<String> {
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
pub(crate) fn comm_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(comm_bytes(raw)).into_owned()
}

/// A NUL-padded `comm` without its padding.
fn comm_bytes(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
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
        // Still the same owner once its cgroup is resolved.
        let resolved = o.with_cgroup("/x".into(), None);
        assert!(resolved.is_from_kernel(&raw));
        assert_ne!(resolved, o);
    }

    #[test]
    fn comm_is_cut_at_nul() {
        assert_eq!(comm_text(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm_text(b"0123456789abcdef"), "0123456789abcdef");
    }
}
