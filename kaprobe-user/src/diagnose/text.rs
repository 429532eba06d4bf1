//! The words: durations as people read them, and the advice of each story.

/// `1.5 s`, `350 s`, `20 min` (a duration an operator compares with a timeout setting).
pub(super) fn dur(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 600_000 {
        format!("{} s", (ms + 500) / 1000)
    } else {
        format!("{:.1} min", ms as f64 / 60_000.0)
    }
}

/// The client's side of the keep-alive race.
pub(super) const RACE_CLIENT: &str = "Keep pooled connections idle for less than the server's keep-alive timeout (a pool idle timeout below it), and retry idempotent requests that fail on a reused connection; or make the server's keep-alive timeout longer than the clients' pool idle timeout.";
/// The server's side of it.
pub(super) const RACE_SERVER: &str = "Clients reuse connections this side closed for being idle: make its keep-alive timeout longer than the clients' (or the load balancer's) idle timeout, or have the clients close idle connections sooner and retry idempotent requests.";
pub(super) const MIDDLEBOX: &str = "Keep traffic on idle connections more often than the middlebox's idle timeout: TCP_KEEPIDLE (or net.ipv4.tcp_keepalive_time) and application pings below it, or close pooled connections after a shorter idle time; if the timeout is yours to set (NAT gateway, load balancer, conntrack), raise it above the connections' idle time.";
pub(super) const KEEPALIVE_TOO_LATE: &str = "The keepalive idle time is longer than the middlebox's idle timeout, so the first probe comes after the middlebox has forgotten the connection: set TCP_KEEPIDLE (or net.ipv4.tcp_keepalive_time) below that timeout.";
pub(super) const RESTARTED: &str = "Reconnect (and retry idempotent requests); if it happens often, look at why the peer restarts or fails over, and drain connections before it does.";
pub(super) const UNREACHABLE: &str = "Check the peer's host and the path to it (routes, firewalls, security groups); a shorter TCP_USER_TIMEOUT or keepalive finds such peers sooner.";
pub(super) const PEER_RESET: &str = "See why the peer's application aborts connections (its logs at that time: a close with unread data, SO_LINGER 0, a timeout of its own, an operator).";
pub(super) const REFUSED: &str = "Check that the service runs and listens on that address and port (and that no firewall rejects it).";
