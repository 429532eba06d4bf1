//! `kaprobe`: see `kaprobe --help`.
use clap::{Parser, error::ErrorKind};
use kaprobe_user::{
    cli::{Cli, Command},
    error::exit,
    logging, ls, watch,
};

fn main() {
    let cli = match Cli::try_parse() {
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
            std::process::exit(exit::USAGE);
        }
    };
    logging::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Watch(args) => watch::run(args),
        Command::Ls(args) => ls::run(args),
    };
    if let Err(e) = result {
        eprintln!("kaprobe: error: {e}");
        std::process::exit(e.code());
    }
}
