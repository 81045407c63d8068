//! AdamW with decoupled weight decay, written to match fastai 2.x `Adam`
//! (`weight_decay`, `average_grad` with dampening, `average_sqr_grad`, `step_stat`,
//! `adam_step`), plus gradient collection, global-norm clipping and accumulation.
//!
//! For each trainable parameter `p` with gradient `g`, learning rate `lr` and momentum
//! `mom` (beta1), one step is:
//!
//! ```text
//! p        *= 1 - lr * wd                       (only when the parameter decays)
//! grad_avg  = mom * grad_avg + (1 - mom) * g
//! sqr_avg   = sqr_mom * sqr_avg + (1 - sqr_mom) * g^2
//! step     += 1
//! p        -= lr / (1 - mom^step) * grad_avg / (sqrt(sqr_avg / (1 - sqr_mom^step)) + eps)
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::groups::{frozen_mask, ParamGroup};
use super::{Result, TrainError};

/// Adam hyper-parameters other than the learning rate; defaults are fastai 2.x's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// beta1, the gradient moving-average coefficient (schedules may override it).
    pub mom: f64,
    /// beta2, the squared-gradient moving-average coefficient.
    pub sqr_mom: f64,
    /// Term added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied as `p *= 1 - lr * wd`.
    pub wd: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            mom: 0.9,
            sqr_mom: 0.99,
            eps: 1e-5,
            wd: 0.01,
        }
    }
}

/// Gradients laid out like the parameter groups: `grads[group][param]`, `None` for a
/// frozen parameter or one the loss does not depend on.
pub type Grads = Vec<Vec<Option<Tensor>>>;

#[derive(Debug, Clone, Default)]
struct ParamState {
    grad_avg: Option<Tensor>,
    sqr_avg: Option<Tensor>,
    step: u64,
}

/// fastai's `debias(mom, damp, step)`: `damp * (1 - mom^step) / (1 - mom)`.
fn debias(mom: f64, damp: f64, step: u64) -> f64 {
    damp * (1.0 - mom.powi(step as i32)) / (1.0 - mom)
}

/// AdamW over parameter groups, with per-parameter moments and step counts.
#[derive(Debug)]
pub struct AdamW {
    config: AdamConfig,
    groups: Vec<ParamGroup>,
    states: Vec<Vec<ParamState>>,
    frozen: Vec<bool>,
}

