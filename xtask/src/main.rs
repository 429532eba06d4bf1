//! `cargo xtask <command>`: build, run and test kaprobe, installing the eBPF toolchain
//! first when it is missing. One module per command; `child` runs their child processes.
mod bench;
mod build;
mod child;
mod run;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing kaprobe need (Debian packages, bpf-linker, PyPI
    /// test tools) if it is missing.
    Setup,
    /// Build the eBPF object and the `kaprobe` binary (which embeds it).
    Build(build::Options),
    /// Build, then run `kaprobe` (as root) with the given arguments.
    Run(run::Options),
    /// Build, then run the whole test suite: unit and integration tests (as root); with
    /// `--kernel 6.1|6.12|all`, the core scenarios also in VMs of Debian's kernels.
    Test(test::Options),
    /// Build (release), then measure kaprobe's overhead, per-hook cost, agent throughput,
    /// memory and start-up (as root) into docs/benchmarks.md; `--quick`: a smoke run.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure().and_then(|()| setup::ensure_test_tools()),
        Command::Build(o) => build::run(&o).map(|_| ()),
        Command::Run(o) => run::run(o),
        Command::Test(o) => test::run(o),
        Command::Bench(o) => bench::run(o),
    }
}
