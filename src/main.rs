//! The `dfast` binary: the command line (`cli`) over the `dfast` library.

mod cli;

fn main() {
    // Rust ignores SIGPIPE, so writing to a closed pipe (`dfast inspect --json | head`) is an error that
    // println! turns into a panic. With the default action the process ends quietly, as command-line tools do.
    // SAFETY: called first thing, before any other thread exists; it only resets a signal disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(cli::main());
}
