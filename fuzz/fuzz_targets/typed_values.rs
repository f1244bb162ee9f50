//! Arbitrary text through every typed parser (dates, timestamps, decimals, numbers, booleans)
//! and every check-digit scheme: never a panic.
#![no_main]

use sealtrail_spec::ColumnType;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for ty in [
        ColumnType::Int64,
        ColumnType::Float64,
        ColumnType::Boolean,
        ColumnType::Date,
        ColumnType::Timestamp,
        ColumnType::Decimal {
            precision: 18,
            scale: 4,
        },
        ColumnType::Decimal {
            precision: 38,
            scale: 0,
        },
    ] {
        let _ = sealtrail_quality::typed::parses(s, ty, None);
    }
    let _ =
        sealtrail_quality::typed::parses(s, ColumnType::Timestamp, Some("%Y-%m-%dT%H:%M:%S%.3fZ"));
    let _ = sealtrail_quality::typed::parses(s, ColumnType::Date, Some("%d/%m/%Y"));
    use sealtrail_quality::checksum::{iban, isin, lei, luhn};
    let _ = (isin(s), lei(s), iban(s), luhn(s));
});
