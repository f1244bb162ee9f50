//! Arbitrary bytes as a PostgreSQL binary COPY stream of a sink table's columns (every type
//! sealtrail reads back), fed in pieces of varying size: never a panic, only batches or errors.
#![no_main]

use sealtrail_connectors::pg::CopyBinary;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let types = [
        "text",
        "bigint",
        "integer",
        "smallint",
        "double precision",
        "real",
        "boolean",
        "bytea",
        "date",
        "timestamp with time zone",
        "numeric(18,4)",
    ];
    let Some(mut d) = CopyBinary::for_types(&types) else {
        return;
    };
    // A valid header in front, so that the fuzzer reaches the rows without guessing it.
    let mut stream = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    stream.extend_from_slice(rest);
    for piece in stream.chunks(usize::from(split).max(1)) {
        d.feed(piece);
        loop {
            match d.next_batch(3) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
