//! kaprobe's agent, as a library so that tests and benchmarks can reuse its parts:
//! kernel discovery ([`kernel`], [`btf`]), loading ([`loader`]), decoding ([`decode`]),
//! correlation ([`correlate`]), the event model ([`model`]) and output ([`output`]).
pub mod btf;
pub mod cli;
pub mod correlate;
pub mod decode;
pub mod error;
pub mod existing;
mod json;
pub mod kernel;
pub mod loader;
pub mod logging;
pub mod ls;
pub mod metrics;
pub mod model;
pub mod output;
pub mod owner;
pub mod privileges;
pub mod progstats;
pub mod summary;
pub mod watch;

#[cfg(test)]
mod fuzz_tests;

/// A hash map with a fast hasher (foldhash), for the tables touched per event: keys are
/// socket addresses, cgroup ids and endpoints, for which SipHash's cost buys nothing (the
/// tables that grow with outside input are bounded).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
