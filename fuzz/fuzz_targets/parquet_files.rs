//! A Parquet file as sealtrail writes it, damaged by the fuzzer (bytes flipped at chosen
//! offsets, then cut short): the readers of untrusted Parquet files (the Parquet source, and
//! `audit` / `prove` / `verify-proof` reading a sink's files back) never panic, they return
//! records or an error.
//!
//! Damaging a valid file rather than decoding raw bytes: a file needs its magic at both ends
//! and a Thrift footer pointing at real pages before any page decoder runs, which libFuzzer
//! would almost never build from nothing.
#![no_main]

#[path = "common.rs"]
mod common;

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use sealtrail_connectors::sink::{read_parquet, read_parquet_row, writer_properties_for};
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// Columns a, b, c as the shared fuzz spec declares them, and three more of the types sinks
/// write (decimal, boolean, nullable distinct text), which the source drops.
fn valid_file() -> Vec<u8> {
    let n = 300i64;
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "a",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["EUR", "USD", "GBP"][(i % 3) as usize]),
            )),
        ),
        ("b", Arc::new(Int64Array::from_iter_values(0..n))),
        (
            "c",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|i| i * 1_000_003))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "d",
            Arc::new(
                Decimal128Array::from_iter_values((0..n).map(|i| i128::from(i) * 12_345))
                    .with_precision_and_scale(18, 4)
                    .expect("valid decimal type"),
            ),
        ),
        (
            "e",
            Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 2 == 0)))),
        ),
        (
            "f",
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (i % 5 != 0).then(|| format!("note {i} of the file"))),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(cols).expect("valid batch");
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        &mut out,
        batch.schema(),
        Some(writer_properties_for(
            std::slice::from_ref(&batch),
            sealtrail_spec::Codec::default(),
        )),
    )
    .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    static P: OnceLock<sealtrail_spec::Pipeline> = OnceLock::new();
    let valid = FILE.get_or_init(valid_file);
    let p = P.get_or_init(|| {
        common::pipeline("    parquet: { path: in.parquet }\n    unknown_columns: drop")
    });
    // Input: a 2-byte length to keep (0 keeps the whole file), then (2-byte offset, xor) edits.
    let mut file = valid.clone();
    let (keep, edits) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % file.len();
        file[at] ^= e[2];
    }
    if keep > 0 && keep < file.len() {
        file.truncate(keep);
    }
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&file).expect("write");
    let _ = read_parquet(f.path());
    for row in [0, 1, 150, 299, 300] {
        let _ = read_parquet_row(f.path(), row);
    }
    common::decode_file(p, f.path());
});
