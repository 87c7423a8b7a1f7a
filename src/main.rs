//! The `plexd-nodeapi` binary: all behaviour lives in the library (`cli`). The binary
//! only installs the allocator that wipes freed memory (`cli::wipe_alloc`).

#[global_allocator]
static ALLOCATOR: plexd_nodeapi::cli::wipe_alloc::WipeOnFree =
    plexd_nodeapi::cli::wipe_alloc::WipeOnFree;

fn main() {
    let code = plexd_nodeapi::cli::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
