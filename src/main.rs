//! The `dfast` binary: the command line (`cli`) over the `dfast` library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
