//! The decision `dfast tune` makes from its measurements, apart from the measuring so that it can be
//! tested with given timings: which `[in, out]` pairs int8 loses on, and the step time that predicts.
//!
//! ```text
//! each distinct (op, shape) s, measured once: t_int8(s), t_alt(s) (ms), and n(s) nodes of the UNet with it
//! each pair p = (in, out) (what an exclude list names; Conv: (in channels, out channels), MatMul: (K, N)):
//!     int8(p) = sum over s of p of n(s) * t_int8(s),   alt(p) = sum over s of p of n(s) * t_alt(s)
//!     p is excluded  <=>  int8(p) > alt(p)
//! predicted step = rest + sum over p of min(int8(p), alt(p)),
//!     rest = the measured step in the alternative precision - sum over p of alt(p)
//! ```
//!
//! The decision is per pair, over all of the pair's nodes, because an exclude list names pairs: a Conv and a
//! MatMul with the same channels, or one linear at two token counts, share one entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One distinct (op, shape) and its timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeTiming {
    /// `Conv` or `MatMul`.
    pub op: String,
    /// (in, out) as the exclude list names it.
    pub pair: (usize, usize),
    /// What else tells the shape apart (kernel, strides, activation shape), for people.
    pub detail: String,
    /// Nodes of the UNet with this shape.
    pub nodes: usize,
    /// Median of one call in int8, ms.
    pub int8_ms: f64,
    /// Median of one call in the alternative precision, ms.
    pub alt_ms: f64,
}

/// The decision for one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairDecision {
    pub pair: (usize, usize),
    pub nodes: usize,
    /// Summed over the pair's nodes, ms.
    pub int8_ms: f64,
    pub alt_ms: f64,
    /// int8 was slower: the pair goes into the exclude list.
    pub exclude: bool,
}

/// One decision per pair, sorted by pair.
pub fn decide(timings: &[ShapeTiming]) -> Vec<PairDecision> {
    let mut by_pair: BTreeMap<(usize, usize), (usize, f64, f64)> = BTreeMap::new();
    for t in timings {
        let e = by_pair.entry(t.pair).or_default();
        e.0 += t.nodes;
        e.1 += t.nodes as f64 * t.int8_ms;
        e.2 += t.nodes as f64 * t.alt_ms;
    }
    by_pair
        .into_iter()
        .map(|(pair, (nodes, int8_ms, alt_ms))| PairDecision {
            pair,
            nodes,
            int8_ms,
            alt_ms,
            exclude: int8_ms > alt_ms,
        })
        .collect()
}

/// The exclude list of `decisions`.
pub fn exclude_list(decisions: &[PairDecision]) -> Vec<(usize, usize)> {
    decisions.iter().filter(|d| d.exclude).map(|d| d.pair).collect()
}

/// Sums over the nodes, ms: (all in the alternative precision, all in int8, each pair as decided).
pub fn sums(decisions: &[PairDecision]) -> (f64, f64, f64) {
    let alt = decisions.iter().map(|d| d.alt_ms).sum();
    let int8 = decisions.iter().map(|d| d.int8_ms).sum();
    let chosen = decisions.iter().map(|d| if d.exclude { d.alt_ms } else { d.int8_ms }).sum();
    (alt, int8, chosen)
}

/// The predicted step (ms) from the measured step in the alternative precision: what the graph spends
/// outside the timed convs and linears stays, the timed ones take their decided time.
pub fn predicted_step_ms(alt_step_ms: f64, decisions: &[PairDecision]) -> f64 {
    let (alt, _, chosen) = sums(decisions);
    (alt_step_ms - alt).max(0.0) + chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(op: &str, pair: (usize, usize), nodes: usize, int8_ms: f64, alt_ms: f64) -> ShapeTiming {
        ShapeTiming { op: op.into(), pair, detail: String::new(), nodes, int8_ms, alt_ms }
    }

    #[test]
    fn a_pair_is_excluded_iff_int8_was_slower_over_its_nodes() {
        let timings = [
            t("MatMul", (320, 960), 16, 1.0, 2.0),
            t("MatMul", (640, 640), 4, 3.0, 2.5),
            // One pair, two shapes: int8 wins on the big one, loses on the small one; the nodes decide.
            t("Conv", (1280, 1280), 2, 4.0, 6.0),
            t("Conv", (1280, 1280), 10, 1.0, 0.5),
            t("MatMul", (320, 320), 3, 1.0, 1.0),
        ];
        let d = decide(&timings);
        assert_eq!(d.iter().map(|d| d.pair).collect::<Vec<_>>(), [(320, 320), (320, 960), (640, 640), (1280, 1280)]);
        // 2*4 + 10*1 = 18 int8 ms against 2*6 + 10*0.5 = 17: excluded.
        let big = &d[3];
        assert_eq!((big.nodes, big.int8_ms, big.alt_ms, big.exclude), (12, 18.0, 17.0, true));
        // A tie keeps int8 (it is not slower).
        assert!(!d[0].exclude);
        assert_eq!(exclude_list(&d), [(640, 640), (1280, 1280)]);
        for x in &d {
            assert_eq!(x.exclude, x.int8_ms > x.alt_ms, "{x:?}");
        }
        // Flipping every timing flips every decision but the tie.
        let flipped: Vec<_> =
            timings.iter().map(|x| ShapeTiming { int8_ms: x.alt_ms, alt_ms: x.int8_ms, ..x.clone() }).collect();
        assert_eq!(exclude_list(&decide(&flipped)), [(320, 960)]);
    }

    #[test]
    fn the_prediction_keeps_the_rest_and_takes_the_faster_of_each_pair() {
        let d = decide(&[t("MatMul", (320, 960), 2, 1.0, 3.0), t("Conv", (640, 640), 1, 5.0, 4.0)]);
        let (alt, int8, chosen) = sums(&d);
        assert_eq!((alt, int8, chosen), (10.0, 7.0, 6.0));
        // A 100 ms step in the alternative precision spends 90 ms elsewhere.
        assert_eq!(predicted_step_ms(100.0, &d), 96.0);
        assert_eq!(predicted_step_ms(5.0, &d), 6.0, "a rest below zero counts as zero");
    }
}
