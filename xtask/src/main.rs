//! `cargo xtask <command>`: build, run and test kaprobe, installing the eBPF toolchain
//! first when it is missing. One module per command; `child` runs their child processes.
mod bench;
mod build;
mod child;
mod image;
mod install;
mod run;
mod selftest;
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
    /// Build (release), then run `kaprobe` (as root) with the given arguments.
    Run(run::Options),
    /// Build (release) and install the binary as PREFIX/bin/kaprobe (default /usr/local).
    Install(install::Options),
    /// A minute to see kaprobe work here (as root): one real keepalive timeout between two
    /// network namespaces of its own, and the lines kaprobe printed for it, explained.
    Selftest,
    /// Build, then run the whole test suite: unit and integration tests (as root); with
    /// `--kernel 6.1|6.12|all`, the core scenarios also in VMs of Debian's kernels.
    Test(test::Options),
    /// Build (release), then measure kaprobe's overhead, per-hook cost, agent throughput,
    /// memory and start-up (as root) into docs/benchmarks.md; `--quick`: a smoke run.
    Bench(bench::Options),
    /// Build (release), then the container image the DaemonSet runs
    /// (ghcr.io/kaprobe/kaprobe:<version> and :latest) with podman, offline (as root).
    Image(image::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure().and_then(|()| setup::ensure_test_tools()),
        Command::Build(o) => build::run(&o).map(|_| ()),
        Command::Run(o) => run::run(o),
        Command::Install(o) => install::run(&o),
        Command::Selftest => selftest::run(),
        Command::Test(o) => test::run(o),
        Command::Bench(o) => bench::run(o),
        Command::Image(o) => image::run(&o),
    }
}
