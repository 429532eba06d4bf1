//! Which events the user asked for (`--port`, `--addr`, `--netns`, `--pid`, `--comm`,
//! `--cgroup`): applied to every event before any sink sees it, and by `ls`.
use std::net::IpAddr;

use crate::{
    cli::{Cidr, FilterArgs},
    event::{Body, Event, Owner},
};

/// The event filters of `watch`: an event passes when every kind of filter given matches
/// (`--port` and `--addr` either end of the connection; `--netns` its namespace; `--pid`,
/// `--comm` and `--cgroup` (a path prefix) its owner, so a connection whose owner is unknown
/// does not pass those). Several values of one kind are alternatives. Events without a
/// connection (agent_start, events_lost, summaries) always pass.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub(crate) ports: Vec<u16>,
    pub(crate) nets: Vec<Cidr>,
    pub(crate) netns: Vec<u32>,
    pub(crate) pids: Vec<u32>,
    pub(crate) comms: Vec<String>,
    pub(crate) cgroups: Vec<String>,
}

impl Filter {
    pub(crate) fn from_args(a: &FilterArgs) -> Filter {
        Filter {
            ports: a.port.clone(),
            nets: a.addr.clone(),
            netns: a.netns.clone(),
            pids: a.pid.clone(),
            comms: a.comm.clone(),
            cgroups: a.cgroup.clone(),
        }
    }

    pub(crate) fn matches(&self, e: &Event) -> bool {
        let Some(c) = &e.conn else { return true };
        if self.is_empty() {
            return true;
        }
        self.matches_endpoints(&c.saddr, c.sport, &c.daddr, c.dport)
            && self.matches_netns(c.netns)
            && (self.matches_owner(e.owner.as_ref()) || self.matches_socket_cgroup(e))
    }

    /// `--cgroup` alone, for a close without owner: by the cgroup its socket is in.
    fn matches_socket_cgroup(&self, e: &Event) -> bool {
        let Body::ConnectionClosed {
            socket_cgroup: Some(path),
            ..
        } = &e.body
        else {
            return false;
        };
        e.owner.is_none()
            && self.pids.is_empty()
            && self.comms.is_empty()
            && self.cgroups.iter().any(|p| cgroup_under(path, p))
    }

    /// `--port` and `--addr` alone: either end.
    pub(crate) fn matches_endpoints(
        &self,
        saddr: &IpAddr,
        sport: u16,
        daddr: &IpAddr,
        dport: u16,
    ) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| p == sport || p == dport);
        let addr_ok = self.nets.is_empty()
            || self
                .nets
                .iter()
                .any(|n| n.contains(saddr) || n.contains(daddr));
        port_ok && addr_ok
    }

    /// `--netns` alone.
    pub(crate) fn matches_netns(&self, netns: u32) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    /// `--pid`, `--comm` and `--cgroup` alone.
    pub(crate) fn matches_owner(&self, owner: Option<&Owner>) -> bool {
        if !self.by_owner() {
            return true;
        }
        let Some(o) = owner else { return false };
        let pid_ok = self.pids.is_empty() || self.pids.contains(&o.pid);
        let comm_ok = self.comms.is_empty() || self.comms.iter().any(|c| **c == *o.comm);
        let cgroup_ok = self.cgroups.is_empty()
            || o.cgroup
                .as_deref()
                .is_some_and(|path| self.cgroups.iter().any(|p| cgroup_under(path, p)));
        pid_ok && comm_ok && cgroup_ok
    }

    /// No filter given (the usual case): every event passes, found with six loads instead
    /// of the three checks' calls (~50 instructions per event under `--all` churn).
    fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.nets.is_empty() && self.netns.is_empty() && !self.by_owner()
    }

    /// Whether any owner filter is set.
    fn by_owner(&self) -> bool {
        !(self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty())
    }
}

