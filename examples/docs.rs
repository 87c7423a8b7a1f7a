//! `make docs`: writes the documents generated from the command table
//! (`src/cli/commands.rs`) into the repository — the man page, the shell completion
//! scripts and the README's `serve` flag table. `tests/parts/docs.rs` fails while a
//! committed copy differs from what this writes.

use std::path::Path;

use plexd_nodeapi::cli::completions::Shell;
use plexd_nodeapi::cli::docs;

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("wrote {}", path.display());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    write(&root.join(docs::MAN_PAGE_FILE), &docs::man_page());
    for shell in Shell::ALL {
        write(
            &root.join("contrib").join(shell.contrib_file()),
            &shell.script(),
        );
    }
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    match docs::with_flag_table(&readme) {
        Some(updated) => write(&readme_path, &updated),
        None => panic!(
            "README.md lacks the flag table markers ({})",
            docs::TABLE_BEGIN
        ),
    }
}
