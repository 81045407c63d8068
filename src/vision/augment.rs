//! Training augmentation and validation cropping, as one affine resampling per image.
//!
//! Defaults follow fastai 2.x: `RandomResizedCrop` (area share 0.35 to 1, aspect ratio
//! 3/4 to 4/3) and `aug_transforms` (horizontal flip with probability 0.5, rotation up
//! to 10 degrees and lighting changes of up to 0.2, each with probability 0.75, reflection
//! padding). Validation images are resized so their shorter side is `size`, then
//! centre-cropped. Outputs are `[3, size, size]` pixel values in 0..=255; each backbone
//! applies its own input normalisation.

use image::RgbImage;

use crate::rng::Rng;

/// Settings of the training augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Smallest share of the image area a random crop covers.
    pub min_scale: f64,
    /// Aspect-ratio range of random crops.
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Largest rotation in degrees.
    pub max_rotate: f64,
    /// Probability of rotating.
    pub p_rotate: f64,
    /// Largest brightness and contrast change (fastai's `max_lighting`).
    pub max_lighting: f64,
    /// Probability of each lighting change.
    pub p_lighting: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_scale: 0.35,
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: 0.5,
            max_rotate: 10.0,
            p_rotate: 0.75,
            max_lighting: 0.2,
            p_lighting: 0.75,
        }
    }
}

/// Where the output square is sampled from: a source rectangle, a flip and a rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// Centre of the crop in source pixels.
    pub center: (f64, f64),
    /// Width and height of the crop in source pixels.
    pub extent: (f64, f64),
    /// Mirror left and right.
    pub flip: bool,
    /// Rotation in radians.
    pub angle: f64,
}

impl Crop {
    /// The centre square of side `min(width, height)`, as fastai's validation crop.
    pub fn center(width: u32, height: u32) -> Self {
        let side = f64::from(width.min(height));
        Self {
            center: (f64::from(width) / 2.0, f64::from(height) / 2.0),
            extent: (side, side),
            flip: false,
            angle: 0.0,
        }
    }

    /// Draws a random crop as fastai's `RandomResizedCrop` does, falling back to the
    /// centre square after 10 draws that do not fit.
    pub fn random(width: u32, height: u32, augment: &Augment, rng: &mut Rng) -> Self {
        let (w, h) = (f64::from(width), f64::from(height));
        let area = w * h;
        let mut crop = Self::center(width, height);
        for _ in 0..10 {
            let scale = augment.min_scale + (1.0 - augment.min_scale) * rng.next_f64();
            let (low, high) = (augment.ratio.0.ln(), augment.ratio.1.ln());
            let ratio = (low + (high - low) * rng.next_f64()).exp();
            let crop_w = (area * scale * ratio).sqrt();
            let crop_h = (area * scale / ratio).sqrt();
            if crop_w <= w && crop_h <= h {
                let left = (w - crop_w) * rng.next_f64();
                let top = (h - crop_h) * rng.next_f64();
                crop.center = (left + crop_w / 2.0, top + crop_h / 2.0);
                crop.extent = (crop_w, crop_h);
                break;
            }
        }
        crop.flip = rng.next_f64() < augment.flip;
        if rng.next_f64() < augment.p_rotate {
            let degrees = augment.max_rotate * (2.0 * rng.next_f64() - 1.0);
            crop.angle = degrees.to_radians();
        }
        crop
    }
}

/// Brightness and contrast changes applied in logit space, as fastai's `Brightness`
/// and `Contrast`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lighting {
    /// Added to each value's logit: `logit(brightness)` for a brightness in (0, 1).
    pub shift: f64,
    /// Multiplies each value's logit.
    pub contrast: f64,
}

impl Lighting {
    /// No change.
    pub const NONE: Self = Self {
        shift: 0.0,
        contrast: 1.0,
    };

    /// Draws a random change: brightness uniform in `0.5 ± max_lighting / 2` and
    /// contrast log-uniform in `[1 - max_lighting, 1 / (1 - max_lighting)]`, each with
    /// probability `p_lighting`.
    pub fn random(augment: &Augment, rng: &mut Rng) -> Self {
        let mut lighting = Self::NONE;
        let max = augment.max_lighting.clamp(0.0, 0.99);
        if rng.next_f64() < augment.p_lighting {
            let brightness = 0.5 * (1.0 - max) + max * rng.next_f64();
            lighting.shift = (brightness / (1.0 - brightness)).ln();
        }
        if rng.next_f64() < augment.p_lighting {
            let (low, high) = ((1.0 - max).ln(), -(1.0 - max).ln());
            lighting.contrast = (low + (high - low) * rng.next_f64()).exp();
        }
        lighting
    }