/// Is cgroup path `path` the cgroup `prefix` or inside it (whole path components:
/// `/system.slice` covers `/system.slice/nginx.service`, not `/system.slice2`)?
pub(crate) fn cgroup_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event as event;

    #[test]
    fn filters_match_either_end() {
        let e = event(5000, 80, "10.0.0.1", "192.0.2.7");
        assert!(Filter::default().matches(&e));
        assert!(
            Filter {
                ports: vec![80],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                ports: vec![5000],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                ports: vec![443],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                ports: vec![],
                nets: vec!["192.0.2.0/24".parse().unwrap()],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                ports: vec![80],
                nets: vec!["198.51.100.0/24".parse().unwrap()],
                ..Filter::default()
            }
            .matches(&e)
        );
        let start = Event { conn: None, ..e };
        assert!(
            Filter {
                ports: vec![1],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&start),
            "agent events always pass"
        );
    }

    #[test]
    fn owner_filters() {
        let mut e = event(5000, 80, "10.0.0.1", "192.0.2.7");
        let by_pid = Filter {
            pids: vec![42],
            ..Filter::default()
        };
        assert!(
            !by_pid.matches(&e),
            "an unknown owner does not pass an owner filter"
        );
        e.owner = Some(Owner::new(
            42,
            "nginx".into(),
            Some("/system.slice/nginx.service".into()),
        ));
        assert!(by_pid.matches(&e));
        let f = |comms: &[&str], cgroups: &[&str], netns: &[u32]| Filter {
            comms: comms.iter().map(|s| s.to_string()).collect(),
            cgroups: cgroups.iter().map(|s| s.to_string()).collect(),
            netns: netns.to_vec(),
            ..Filter::default()
        };
        assert!(f(&["nginx"], &[], &[]).matches(&e));
        assert!(!f(&["curl"], &[], &[]).matches(&e));
        assert!(
            f(&["curl", "nginx"], &[], &[]).matches(&e),
            "values of one kind: any"
        );
        assert!(f(&[], &["/system.slice"], &[]).matches(&e));
        assert!(f(&[], &["/system.slice/"], &[]).matches(&e));
        assert!(f(&[], &["/system.slice/nginx.service"], &[]).matches(&e));
        assert!(
            !f(&[], &["/system.slice/nginx"], &[]).matches(&e),
            "whole components"
        );
        assert!(!f(&[], &["/user.slice"], &[]).matches(&e));
        assert!(f(&["nginx"], &["/system.slice"], &[1]).matches(&e));
        assert!(
            !f(&["nginx"], &["/system.slice"], &[2]).matches(&e),
            "kinds: all"
        );
    }

    #[test]
    fn a_close_without_owner_passes_a_cgroup_filter_by_its_sockets_cgroup() {
        let diagnosis = std::sync::Arc::new(crate::event::diagnosis::test_diagnosis(
            crate::event::diagnosis::Verdict::Refused,
        ));
        let mut e = event(5000, 80, "10.0.0.1", "192.0.2.7");
        e.body = Body::ConnectionClosed {
            cause: crate::event::Cause::ResetReceived,
            error: Some("ECONNREFUSED"),
            closed_by: crate::event::Side::Remote,
            time_wait: false,
            lifetime_ms: None,
            idle_ms: None,
            keepalive_probes: 0,
            keepalive_acks: 0,
            last_state: Some("syn_sent"),
            bytes_sent: Some(0),
            bytes_received: Some(0),
            direction: None,
            segments: Some(2),
            segments_sent: Some(1),
            segments_received: Some(1),
            diagnosis,
            socket_cgroup: Some("/system.slice/app.service".into()),
        };
        let by_cgroup = |p: &str| Filter {
            cgroups: vec![p.to_owned()],
            ..Filter::default()
        };
        assert!(by_cgroup("/system.slice").matches(&e));
        assert!(!by_cgroup("/user.slice").matches(&e));
        let by_pid_too = Filter {
            pids: vec![42],
            cgroups: vec!["/system.slice".to_owned()],
            ..Filter::default()
        };
        assert!(
            !by_pid_too.matches(&e),
            "a process filter needs the process"
        );
        // With an owner, the owner's cgroup decides.
        e.owner = Some(Owner::new(42, "app".into(), Some("/user.slice/x".into())));
        assert!(!by_cgroup("/system.slice").matches(&e));
        assert!(by_cgroup("/user.slice").matches(&e));
    }
}
