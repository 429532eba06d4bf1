//! The connection filters that `watch` and `ls` share, and the address block they take.
use std::{net::IpAddr, str::FromStr};

use clap::Args;

/// The connection filters of `watch` and `ls` (see [`crate::sink::Filter`]).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct FilterArgs {
    /// Only connections where either end uses this port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub(crate) port: Vec<u16>,
    /// Only connections where either end is in this address block (repeatable), e.g.
    /// 10.0.0.0/8.
    #[arg(long, value_name = "CIDR")]
    pub(crate) addr: Vec<Cidr>,
    /// Only connections of this network namespace, by inode number as the event log's
    /// `netns` and `stat -Lc %i /proc/PID/ns/net` (or `ls -Li`) show it (repeatable).
    #[arg(long, value_name = "INODE")]
    pub(crate) netns: Vec<u32>,
    /// Only connections owned by this process id (repeatable).
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Vec<u32>,
    /// Only connections owned by a process with this command name (repeatable).
    #[arg(long, value_name = "COMM")]
    pub(crate) comm: Vec<String>,
    /// Only connections owned by a process in this cgroup v2 path or below (repeatable),
    /// e.g. /system.slice/nginx.service.
    #[arg(long, value_name = "PATH")]
    pub(crate) cgroup: Vec<String>,
}

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub(crate) fn contains(&self, ip: &IpAddr) -> bool {
        fn bits(ip: &IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(a) => (u32::from(*a) as u128, 32),
                IpAddr::V6(a) => (u128::from(*a), 128),
            }
        }
        let (net, width) = bits(&self.addr);
        let (host, host_width) = bits(ip);
        if width != host_width {
            return false;
        }
        let shift = width - self.prefix as u32;
        if shift >= width {
            return true;
        }
        (net >> shift) == (host >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        assert!(!net.contains(&"::1".parse().unwrap()));
        let host: Cidr = "fd00::1".parse().unwrap();
        assert!(host.contains(&"fd00::1".parse().unwrap()));
        assert!(!host.contains(&"fd00::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"192.0.2.1".parse().unwrap()));
        assert!("1.2.3/99".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
