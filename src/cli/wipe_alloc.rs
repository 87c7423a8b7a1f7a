//! The binary's global allocator: the system allocator, except that every block is
//! wiped (`explicit_bzero`, which the compiler may not drop) before it goes back.
//!
//! Why: secret values, the NSK and bearer tokens pass through buffers the daemon does
//! not own — the control-plane client's header strings and request buffers, the TLS
//! library's records, serde's and base64's temporaries, a connection's read buffer
//! with a client's `Authorization` header. Their owners free them without wiping, and
//! a freed block keeps its bytes until it is reused, so a core file or a memory read
//! would find copies long after the request. With this allocator, memory the process
//! no longer uses holds none of them; what remains is what is in use at that moment
//! (see ARCHITECTURE.md, "Plaintext hygiene").
//!
//! `realloc` is alloc + copy + wipe + free (the system's in-place `realloc` could move
//! the block and free the old one unwiped). Wiping costs one `memset` per free, paid
//! only for bytes that were allocated anyway. The library does not install it: the
//! binary (`main.rs`) does, so in-process tests and benches use the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// `System`, with every block wiped before it is freed.
pub struct WipeOnFree;

fn wipe(ptr: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: `ptr` points to a live block of at least `len` bytes that we own.
        unsafe { libc::explicit_bzero(ptr.cast(), len) }
    }
}

// SAFETY: every method forwards to `System` with the same layouts; blocks are only
// written (zeroed) while they are still allocated.
unsafe impl GlobalAlloc for WipeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            wipe(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_bytes_through_realloc_and_are_wiped_when_freed() {
        let a = WipeOnFree;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a plain allocate / grow / shrink / free sequence on our own block.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, layout, 4096);
            assert!(!q.is_null());
            assert!((0..64).all(|i| *q.add(i) == i as u8));
            let grown = Layout::from_size_align(4096, 8).unwrap();
            let r = a.realloc(q, grown, 16);
            assert!((0..16).all(|i| *r.add(i) == i as u8));
            // What `dealloc` does before the block goes back:
            wipe(r, 16);
            assert!((0..16).all(|i| *r.add(i) == 0));
            a.dealloc(r, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
