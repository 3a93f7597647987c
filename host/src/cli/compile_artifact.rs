//! `celeriac compile-artifact` (hidden): the child process a worker starts to compile a
//! component into its compile cache, so the compiler's memory leaves with the child.

use std::path::PathBuf;

use super::exit;

/// `celeriac compile-artifact` arguments; the component comes on stdin.
#[derive(Debug, clap::Args)]
pub struct CompileArtifactArgs {
    /// Where to write the compiled artifact
    #[arg(long)]
    pub output: PathBuf,
}

/// Runs the command and returns the exit code.
pub fn main(args: CompileArtifactArgs) -> i32 {
    match celeriac::registry::serve_compile_request(&args.output) {
        Ok(()) => exit::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", super::error_report(&err.into()));
            exit::USAGE
        }
    }
}
