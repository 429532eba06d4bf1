//! kaprobe's agent, as a library so that tests and benchmarks can reuse its parts. The
//! folders follow the data path (docs/design.md):
//!
//! - [`kernel`]: BTF, kernel facts, privileges (before anything loads);
//! - [`bpf`]: loading the programs, decoding their records, their statistics;
//! - [`correlate`]: kernel records -> events, per connection (mirrors kaprobe-ebpf's hooks);
//! - `diagnose`: why each connection died, in words (rules over what correlate gathered);
//! - [`event`]: the event log's model (a public contract, docs/events.md);
//! - [`sink`]: filter, JSON, human lines, metrics, summaries;
//! - [`host`]: sock_diag, namespaces, /proc owners (shared by `ls` and `watch`);
//! - [`cli`], [`watch`], [`ls`]: the command line and its two verbs.
pub mod bpf;
pub mod cli;
pub mod correlate;
mod diagnose;
pub mod error;
mod event;
mod host;
mod kernel;
mod logging;
mod ls;
pub mod sink;
pub mod watch;

#[cfg(test)]
mod fuzz_tests;

use clap::{Parser, error::ErrorKind};

/// A hash map with a fast hasher (foldhash), for the tables touched per event: keys are
/// socket addresses, cgroup ids and endpoints, for which SipHash's cost buys nothing (the
/// tables that grow with outside input are bounded).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The last few values kept (four), the oldest replaced first: for the small caches of the
/// per-event path (recent diagnoses, the JSON of recent owners and diagnoses), where a
/// linear search of four beats hashing.
pub(crate) struct LastFew<T> {
    kept: [Option<T>; 4],
    next: usize,
}

impl<T> Default for LastFew<T> {
    fn default() -> Self {
        LastFew {
            kept: [None, None, None, None],
            next: 0,
        }
    }
}

impl<T> LastFew<T> {
    /// A kept value `f` accepts.
    pub(crate) fn find(&self, f: impl Fn(&T) -> bool) -> Option<&T> {
        self.kept.iter().flatten().find(|v| f(v))
    }

    /// Keeps `v` in place of the oldest.
    pub(crate) fn keep(&mut self, v: T) {
        self.kept[self.next] = Some(v);
        self.next = (self.next + 1) % self.kept.len();
    }
}

/// `kaprobe`: parses the command line and runs the verb; exits with its status.
pub fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One line: clap's first line (with what it lists after a colon), without its
            // usage block.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("bad arguments").to_owned();
            if first.ends_with(':') {
                let listed: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
                first = format!("{} {}", first, listed.join(", "));
            }
            eprintln!("kaprobe: {first} (see kaprobe --help)");
            std::process::exit(error::exit::USAGE);
        }
    };
    logging::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        cli::Command::Watch(args) => watch::run(args),
        cli::Command::Ls(args) => ls::run(args),
    };
    if let Err(e) = result {
        eprintln!("kaprobe: error: {e}");
        std::process::exit(e.code());
    }
}
