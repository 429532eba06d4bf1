//! `kaprobe`: see `kaprobe --help`.
use clap::Parser;
use kaprobe_user::{cli::{Cli, Command}, logging, watch};

fn main() {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Watch(args) => watch::run(args),
    };
    if let Err(e) = result {
        eprintln!("kaprobe: error: {e}");
        std::process::exit(e.code());
    }
}
