//! Tests of the parent module.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn soft_value_is_logsumexp_at_alpha_one() {
    // logsumexp(0, ln 3) = ln(1 + 3) = ln 4
    let v = soft_value(&[0.0, 3f32.ln()], Alpha::ONE);
    assert!((v - 4f64.ln()).abs() < 1e-6, "{v}");
}

#[test]
fn soft_value_scales_with_alpha() {
    // α = 2 over (0, 2 ln 3): 2 · ln(e^0 + e^{ln 3}) = 2 ln 4
    let alpha = Alpha::new(2.0).unwrap();
    let v = soft_value(&[0.0, 2.0 * 3f32.ln()], alpha);
    assert!((v - 2.0 * 4f64.ln()).abs() < 1e-5, "{v}");
}

#[test]
fn fast_exp_is_accurate() {
    for i in 0..8600 {
        let x = -(i as f32) * 0.01;
        let (got, want) = (f64::from(exp_non_positive(x)), f64::from(x).exp());
        assert!((got - want).abs() / want < 1e-5, "e^{x}: {got} vs {want}");
    }
}

#[test]
fn soft_value_matches_f64_logsumexp_on_a_vocabulary_sized_row() {
    let mut state = 7u32;
    let row: Vec<f32> = (0..49_999)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / 16_777_216.0 * 40.0 - 15.0
        })
        .collect();
    for alpha in [0.3, 1.0, 2.5] {
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let exact = max
            + alpha
                * row
                    .iter()
                    .map(|&x| ((x as f64 - max) / alpha).exp())
                    .sum::<f64>()
                    .ln();
        let got = soft_value(&row, Alpha::new(alpha).unwrap());
        assert!((got - exact).abs() < 1e-4, "α={alpha}: {got} vs {exact}");
    }
}

#[test]
fn soft_value_survives_huge_logits() {
    // Without max subtraction e^1000 overflows.
    let v = soft_value(&[1000.0, 1000.0], Alpha::ONE);
    assert!((v - (1000.0 + 2f64.ln())).abs() < 1e-4, "{v}");
}

#[test]
fn alpha_rejects_non_positive_and_non_finite() {
    assert!(Alpha::new(0.0).is_none());
    assert!(Alpha::new(-1.0).is_none());
    assert!(Alpha::new(f64::NAN).is_none());
    assert!(Alpha::new(f64::INFINITY).is_none());
    // Finite but out of range: 1.7e308 made every score -inf, 1e-300 made it NaN (the fuzzer).
    assert!(Alpha::new(1.7e308).is_none());
    assert!(Alpha::new(1e-300).is_none());
    assert!(Alpha::new(Alpha::MAX).is_some() && Alpha::new(Alpha::MIN).is_some());
    assert_eq!(Alpha::new(0.5).map(Alpha::get), Some(0.5));
}

#[test]
fn alpha_is_bounded_where_the_math_stays_finite() {
    for outside in [1.7e308, 1e300, 1000.5, 9.99e-4, 1e-300, f64::MIN_POSITIVE] {
        assert!(Alpha::new(outside).is_none(), "{outside}");
    }
    assert_eq!(Alpha::new(Alpha::MIN).map(Alpha::get), Some(1e-3));
    assert_eq!(Alpha::new(Alpha::MAX).map(Alpha::get), Some(1e3));
    // At both ends, over a vocabulary-sized row with a wide spread, every value is finite.
    let row: Vec<f32> = (0..150_000)
        .map(|i| (i % 4000) as f32 * 0.01 - 20.0)
        .collect();
    for alpha in [Alpha::MIN, Alpha::MAX] {
        let alpha = Alpha::new(alpha).unwrap();
        let v = soft_value(&row, alpha);
        let t = TokenValues::new(f64::from(row[0]), v, v, alpha);
        assert!(v.is_finite() && t.logprob.is_finite() && t.reward.is_finite());
        assert!(Aggregates::of(&[t, t], alpha, None).is_finite());
    }
}

#[test]
fn token_values_follow_the_bellman_identity() {
    let t = TokenValues::new(5.0, 7.0, 4.0, Alpha::new(2.0).unwrap());
    assert!(close(t.logprob, -1.0));
    assert!(close(t.reward, 1.0));
    assert!(close(t.v_next, 4.0));
}

