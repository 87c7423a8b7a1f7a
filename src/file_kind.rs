//! What a file is, in words, for messages about something found where a regular file,
//! a folder or a socket was expected ("a FIFO", "a symbolic link", …). Decides nothing.

use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;

/// The kind of file `t` is, as a message names it.
pub fn describe(t: FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}
