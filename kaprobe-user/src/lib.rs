//! kaprobe's agent, as a library so that tests and benchmarks can reuse its parts. The
//! folders follow the data path (docs/design.md):
//!
//! - [`kernel`]: BTF, kernel facts, privileges (before anything loads);
//! - [`bpf`]: loading the programs, decoding their records, their statistics;
//! - [`correlate`]: kernel records -> events, per connection (mirrors kaprobe-ebpf's hooks);
//! - [`event`]: the event log's model (a public contract, docs/events.md);
//! - [`sink`]: filter, JSON, human lines, metrics, summaries;
//! - [`host`]: sock_diag, namespaces, /proc owners (shared by `ls` and `watch`);
//! - [`cli`], [`watch`], [`ls`]: the command line and its two verbs.
pub mod bpf;
pub mod cli;
pub mod correlate;
pub mod error;
pub mod event;
pub mod host;
pub mod kernel;
pub mod logging;
pub mod ls;
pub mod sink;
pub mod watch;

#[cfg(test)]
mod fuzz_tests;

/// A hash map with a fast hasher (foldhash), for the tables touched per event: keys are
/// socket addresses, cgroup ids and endpoints, for which SipHash's cost buys nothing (the
/// tables that grow with outside input are bounded).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