impl AdamW {
    /// Creates the optimizer; parameter names must be unique across all groups.
    pub fn new(groups: Vec<ParamGroup>, config: AdamConfig) -> Result<Self> {
        let mut seen = HashSet::new();
        for group in &groups {
            for param in &group.params {
                if !seen.insert(param.name.clone()) {
                    return Err(TrainError::Invalid(format!(
                        "parameter name `{}` appears twice; checkpoints key parameters by name, so names must be unique",
                        param.name
                    )));
                }
            }
        }
        let states = groups
            .iter()
            .map(|g| vec![ParamState::default(); g.params.len()])
            .collect();
        let frozen = vec![false; groups.len()];
        Ok(Self {
            config,
            groups,
            states,
            frozen,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.config
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Freezes the first `count` groups and unfreezes the rest.
    pub fn set_frozen_count(&mut self, count: usize) {
        self.frozen = frozen_mask(count, self.groups.len());
    }

    /// For each group, whether it is frozen.
    pub fn frozen(&self) -> &[bool] {
        &self.frozen
    }

    /// Returns whether parameter `param` of group `group` receives updates.
    pub fn is_trainable(&self, group: usize, param: usize) -> bool {
        !self.frozen[group] || self.groups[group].params[param].train_frozen
    }

    /// Collects the gradients of the trainable parameters from a backward pass,
    /// detached from the graph.
    ///
    /// Candle's gradient of a variable is computed from the forward activations and
    /// still refers to them. Without the detach, the moving averages built from it in
    /// [`Self::step`] would keep every step's activations alive for the whole run.
    pub fn collect_grads(&self, store: &GradStore) -> Grads {
        self.groups
            .iter()
            .enumerate()
            .map(|(gi, group)| {
                group
                    .params
                    .iter()
                    .enumerate()
                    .map(|(pi, p)| {
                        if self.is_trainable(gi, pi) {
                            store.get(p.var.as_tensor()).map(Tensor::detach)
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Applies one AdamW step with learning rate `lrs[group]` and momentum `mom`.
    pub fn step(&mut self, grads: &Grads, lrs: &[f64], mom: f64) -> Result<()> {
        if lrs.len() != self.groups.len() || grads.len() != self.groups.len() {
            return Err(TrainError::Invalid(format!(
                "AdamW::step got {} learning rates and {} gradient groups for {} parameter groups",
                lrs.len(),
                grads.len(),
                self.groups.len()
            )));
        }
        let AdamConfig {
            sqr_mom, eps, wd, ..
        } = self.config;
        for (gi, group) in self.groups.iter().enumerate() {
            let lr = lrs[gi];
            for (pi, param) in group.params.iter().enumerate() {
                let trainable = !self.frozen[gi] || param.train_frozen;
                let Some(grad) = grads[gi].get(pi).and_then(Option::as_ref) else {
                    continue;
                };
                if !trainable {
                    continue;
                }
                let state = &mut self.states[gi][pi];
                let dtype = param.var.dtype();
                let grad = grad.to_dtype(dtype)?;
                let mut p = param.var.as_tensor().detach();
                if param.decay && wd != 0.0 {
                    p = p.affine(1.0 - lr * wd, 0.0)?;
                }
                let grad_avg = match &state.grad_avg {
                    Some(avg) => (avg.affine(mom, 0.0)? + grad.affine(1.0 - mom, 0.0)?)?,
                    None => grad.affine(1.0 - mom, 0.0)?,
                };
                let sqr = grad.sqr()?.affine(1.0 - sqr_mom, 0.0)?;
                let sqr_avg = match &state.sqr_avg {
                    Some(avg) => (avg.affine(sqr_mom, 0.0)? + sqr)?,
                    None => sqr,
                };
                state.step += 1;
                let debias1 = debias(mom, 1.0 - mom, state.step);
                let debias2 = debias(sqr_mom, 1.0 - sqr_mom, state.step);
                let denom = (sqr_avg.affine(1.0 / debias2, 0.0)?.sqrt()? + eps)?;
                let update = grad_avg.div(&denom)?.affine(-lr / debias1, 0.0)?;
                param.var.set(&(p + update)?)?;
                state.grad_avg = Some(grad_avg);
                state.sqr_avg = Some(sqr_avg);
            }
        }
        Ok(())
    }

    /// Returns the moments keyed `{name}.grad_avg` / `{name}.sqr_avg` and the step
    /// count of each parameter that has taken a step.
    pub fn state_tensors(&self) -> (HashMap<String, Tensor>, BTreeMap<String, u64>) {
        let mut tensors = HashMap::new();
        let mut steps = BTreeMap::new();
        for (group, states) in self.groups.iter().zip(&self.states) {
            for (param, state) in group.params.iter().zip(states) {
                if let (Some(avg), Some(sqr)) = (&state.grad_avg, &state.sqr_avg) {
                    tensors.insert(format!("{}.grad_avg", param.name), avg.clone());
                    tensors.insert(format!("{}.sqr_avg", param.name), sqr.clone());
                    steps.insert(param.name.clone(), state.step);
                }
            }
        }
        (tensors, steps)
    }

    /// Restores the state written by [`AdamW::state_tensors`]; moments move to each
    /// parameter's device and dtype.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
    ) -> Result<()> {
        for (group, states) in self.groups.iter().zip(self.states.iter_mut()) {
            for (param, state) in group.params.iter().zip(states.iter_mut()) {
                *state = ParamState::default();
                let Some(&step) = steps.get(&param.name) else {
                    continue;
                };
                let fetch = |suffix: &str| -> Result<Tensor> {
                    let key = format!("{}.{suffix}", param.name);
                    let t = tensors.get(&key).ok_or_else(|| {
                        TrainError::Invalid(format!(
                            "optimizer state has a step count for `{}` but no tensor `{key}`",
                            param.name
                        ))
                    })?;
                    if t.dims() != param.var.dims() {
                        return Err(TrainError::Invalid(format!(
                            "optimizer tensor `{key}` has shape {:?} but the parameter has {:?}",
                            t.dims(),
                            param.var.dims()
                        )));
                    }
                    Ok(t.to_device(param.var.device())?
                        .to_dtype(param.var.dtype())?)
                };
                state.grad_avg = Some(fetch("grad_avg")?);
                state.sqr_avg = Some(fetch("sqr_avg")?);
                state.step = step;
            }
        }
        Ok(())
    }
}

/// Returns the global L2 norm of all gradients (as `torch.nn.utils.clip_grad_norm_`).
pub fn global_norm(grads: &Grads) -> Result<f64> {
    let mut total = 0f64;
    for grad in grads.iter().flatten().flatten() {
        let sum = grad
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        total += f64::from(sum);
    }
    Ok(total.sqrt())
}

/// Multiplies every gradient by `factor`.
pub fn scale_grads(grads: &mut Grads, factor: f64) -> Result<()> {
    for grad in grads.iter_mut().flatten().flatten() {
        *grad = grad.affine(factor, 0.0)?;
    }
    Ok(())
}

/// Scales gradients so their global norm is at most `max_norm`, with PyTorch's
/// factor `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads(grads, coef)?;
    }
    Ok(norm)
}

/// Adds `new` into `sum` element-wise; a missing gradient on either side counts as zero.
pub fn accumulate_grads(sum: &mut Grads, new: Grads) -> Result<()> {
    if sum.is_empty() {
        *sum = new;
        return Ok(());
    }
    for (sum_group, new_group) in sum.iter_mut().zip(new) {
        for (slot, grad) in sum_group.iter_mut().zip(new_group) {
            *slot = match (slot.take(), grad) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::groups::Param;
    use candle_core::{Device, Var};

    fn var(values: &[f32]) -> Var {
        Var::from_slice(values, values.len(), &Device::Cpu).unwrap()
    }

    fn grad(values: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_slice(values, values.len(), &Device::Cpu).unwrap())
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn assert_close(actual: &[f32], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (f64::from(*a) - e).abs() <= 2e-6,
                "{actual:?} vs {expected:?}"
            );
        }
    }

    const STEP_GRADS: [([f32; 3], [f32; 2]); 3] = [
        ([0.5, -1.0, 2.0], [0.1, 0.2]),
        ([-0.3, 0.4, 1.0], [0.0, -0.5]),
        ([0.2, 0.2, -0.1], [0.3, 0.3]),
    ];

    /// Runs three steps at lr 0.1 on two groups and returns both parameters per step.
    fn run(wd: f64, frozen: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let a = var(&[1.0, -2.0, 0.5]);
        let b = var(&[0.3, 0.7]);
        let groups = vec![
            ParamGroup::new("body", vec![Param::new("a", a.clone())]),
            ParamGroup::new("head", vec![Param::new("b", b.clone())]),
        ];
        let config = AdamConfig {
            wd,
            ..AdamConfig::default()
        };
        let mut opt = AdamW::new(groups, config).unwrap();
        opt.set_frozen_count(frozen);
        let mut out = Vec::new();
        for (ga, gb) in STEP_GRADS {
            let grads = vec![vec![grad(&ga)], vec![grad(&gb)]];
            opt.step(&grads, &[0.1, 0.1], 0.9).unwrap();
            out.push((values(&a), values(&b)));
        }
        out
    }

    #[test]
    fn collected_grads_drop_the_graph() {
        // `w * x` with `x` computed from another variable: the gradient of `w` is built
        // from `x`, so before the detach it referred to `x` and its graph.
        let w = var(&[1.0, 2.0]);
        let source = var(&[3.0, 4.0]);
        let x = source.as_tensor().exp().unwrap();
        let loss = (w.as_tensor() * &x).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        assert!(store.get(w.as_tensor()).unwrap().track_op());

        let groups = vec![ParamGroup::new("all", vec![Param::new("w", w.clone())])];
        let mut opt = AdamW::new(groups, AdamConfig::default()).unwrap();
        let grads = opt.collect_grads(&store);
        let collected = grads[0][0].as_ref().unwrap();
        assert!(!collected.track_op());

        opt.step(&grads, &[0.1], 0.9).unwrap();
        let (moments, _) = opt.state_tensors();
        assert!(!moments["w.grad_avg"].track_op());
        assert!(!moments["w.sqr_avg"].track_op());
    }

    // Expected values: fastai 2.8.12 `Adam(params, lr=0.1, wd=...)` with the same
    // gradients set by hand before each `opt.step()`.
    #[test]
    fn adam_without_weight_decay_matches_fastai() {
        let steps = run(0.0, 0);
        assert_close(&steps[0].0, &[0.900_002, -1.900_001, 0.400_000_5]);
        assert_close(&steps[0].1, &[0.200_010, 0.600_005]);
        assert_close(&steps[1].0, &[0.880_832_3, -1.865_384_1, 0.306_656_3]);
        assert_close(&steps[1].1, &[0.132_861_5, 0.644_153_1]);
        assert_close(&steps[2].0, &[0.846_003_3, -1.850_739_2, 0.237_277_3]);
        assert_close(&steps[2].1, &[0.056_169_5, 0.642_909_8]);
    }

    #[test]
    fn adamw_with_weight_decay_matches_fastai() {
        let steps = run(0.01, 0);
        assert_close(&steps[0].0, &[0.899_002, -1.898_001, 0.399_500_5]);
        assert_close(&steps[0].1, &[0.199_710_0, 0.599_305_0]);
        assert_close(&steps[1].0, &[0.878_933_3, -1.861_486_2, 0.305_756_8]);
        assert_close(&steps[1].1, &[0.132_361_8, 0.642_853_8]);
        assert_close(&steps[2].0, &[0.843_225_4, -1.844_979_9, 0.236_072_0]);
        assert_close(&steps[2].1, &[0.055_537_4, 0.640_967_6]);
    }

    #[test]
    fn frozen_group_is_not_updated() {
        let steps = run(0.01, 1);
        for (a, _) in &steps {
            assert_eq!(a, &vec![1.0, -2.0, 0.5]);
        }
        assert_close(&steps[2].1, &[0.055_537_4, 0.640_967_6]);
    }

    #[test]
    fn unfreeze_keeps_moments() {
        let a = var(&[1.0, -2.0, 0.5]);
        let groups = vec![ParamGroup::new("g", vec![Param::new("a", a.clone())])];
        let mut opt = AdamW::new(groups, AdamConfig::default()).unwrap();
        opt.step(&vec![vec![grad(&[0.5, -1.0, 2.0])]], &[0.1], 0.9)
            .unwrap();
        opt.set_frozen_count(1);
        opt.step(&vec![vec![grad(&[9.0, 9.0, 9.0])]], &[0.1], 0.9)
            .unwrap();
        let (_, steps) = opt.state_tensors();
        assert_eq!(steps["a"], 1);
        opt.set_frozen_count(0);
        opt.step(&vec![vec![grad(&[-0.3, 0.4, 1.0])]], &[0.1], 0.9)
            .unwrap();
        let (_, steps) = opt.state_tensors();
        assert_eq!(steps["a"], 2);
    }

    #[test]
    fn train_frozen_param_updates_in_frozen_group() {
        let w = var(&[1.0]);
        let mut bn = Param::no_decay("bn.weight", w.clone());
        bn.train_frozen = true;
        let mut opt =
            AdamW::new(vec![ParamGroup::new("g", vec![bn])], AdamConfig::default()).unwrap();
        opt.set_frozen_count(1);
        assert!(opt.is_trainable(0, 0));
        opt.step(&vec![vec![grad(&[1.0])]], &[0.1], 0.9).unwrap();
        assert_close(&values(&w), &[0.900_001]);
    }

    #[test]
    fn clip_scales_to_max_norm() {
        let mut grads = vec![vec![grad(&[3.0]), grad(&[4.0])]];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert_eq!(norm, 5.0);
        let clipped = global_norm(&grads).unwrap();
        assert!((clipped - 1.0).abs() < 1e-6, "{clipped}");
    }

    #[test]
    fn clip_leaves_small_gradients() {
        let mut grads = vec![vec![grad(&[0.3]), grad(&[0.4])]];
        clip_grad_norm(&mut grads, 1.0).unwrap();
        let first = grads[0][0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(first, vec![0.3]);
    }

    #[test]
    fn duplicate_names_rejected() {
        let groups = vec![ParamGroup::new(
            "g",
            vec![Param::new("w", var(&[1.0])), Param::new("w", var(&[2.0]))],
        )];
        assert!(AdamW::new(groups, AdamConfig::default()).is_err());
    }
}
