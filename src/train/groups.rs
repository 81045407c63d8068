//! Parameter groups, discriminative learning rates and freezing.
//!
//! Freezing follows fastai 2.x: `freeze_to(n)` freezes the groups before index `n`
//! (a negative `n` counts from the end) and `unfreeze` is `freeze_to(0)`. Frozen
//! parameters get no update and their Adam moments and step counts are kept, so
//! unfreezing continues from them.
//!
//! Batch norm: a parameter marked [`Param::train_frozen`] keeps training inside a frozen
//! group, like fastai's `train_bn=True` default (callers mark the affine weight and bias
//! of batch-norm layers). Running mean and variance are buffers, not parameters: the
//! model updates them in training mode whether or not their group is frozen, as in
//! fastai, where freezing only turns off `requires_grad`.

use candle_core::Var;
use serde::{Deserialize, Serialize};

use super::{Result, TrainError};

/// One trainable tensor.
#[derive(Debug, Clone)]
pub struct Param {
    /// Unique name, used as the key in checkpoints.
    pub name: String,
    /// The variable the model reads in its forward pass.
    pub var: Var,
    /// Whether weight decay applies (false for biases and norm parameters).
    pub decay: bool,
    /// Whether the parameter trains even when its group is frozen (batch-norm weights).
    pub train_frozen: bool,
}

impl Param {
    /// Creates a parameter with weight decay that freezes with its group.
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        Self {
            name: name.into(),
            var,
            decay: true,
            train_frozen: false,
        }
    }

    /// Creates a parameter without weight decay (a bias or norm parameter).
    pub fn no_decay(name: impl Into<String>, var: Var) -> Self {
        Self {
            decay: false,
            ..Self::new(name, var)
        }
    }
}

/// A set of parameters sharing one learning rate, ordered from input to output.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Group name for messages.
    pub name: String,
    /// The group's parameters.
    pub params: Vec<Param>,
}

impl ParamGroup {
    /// Creates a group.
    pub fn new(name: impl Into<String>, params: Vec<Param>) -> Self {
        Self {
            name: name.into(),
            params,
        }
    }
}

/// A learning rate for all groups, fastai style.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSpec {
    /// The same rate for every group.
    Value(f64),
    /// `slice(high)`: the last group gets `high`, the others `high / 10`.
    Top(f64),
    /// `slice(low, high)`: rates spaced geometrically from `low` (first group) to `high`
    /// (last group).
    Range(f64, f64),
}

/// Spreads `spec` over `n` groups, as fastai's `Learner.lr_range`.
pub fn spread_lrs(spec: LrSpec, n: usize) -> Vec<f64> {
    match spec {
        LrSpec::Value(lr) => vec![lr; n],
        LrSpec::Top(high) => {
            let mut lrs = vec![high / 10.0; n];
            if let Some(last) = lrs.last_mut() {
                *last = high;
            }
            lrs
        }
        LrSpec::Range(low, high) => {
            if n <= 1 {
                return vec![high; n];
            }
            let step = (high / low).powf(1.0 / (n - 1) as f64);
            (0..n).map(|i| low * step.powi(i as i32)).collect()
        }
    }
}

/// Returns the number of leading frozen groups for fastai's `freeze_to(n)` over
/// `n_groups` groups: `n` itself, or `n_groups + n` when `n` is negative.
pub fn frozen_count(n: isize, n_groups: usize) -> Result<usize> {
    let count = if n >= 0 {
        n as usize
    } else {
        let back = n.unsigned_abs();
        n_groups.checked_sub(back).ok_or_else(|| {
            TrainError::Invalid(format!(
                "freeze_to({n}) counts back past the first of {n_groups} parameter groups; use a value in -{n_groups}..={n_groups}"
            ))
        })?
    };
    Ok(count.min(n_groups))
}

/// Returns, for each group, whether it is frozen when the first `count` groups are.
pub fn frozen_mask(count: usize, n_groups: usize) -> Vec<bool> {
    (0..n_groups).map(|i| i < count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_range_is_geometric() {
        let lrs = spread_lrs(LrSpec::Range(1e-3 / 2.6f64.powi(4), 1e-3), 5);
        for (k, lr) in lrs.iter().rev().enumerate() {
            let expected = 1e-3 / 2.6f64.powi(k as i32);
            assert!(
                (lr - expected).abs() < 1e-15,
                "group {k}: {lr} vs {expected}"
            );
        }
    }

    #[test]
    fn slice_top_divides_others_by_ten() {
        assert_eq!(spread_lrs(LrSpec::Top(1e-2), 3), vec![1e-3, 1e-3, 1e-2]);
    }

    #[test]
    fn single_value_for_all_groups() {
        assert_eq!(spread_lrs(LrSpec::Value(0.5), 2), vec![0.5, 0.5]);
    }

    #[test]
    fn range_over_one_group_is_high() {
        assert_eq!(spread_lrs(LrSpec::Range(1e-4, 1e-2), 1), vec![1e-2]);
    }

    #[test]
    fn freeze_to_negative_counts_from_end() {
        assert_eq!(frozen_count(-1, 4).unwrap(), 3);
        assert_eq!(frozen_count(-3, 4).unwrap(), 1);
        assert_eq!(frozen_count(0, 4).unwrap(), 0);
        assert_eq!(frozen_count(2, 4).unwrap(), 2);
        assert_eq!(frozen_count(9, 4).unwrap(), 4);
    }

    #[test]
    fn freeze_to_past_start_is_error() {
        assert!(frozen_count(-5, 4).is_err());
    }

    #[test]
    fn mask_marks_leading_groups() {
        assert_eq!(frozen_mask(2, 3), vec![true, true, false]);
    }
}
