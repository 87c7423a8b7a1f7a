//! The `plexd-nodeapi` binary: all behaviour lives in the library (`cli`).

fn main() {
    let code = plexd_nodeapi::cli::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
