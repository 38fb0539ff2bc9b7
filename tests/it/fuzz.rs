//! The short fuzz run CI does (docs/RELIABILITY.md, "Fuzzing"): 20,000 generated and mutated
//! bodies over every route's decoding and preparation with the default model's real tokenizer and
//! chat template. The long run is `cargo run --release --example fuzz -- --execs 10000000`.

#[path = "../../examples/fuzz/harness.rs"]
mod harness;

use crate::common;

#[test]
fn twenty_thousand_bodies_prepare_or_are_refused_as_input_errors() {
    let cases = std::env::var("ENDORM_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let (tally, findings) = harness::run(common::model(), 14, cases, |_, _| {});
    for finding in &findings {
        eprintln!(
            "{} {}: {}",
            finding.route.path(),
            finding.what,
            String::from_utf8_lossy(&finding.body)
        );
    }
    assert!(findings.is_empty(), "{} findings", findings.len());
    assert_eq!(tally.undecodable + tally.refused + tally.prepared, cases);
    // The generator reaches every outcome, not only the JSON decoder's refusals.
    assert!(tally.prepared > cases / 10, "{tally:?}");
    assert!(tally.refused > cases / 20, "{tally:?}");
}
