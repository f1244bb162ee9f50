//! A guard around the parquet crate's readers, which are handed untrusted files.
//!
//! Written here because no crate does it: the parquet crate (59) panics on some damaged files
//! instead of returning an error. The fuzz target `parquet_files` found one within seconds (a
//! damaged footer whose column chunk offsets come out negative trips an assertion in
//! `ColumnChunkMetaData::byte_range`). A damaged input must fail its run with a message, never
//! crash the process, so every call into a Parquet reader goes through [`guarded`], which turns
//! a panic into [`Damaged`]. The panic's own report (the crate's internals, no file values) is
//! kept off stderr while a guard is active on the thread; other panics report as before.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// The reader gave up on the file's structure (it panicked inside the parquet crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damaged;

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the Parquet file's structure is inconsistent (its metadata or pages are damaged)",
        )
    }
}

impl std::error::Error for Damaged {}

/// Runs `f` (a call into a Parquet reader), turning a panic into [`Damaged`]. Whatever `f`
/// touched must not be used again after it panicked: callers drop the reader with the error.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Damaged> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|_| Damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_an_error_and_values_pass_through() {
        assert_eq!(guarded(|| 7), Ok(7));
        let r: Result<(), Damaged> = guarded(|| panic!("assertion inside the reader"));
        assert_eq!(r, Err(Damaged));
        // Nested guards restore the outer state; the thread is not left marked as guarded.
        assert_eq!(guarded(|| guarded(|| 1).map(|x| x + 1)), Ok(Ok(2)));
        assert!(!GUARDED.with(Cell::get));
    }
}
