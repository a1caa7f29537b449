//! A global allocator that aborts on any single allocation larger than [`LIMIT`]. Fuzz inputs
//! are at most a few tens of KiB, so nothing they make the code do needs more: a bigger
//! allocation means a length field from the input was trusted before it was checked. The
//! abort is a crash to libFuzzer (which saves the input) and a failure to the replay test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// Largest single allocation allowed.
pub const LIMIT: usize = 64 << 20;

/// The guard: [`System`] plus the size check.
pub struct Guard;

fn too_large() -> ! {
    // No allocation here: stderr is unbuffered and the text is static.
    let _ = std::io::stderr().write_all(b"alloc_guard: allocation larger than 64 MiB\n");
    std::process::abort()
}

// SAFETY: every call is forwarded unchanged to `System`; the guard only refuses sizes.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            too_large();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            too_large();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            too_large();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GUARD: Guard = Guard;
