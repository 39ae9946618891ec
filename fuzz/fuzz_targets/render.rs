//! Fuzzes the document parser and both renderers with arbitrary bytes.
//!
//! The property is the service's promise: whatever `validate` accepts renders
//! in both formats with the same summary; whatever it refuses, rendering
//! refuses with the same error. Never a panic, and (libFuzzer's `-rss_limit_mb`
//! and `-timeout`, set by scripts/fuzz.sh) never unbounded memory or time.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/render/mod.rs"]
mod render;

use render::{Format, Limits, RenderError, render_to_memory, validate};

/// Small limits, so inputs of a few KiB reach every one of them.
const LIMITS: Limits = Limits {
    max_sheets: 4,
    max_rows: 2_000,
    max_columns: 32,
    max_cell_chars: 32_767,
};

fuzz_target!(|data: &[u8]| {
    let verdict = validate(data, &LIMITS);
    for format in Format::ALL {
        let rendered = render_to_memory(format, data, &LIMITS, Some(Duration::from_secs(20)));
        match (&verdict, rendered) {
            (Ok(summary), Ok((rendered, bytes))) => {
                assert_eq!(summary, &rendered, "{format}: summaries differ");
                assert!(!bytes.is_empty(), "{format}: empty artifact");
            }
            (Ok(_), Err(e)) => panic!("{format}: a valid document failed to render: {e}"),
            (Err(v), Err(RenderError::Invalid(e))) => {
                assert_eq!(v, &e, "{format}: validation and rendering disagree")
            }
            (Err(v), other) => panic!(
                "{format}: validation said {v}, rendering gave {:?}",
                other.map(|(summary, _)| summary)
            ),
        }
    }
});