#[test]
fn candidate_values_chain_rows() {
    // Two tokens, not terminal: rows are context(V=10, q=9), tok1(V=8, q=7), tok2(V=6).
    let rows = [
        RowValue {
            v: 10.0,
            q_next: Some(9.0),
        },
        RowValue {
            v: 8.0,
            q_next: Some(7.0),
        },
        RowValue {
            v: 6.0,
            q_next: None,
        },
    ];
    let values = candidate_values(&rows, false, Alpha::ONE).unwrap();
    assert_eq!(values.len(), 2);
    assert!(close(values[0].reward, 9.0 - 8.0));
    assert!(close(values[0].logprob, 9.0 - 10.0));
    assert!(close(values[1].reward, 7.0 - 6.0));
    assert!(close(values[1].logprob, 7.0 - 8.0));
}

#[test]
fn terminal_candidates_end_at_zero_value() {
    let with_last_row = [
        RowValue {
            v: 10.0,
            q_next: Some(9.0),
        },
        RowValue {
            v: 8.0,
            q_next: Some(7.0),
        },
        RowValue {
            v: 6.0,
            q_next: None,
        },
    ];
    let without_last_row = &with_last_row[..2];
    for rows in [&with_last_row[..], without_last_row] {
        let values = candidate_values(rows, true, Alpha::ONE).unwrap();
        assert_eq!(values.len(), 2);
        assert!(close(values[1].v_next, 0.0));
        assert!(close(values[1].reward, 7.0));
    }
}

#[test]
fn telescoping_links_endo_and_logprob() {
    // R = α Σ log π + V(s_1) − V(s_{H+1})
    let alpha = Alpha::new(0.7).unwrap();
    let rows = [
        RowValue {
            v: 3.0,
            q_next: Some(2.5),
        },
        RowValue {
            v: 4.0,
            q_next: Some(1.0),
        },
        RowValue {
            v: 2.0,
            q_next: Some(0.5),
        },
        RowValue {
            v: 1.5,
            q_next: None,
        },
    ];
    let values = candidate_values(&rows, false, alpha).unwrap();
    let agg = Aggregates::of(&values, alpha, Some(Baseline(-0.25)));
    assert!(close(agg.endo, agg.logprob + 3.0 - 1.5));
    assert!(close(agg.endo, (2.5 - 4.0) + (1.0 - 2.0) + (0.5 - 1.5)));
    assert!(close(agg.endo_mean, agg.endo / 3.0));
    assert!(close(agg.logprob_mean, agg.logprob / 3.0));
    // The sum less the baseline per token: −3.5 − (−0.25 · 3).
    assert!(agg.endo_lc.is_some_and(|lc| close(lc, agg.endo + 0.75)));
    assert_eq!(Aggregates::of(&values, alpha, None).endo_lc, None);
}

#[test]
fn an_empty_candidate_scores_zero_everywhere() {
    let agg = Aggregates::of(&[], Alpha::ONE, Some(Baseline(-2.0)));
    assert_eq!(agg.get(Aggregate::Endo), Some(0.0));
    assert_eq!(agg.get(Aggregate::EndoMean), Some(0.0));
    assert_eq!(agg.get(Aggregate::EndoLc), Some(0.0));
}

#[test]
fn malformed_rows_are_rejected() {
    assert!(candidate_values(&[], false, Alpha::ONE).is_none());
    let missing_q = [
        RowValue {
            v: 1.0,
            q_next: None,
        },
        RowValue {
            v: 1.0,
            q_next: None,
        },
    ];
    assert!(candidate_values(&missing_q, false, Alpha::ONE).is_none());
    assert!(row_value(&[0.0, 1.0], Some(2), Alpha::ONE).is_none());
}

#[test]
fn aggregate_names_round_trip() {
    for a in Aggregate::ALL {
        assert_eq!(a.name().parse::<Aggregate>(), Ok(a));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            format!("\"{}\"", a.name())
        );
    }
    assert!("best".parse::<Aggregate>().is_err());
}

#[test]
fn order_is_best_first_and_stable() {
    assert_eq!(order_best_first(&[1.0, 3.0, 2.0, 3.0]), vec![1, 3, 2, 0]);
    assert_eq!(order_best_first(&[f64::NAN, 0.0]), vec![1, 0]);
}
