fn main() {
    std::process::exit(dfast::cli::main());
}
