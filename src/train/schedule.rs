//! Learning-rate and momentum schedules as pure functions of the training position.

use serde::{Deserialize, Serialize};

/// Cosine interpolation from `start` (at `pos` 0) to `end` (at `pos` 1), as fastai's
/// `SchedCos`.
pub fn sched_cos(start: f64, end: f64, pos: f64) -> f64 {
    start + (1.0 + (std::f64::consts::PI * (1.0 - pos)).cos()) * (end - start) / 2.0
}

/// Two cosine phases, `start -> middle` over `[0, pct)` and `middle -> end` over
/// `[pct, 1]`, as fastai's `combined_cos`.
pub fn combined_cos(pct: f64, start: f64, middle: f64, end: f64, pos: f64) -> f64 {
    if pos < pct {
        sched_cos(start, middle, pos / pct)
    } else {
        sched_cos(middle, end, (pos - pct) / (1.0 - pct))
    }
}

/// fastai 2.x `fit_one_cycle` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OneCycle {
    /// The warm-up starts at `lr_max / div`.
    pub div: f64,
    /// The annealing ends at `lr_max / div_final`.
    pub div_final: f64,
    /// Fraction of the steps spent warming up.
    pub pct_start: f64,
    /// Momentum at the start, at the peak learning rate and at the end.
    pub moms: (f64, f64, f64),
}

impl Default for OneCycle {
    fn default() -> Self {
        Self {
            div: 25.0,
            div_final: 1e5,
            pct_start: 0.25,
            moms: (0.95, 0.85, 0.95),
        }
    }
}

/// Returns the one-cycle learning rate and momentum at `pos` in `[0, 1)` for a peak
/// rate of `lr_max`.
pub fn one_cycle(cfg: &OneCycle, lr_max: f64, pos: f64) -> (f64, f64) {
    let lr = combined_cos(
        cfg.pct_start,
        lr_max / cfg.div,
        lr_max,
        lr_max / cfg.div_final,
        pos,
    );
    let (m0, m1, m2) = cfg.moms;
    (lr, combined_cos(cfg.pct_start, m0, m1, m2, pos))
}

/// Slanted triangular learning rates (Howard and Ruder, 2018).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stlr {
    /// Fraction of the steps during which the rate increases.
    pub cut_frac: f64,
    /// Ratio of the peak rate to the lowest rate.
    pub ratio: f64,
}

impl Default for Stlr {
    fn default() -> Self {
        Self {
            cut_frac: 0.1,
            ratio: 32.0,
        }
    }
}

/// Returns the slanted triangular rate at step `t` of `total`:
/// `cut = floor(total * cut_frac)`, `p = t / cut` before the cut and
/// `1 - (t - cut) / (cut * (1 / cut_frac - 1))` after it,
/// `lr = lr_max * (1 + p * (ratio - 1)) / ratio`. With `cut == 0` the rate only decays.
pub fn stlr(cfg: &Stlr, lr_max: f64, t: usize, total: usize) -> f64 {
    let cut = (total as f64 * cfg.cut_frac).floor();
    let t = t as f64;
    let p = if t < cut {
        t / cut
    } else if cut > 0.0 {
        1.0 - (t - cut) / (cut * (1.0 / cfg.cut_frac - 1.0))
    } else {
        1.0 - t / total.max(1) as f64
    };
    lr_max * (1.0 + p * (cfg.ratio - 1.0)) / cfg.ratio
}

/// The schedule applied over a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant learning rate and the optimizer's momentum.
    Constant,
    /// fastai 2.x one-cycle policy.
    OneCycle(OneCycle),
    /// Slanted triangular learning rates with constant momentum.
    Stlr(Stlr),
}

impl Schedule {
    /// Returns the learning rate for a peak of `lr_max` and the momentum (or `default_mom`
    /// when the schedule leaves it alone) at optimizer step `step` of `total`.
    pub fn at(&self, lr_max: f64, default_mom: f64, step: usize, total: usize) -> (f64, f64) {
        let pos = step as f64 / total.max(1) as f64;
        match self {
            Schedule::Constant => (lr_max, default_mom),
            Schedule::OneCycle(cfg) => one_cycle(cfg, lr_max, pos),
            Schedule::Stlr(cfg) => (stlr(cfg, lr_max, step, total), default_mom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_rel(actual: f64, expected: f64) {
        let tol = 1e-6 * expected.abs() + 1e-10;
        assert!((actual - expected).abs() <= tol, "{actual} vs {expected}");
    }

    // Expected values: fastai 2.8.12 `combined_cos(0.25, lr/25, lr, lr/1e5)` and
    // `combined_cos(0.25, 0.95, 0.85, 0.95)` with lr = 0.01. fastai computes the phase
    // position in float32, hence the relative tolerance.
    #[test]
    fn one_cycle_matches_fastai() {
        let cases = [
            (0.0, 0.0004, 0.95),
            (0.1, 0.003_716_718_512_482_818, 0.915_450_848_828_304),
            (0.125, 0.005_200_000_000_000_001, 0.9),
            (0.25, 0.01, 0.85),
            (0.5, 0.007_500_024_864_862_766, 0.875_000_001_351_385_8),
            (0.75, 0.002_500_074_729_725_539_2, 0.925_000_002_702_771_6),
            (0.99, 4.485_797_283_180_701e-6, 0.949_956_141_588_584),
        ];
        for (pos, lr, mom) in cases {
            let (got_lr, got_mom) = one_cycle(&OneCycle::default(), 0.01, pos);
            assert_rel(got_lr, lr);
            assert_rel(got_mom, mom);
        }
    }

    #[test]
    fn cos_endpoints_and_midpoint() {
        assert_eq!(sched_cos(1.0, 3.0, 0.0), 1.0);
        assert_eq!(sched_cos(1.0, 3.0, 1.0), 3.0);
        assert!((sched_cos(1.0, 3.0, 0.5) - 2.0).abs() < 1e-15);
    }

    // Hand-computed: T = 100, cut = 10, lr_max = 0.01, ratio 32.
    #[test]
    fn stlr_hand_values() {
        let cfg = Stlr::default();
        assert_rel(stlr(&cfg, 0.01, 0, 100), 0.01 / 32.0);
        // t = 5: p = 0.5, lr = 0.01 * (1 + 0.5 * 31) / 32 = 0.01 * 16.5 / 32.
        assert_rel(stlr(&cfg, 0.01, 5, 100), 0.005_156_25);
        assert_rel(stlr(&cfg, 0.01, 10, 100), 0.01);
        // t = 55: p = 1 - 45 / 90 = 0.5.
        assert_rel(stlr(&cfg, 0.01, 55, 100), 0.005_156_25);
        // t = 100: p = 0.
        assert_rel(stlr(&cfg, 0.01, 100, 100), 0.01 / 32.0);
    }

    #[test]
    fn stlr_without_warmup_decays() {
        let cfg = Stlr::default();
        assert_rel(stlr(&cfg, 0.01, 0, 5), 0.01);
        assert!(stlr(&cfg, 0.01, 4, 5) < 0.01);
    }

    #[test]
    fn schedule_position_is_step_over_total() {
        let sched = Schedule::OneCycle(OneCycle::default());
        let (lr, mom) = sched.at(0.01, 0.9, 25, 100);
        assert_rel(lr, 0.01);
        assert_rel(mom, 0.85);
    }
}
