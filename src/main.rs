//! The `dfast` binary: the command line (`cli`) over the `dfast` library.

mod cli;

fn main() {
    // Rust ignores SIGPIPE, so writing to a closed pipe (`dfast inspect --json | head`) is an error that
    // println! turns into a panic. With the default action the process ends quietly, as command-line tools do.
    // A file-size limit (RLIMIT_FSIZE) would kill the process in the middle of a write by default; ignored,
    // the write fails with EFBIG like a full disk, and dfast removes its temporary file and says so.
    // SAFETY: called first thing, before any other thread exists; it only sets signal dispositions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    std::process::exit(cli::main());
}