    fn apply(&self, value: f32) -> f32 {
        if *self == Self::NONE {
            return value;
        }
        let x = (f64::from(value) / 255.0).clamp(1e-4, 1.0 - 1e-4);
        let logit = (x / (1.0 - x)).ln() * self.contrast + self.shift;
        (255.0 / (1.0 + (-logit).exp())) as f32
    }
}

/// Reflects a coordinate into `[0, len - 1]`.
fn reflect(x: f64, len: usize) -> f64 {
    let max = (len - 1) as f64;
    if max <= 0.0 {
        return 0.0;
    }
    let period = 2.0 * max;
    let mut y = x.rem_euclid(period);
    if y > max {
        y = period - y;
    }
    y
}

/// Samples `crop` of `image` into a `size` x `size` square with bilinear interpolation
/// and reflection padding, then applies `lighting`. Returns `[3, size, size]` values
/// (channel-first) in 0..=255.
pub fn render(image: &RgbImage, crop: &Crop, lighting: &Lighting, size: usize) -> Vec<f32> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let mut out = vec![0f32; 3 * size * size];
    let (sin, cos) = crop.angle.sin_cos();
    let scale_x = crop.extent.0 / size as f64;
    let scale_y = crop.extent.1 / size as f64;
    let plane = size * size;
    for v in 0..size {
        for u in 0..size {
            // Output pixel centre relative to the square's centre, in source units.
            let mut dx = (u as f64 + 0.5 - size as f64 / 2.0) * scale_x;
            let dy = (v as f64 + 0.5 - size as f64 / 2.0) * scale_y;
            if crop.flip {
                dx = -dx;
            }
            let sx = crop.center.0 + cos * dx - sin * dy - 0.5;
            let sy = crop.center.1 + sin * dx + cos * dy - 0.5;
            let sx = reflect(sx, width);
            let sy = reflect(sy, height);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for c in 0..3 {
                let at = |x: usize, y: usize| f32::from(raw[(y * width + x) * 3 + c]);
                let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                let value = top * (1.0 - fy) + bottom * fy;
                out[c * plane + v * size + u] = lighting.apply(value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn center_crop_of_wide_image() {
        // 8x4 image: the centre 4x4 square starts at column 2.
        let out = render(&ramp(8, 4), &Crop::center(8, 4), &Lighting::NONE, 4);
        let red_row0: Vec<f32> = out[0..4].to_vec();
        assert_eq!(red_row0, vec![2.0, 3.0, 4.0, 5.0]);
        let green_col0: Vec<f32> = (0..4).map(|v| out[16 + v * 4]).collect();
        assert_eq!(green_col0, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(out[32], 7.0);
    }

    #[test]
    fn flip_mirrors_columns() {
        let mut crop = Crop::center(4, 4);
        crop.flip = true;
        let out = render(&ramp(4, 4), &crop, &Lighting::NONE, 4);
        assert_eq!(out[0..4].to_vec(), vec![3.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn quarter_turn_maps_rows_to_columns() {
        let mut crop = Crop::center(4, 4);
        crop.angle = std::f64::consts::FRAC_PI_2;
        let out = render(&ramp(4, 4), &crop, &Lighting::NONE, 4);
        // Rotating the sampling grid by 90 degrees makes red (x) vary down the rows.
        let red_col0: Vec<f32> = (0..4).map(|v| out[v * 4].round()).collect();
        assert_eq!(red_col0, vec![3.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn reflection_stays_inside() {
        assert_eq!(reflect(-1.0, 4), 1.0);
        assert_eq!(reflect(4.0, 4), 2.0);
        assert_eq!(reflect(2.5, 4), 2.5);
    }

    #[test]
    fn random_crop_fits_image() {
        let mut rng = Rng::seed(3);
        for _ in 0..100 {
            let crop = Crop::random(50, 30, &Augment::default(), &mut rng);
            assert!(crop.center.0 - crop.extent.0 / 2.0 >= -1e-9);
            assert!(crop.center.0 + crop.extent.0 / 2.0 <= 50.0 + 1e-9);
            assert!(crop.center.1 + crop.extent.1 / 2.0 <= 30.0 + 1e-9);
            assert!(crop.angle.abs() <= 10f64.to_radians() + 1e-12);
        }
    }

    #[test]
    fn lighting_none_is_identity_and_brightness_raises() {
        assert_eq!(Lighting::NONE.apply(100.0), 100.0);
        let brighter = Lighting {
            shift: (0.6f64 / 0.4).ln(),
            contrast: 1.0,
        };
        // logit(0.5) + logit(0.6) = logit(0.6), so mid-grey becomes 0.6 * 255.
        assert!((brighter.apply(127.5) - 153.0).abs() < 0.01);
    }
}
