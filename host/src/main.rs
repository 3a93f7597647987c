//! The `celeriac` binary: parses the command line, sets up logging, runs a subcommand.

mod cli;

use clap::Parser;

use cli::{Cli, Command, exit};

fn main() {
    cli::malloc::set_thresholds();
    let cli = Cli::parse();
    let log_writer = cli::logging::init(&cli.log);
    let code = match cli.command {
        Command::Run(args) => cli::run::main(args),
        Command::Worker(args) => cli::worker::main(args),
        Command::Call(args) => cli::call::main(args),
        Command::Deploy(args) => cli::deploy::main(args),
        Command::CompileArtifact(args) => cli::compile_artifact::main(args),
        Command::Build(args) => match cli::build::run(&args) {
            Ok(()) => exit::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", cli::error_report(&err));
                exit::USAGE
            }
        },
    };
    drop(log_writer);
    std::process::exit(code);
}
