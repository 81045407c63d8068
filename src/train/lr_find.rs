//! Learning-rate finder core, as fastai 2.x `lr_find`: an exponential sweep of the
//! learning rate, a smoothed loss, a stop on divergence, the `valley` suggestion and an
//! SVG plot. [`super::Trainer::lr_find`] runs the sweep on a task.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Result, TrainError};

/// Sweep settings; defaults are fastai's (`1e-7` to `10` over 100 steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrFinder {
    /// Learning rate of the first step.
    pub start_lr: f64,
    /// Learning rate the sweep reaches after `num_it` steps.
    pub end_lr: f64,
    /// Number of steps (at least 6, as fastai).
    pub num_it: usize,
    /// Stop once the smoothed loss exceeds 4 times its minimum.
    pub stop_div: bool,
}

impl Default for LrFinder {
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 10.0,
            num_it: 100,
            stop_div: true,
        }
    }
}

impl LrFinder {
    /// Number of steps after applying fastai's minimum of 6.
    pub fn steps(&self) -> usize {
        self.num_it.max(6)
    }

    /// Learning rate at step `i`: `start * (end / start)^(i / num_it)` (fastai `SchedExp`).
    pub fn lr_at(&self, i: usize) -> f64 {
        let pos = i as f64 / self.steps() as f64;
        self.start_lr * (self.end_lr / self.start_lr).powf(pos)
    }
}

/// Exponential moving average of the loss with debiasing, as fastai's `AvgSmoothLoss`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmoothLoss {
    beta: f64,
    count: u32,
    value: f64,
}

impl SmoothLoss {
    /// Creates an average with weight `beta` on the past (fastai uses 0.98).
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            count: 0,
            value: 0.0,
        }
    }

    /// Adds a loss and returns the debiased average `value / (1 - beta^count)`.
    pub fn update(&mut self, loss: f64) -> f64 {
        self.count += 1;
        self.value = self.beta * self.value + (1.0 - self.beta) * loss;
        self.value()
    }

    /// Returns the debiased average (0 before the first loss).
    pub fn value(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.value / (1.0 - self.beta.powi(self.count as i32))
        }
    }
}

/// Recorded sweep: the learning rate and the smoothed loss of each step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LrFindResult {
    /// Learning rate of each step.
    pub lrs: Vec<f64>,
    /// Smoothed loss after each step.
    pub losses: Vec<f64>,
    /// Requested number of steps, which sets the trimmed head (`num_it / 10` points).
    pub num_it: usize,
}

impl LrFindResult {
    /// Returns the points fastai feeds to its suggestions: the first `num_it / 10` and
    /// the last 5 points dropped, and everything from the first NaN loss on.
    pub fn trimmed(&self) -> (&[f64], &[f64]) {
        let start = self.num_it / 10;
        let end = self.losses.len().saturating_sub(5);
        if start >= end {
            return (&[], &[]);
        }
        let losses = &self.losses[start..end];
        let keep = losses
            .iter()
            .position(|l| l.is_nan())
            .unwrap_or(losses.len());
        (&self.lrs[start..start + keep], &losses[..keep])
    }

    /// Suggests a learning rate with fastai's `valley` rule: take the longest run of
    /// decreasing losses and return the rate about two-thirds of the way down it.
    /// Returns `None` when fewer than one point remains after trimming.
    pub fn valley(&self) -> Option<f64> {
        let (lrs, losses) = self.trimmed();
        valley_index(losses).map(|i| lrs[i])
    }

    /// Writes the smoothed loss against the learning rate (log scale) as an SVG file,
    /// marking the `valley` suggestion when there is one.
    pub fn plot_svg(&self, path: &Path) -> Result<()> {
        self.plot_with(path, SVGBackend::new(path, (800, 500)).into_drawing_area())
    }

    /// Writes the plot of [`Self::plot_svg`] as a PNG image. Text needs a TrueType font:
    /// `$ULMFIT_PLOT_FONT`, or DejaVu Sans or Liberation Sans where Linux distributions
    /// install them. Without one this fails and suggests an SVG file instead.
    pub fn plot_png(&self, path: &Path) -> Result<()> {
        register_plot_font()?;
        self.plot_with(
            path,
            BitMapBackend::new(path, (800, 500)).into_drawing_area(),
        )
    }

    /// Writes the plot as SVG or PNG, chosen by the file extension.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match extension.as_deref() {
            Some("svg") => self.plot_svg(path),
            Some("png") => self.plot_png(path),
            _ => Err(TrainError::Invalid(format!(
                "unsupported plot file {}: use a .svg or .png file name",
                path.display()
            ))),
        }
    }

    fn plot_with<DB: DrawingBackend>(
        &self,
        path: &Path,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<()> {
        let plot_err = |e: &dyn std::fmt::Display| {
            TrainError::Invalid(format!(
                "failed to write the learning-rate plot {}: {e}",
                path.display()
            ))
        };
        let end = self
            .losses
            .len()
            .saturating_sub(5)
            .max(1)
            .min(self.losses.len());
        let points: Vec<(f64, f64)> = self.lrs[..end]
            .iter()
            .copied()
            .zip(self.losses[..end].iter().copied())
            .filter(|(lr, loss)| lr.is_finite() && *lr > 0.0 && loss.is_finite())
            .collect();
        if points.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no finite losses to plot in {}",
                path.display()
            )));
        }
        let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in &points {
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        if x_max <= x_min {
            x_max = x_min * 10.0;
        }
        let pad = ((y_max - y_min) * 0.05).max(1e-6);
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min..x_max).log_scale(), (y_min - pad)..(y_max + pad))
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("Learning rate")
            .y_desc("Loss")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .draw()
            .map_err(|e| plot_err(&e))?;
        chart
            .draw_series(LineSeries::new(points, &BLUE))
            .map_err(|e| plot_err(&e))?;
        let (lrs, losses) = self.trimmed();
        if let Some(i) = valley_index(losses) {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (lrs[i], losses[i]),
                    5,
                    RED.filled(),
                )))
                .map_err(|e| plot_err(&e))?;
        }
        root.present().map_err(|e| plot_err(&e))?;
        Ok(())
    }
}

/// Registers a TrueType font for bitmap plots once per process.
fn register_plot_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    let outcome = REGISTERED.get_or_init(|| {
        let mut candidates: Vec<std::path::PathBuf> = Vec::new();
        if let Some(path) = std::env::var_os("ULMFIT_PLOT_FONT") {
            candidates.push(path.into());
        }
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            ]
            .map(std::path::PathBuf::from),
        );
        for path in &candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // The font lives as long as the process, as plotters requires.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
        Err(
            "PNG plots need a TrueType font: set ULMFIT_PLOT_FONT to a .ttf file, \
             or write an .svg plot instead"
                .to_string(),
        )
    });
    outcome.clone().map_err(TrainError::Invalid)
}

/// Returns fastai's `valley` index: the end of the longest decreasing subsequence of
/// `losses` marks the valley, and the suggestion sits `sections + sections / 2` points
/// after the point before its start, where `sections = length / 3`.
pub fn valley_index(losses: &[f64]) -> Option<usize> {
    let n = losses.len();
    if n == 0 {
        return None;
    }
    let mut lds = vec![1usize; n];
    // `max_start` is one before the valley's first point and can be -1, as in fastai.
    let (mut max_start, mut max_end) = (0isize, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    let index = max_start + sections as isize + (sections / 2.0) as isize;
    // A negative index counts from the end, as Python indexing does in fastai.
    Some(index.rem_euclid(n as isize) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_is_exponential() {
        let finder = LrFinder {
            start_lr: 1e-4,
            end_lr: 1.0,
            num_it: 8,
            stop_div: true,
        };
        assert_eq!(finder.lr_at(0), 1e-4);
        assert!((finder.lr_at(4) - 1e-2).abs() < 1e-15);
        assert!((finder.lr_at(8) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn num_it_has_minimum_six() {
        let finder = LrFinder {
            num_it: 2,
            ..LrFinder::default()
        };
        assert_eq!(finder.steps(), 6);
    }

    #[test]
    fn smooth_loss_is_debiased() {
        let mut avg = SmoothLoss::new(0.98);
        // First value: 0.02 * 5 / (1 - 0.98) = 5.
        assert!((avg.update(5.0) - 5.0).abs() < 1e-12);
        // Second: (0.98 * 0.1 + 0.02 * 3) / (1 - 0.98^2) = 0.158 / 0.0396.
        assert!((avg.update(3.0) - 0.158 / 0.0396).abs() < 1e-12);
    }

    // Same losses as the fastai 2.8.12 check `valley(lrs, losses, 10)`, which returns
    // index 2 (lr 2.5119e-05).
    #[test]
    fn valley_matches_fastai() {
        let losses = [5.0, 4.9, 4.7, 4.2, 3.5, 3.0, 2.8, 2.9, 3.5, 6.0];
        assert_eq!(valley_index(&losses), Some(2));
    }

    #[test]
    fn trimmed_drops_head_tail_and_nan() {
        let result = LrFindResult {
            lrs: (0..30).map(f64::from).collect(),
            losses: (0..30)
                .map(|i| if i == 20 { f64::NAN } else { f64::from(i) })
                .collect(),
            num_it: 30,
        };
        let (lrs, losses) = result.trimmed();
        assert_eq!(lrs.first(), Some(&3.0));
        assert_eq!(losses.len(), 17);
    }

    #[test]
    fn plot_writes_png() {
        let result = LrFindResult {
            lrs: (0..40).map(|i| 1e-5 * 1.3f64.powi(i)).collect(),
            losses: (0..40)
                .map(|i| 5.0 - 0.1 * f64::from(i).min(25.0))
                .collect(),
            num_it: 40,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lr.png");
        match result.plot(&path) {
            Ok(()) => {
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            }
            // Machines without any TrueType font get the documented error instead.
            Err(error) => assert!(error.to_string().contains("ULMFIT_PLOT_FONT"), "{error}"),
        }
    }

    #[test]
    fn plot_rejects_other_extensions() {
        let result = LrFindResult {
            lrs: vec![1e-3, 1e-2],
            losses: vec![1.0, 0.5],
            num_it: 2,
        };
        let error = result.plot(Path::new("lr.jpg")).unwrap_err().to_string();
        assert!(error.contains("lr.jpg"), "{error}");
    }

    #[test]
    fn plot_writes_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lr.svg");
        let result = LrFindResult {
            lrs: (0..20).map(|i| 1e-5 * 2f64.powi(i)).collect(),
            losses: (0..20).map(|i| 3.0 - 0.1 * f64::from(i)).collect(),
            num_it: 20,
        };
        result.plot_svg(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        assert!(text.contains("<circle"));
    }
}
