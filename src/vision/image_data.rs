//! Image decoding and resizing into model inputs.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{ImageDecoder, RgbImage};

use super::{Result, VisionError};

/// Decodes an image file (BMP, JPEG, PNG, GIF or WebP, detected from its content) as
/// 8-bit RGB. The EXIF orientation of a JPEG, PNG or WebP is applied, 16-bit channels
/// are scaled to 8 bits, greyscale is replicated to three channels, CMYK JPEGs are
/// converted by the decoder, and transparent pixels are composited over white.
pub fn read_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let image_error = |source: image::ImageError| match source {
        image::ImageError::IoError(source) => VisionError::Io {
            path: path.to_path_buf(),
            source,
        },
        source => VisionError::Image {
            path: path.to_path_buf(),
            source,
        },
    };
    let reader = image::ImageReader::open(path)
        .map_err(|source| VisionError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| VisionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    // A broken EXIF block should not make the pixels unusable.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = image::DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(VisionError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    Ok(flatten_alpha(&image))
}

/// Converts to 8-bit RGB, compositing any alpha channel over a white background.
/// `to_rgba8` scales 16-bit and float channels to 8 bits (65535 becomes 255).
pub fn flatten_alpha(image: &image::DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (source, target) in rgba.pixels().zip(out.pixels_mut()) {
        let alpha = u32::from(source[3]);
        for c in 0..3 {
            let value = u32::from(source[c]) * alpha + 255 * (255 - alpha);
            target[c] = ((value + 127) / 255) as u8;
        }
    }
    out
}

/// Resizes with TensorFlow's `ResizeBilinear` (`align_corners = false`,
/// `half_pixel_centers = false`, the TensorFlow Lite `label_image` example's resize):
/// output pixel `y` samples source row `y * in_height / out_height`, interpolated
/// between the two nearest rows and columns in f32, then truncated to u8 as `label_image`
/// does for uint8 models.
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    let scale_y = in_height as f32 / height as f32;
    let scale_x = in_width as f32 / width as f32;
    let source = image.as_raw();
    let row_len = in_width as usize * 3;
    let mut out = RgbImage::new(width, height);
    for y in 0..height {
        let source_y = y as f32 * scale_y;
        let y0 = source_y.floor() as usize;
        let y1 = (y0 + 1).min(in_height as usize - 1);
        let dy = source_y - y0 as f32;
        for x in 0..width {
            let source_x = x as f32 * scale_x;
            let x0 = source_x.floor() as usize;
            let x1 = (x0 + 1).min(in_width as usize - 1);
            let dx = source_x - x0 as f32;
            let pixel = out.get_pixel_mut(x, y);
            for c in 0..3 {
                let at = |row: usize, col: usize| f32::from(source[row * row_len + col * 3 + c]);
                let top = at(y0, x0) * ((1.0 - dy) * (1.0 - dx)) + at(y0, x1) * ((1.0 - dy) * dx);
                let bottom = at(y1, x0) * (dy * (1.0 - dx)) + at(y1, x1) * (dy * dx);
                pixel[c] = (top + bottom) as u8;
            }
        }
    }
    out
}

/// Converts an RGB image to a `[3, height, width]` f32 tensor of pixel values in 0..=255.
pub fn to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (width, height) = image.dimensions();
    let values: Vec<f32> = image.as_raw().iter().map(|&v| f32::from(v)).collect();
    let hwc = Tensor::from_vec(values, (height as usize, width as usize, 3), device)?;
    Ok(hwc.permute((2, 0, 1))?.contiguous()?)
}

/// Loads an image, resizes the whole image (no crop) to `size` x `size` with
/// [`resize_bilinear`] and returns it as a `[3, size, size]` f32 tensor of pixel values
/// in 0..=255 on the CPU.
pub fn load_image(path: impl AsRef<Path>, size: usize) -> Result<Tensor> {
    let path = path.as_ref();
    let image = read_rgb(path)?;
    let side = u32::try_from(size)
        .ok()
        .filter(|&side| side > 0)
        .ok_or_else(|| {
            VisionError::Unsupported(format!("image size {size} must be in 1..=u32::MAX"))
        })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(VisionError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    to_tensor(&resize_bilinear(&image, side, side), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_samples_top_left_aligned_grid() {
        // 4x1 gray ramp 0, 40, 80, 120 resized to 3x1: source x = 0, 4/3, 8/3.
        let mut image = RgbImage::new(4, 1);
        for (x, value) in [0u8, 40, 80, 120].into_iter().enumerate() {
            image.put_pixel(x as u32, 0, image::Rgb([value; 3]));
        }
        let out = resize_bilinear(&image, 3, 1);
        // 40 * 4/3 = 53.33 and 40 * 8/3 = 106.67, truncated.
        assert_eq!(out.get_pixel(0, 0)[0], 0);
        assert_eq!(out.get_pixel(1, 0)[0], 53);
        assert_eq!(out.get_pixel(2, 0)[0], 106);
    }

    #[test]
    fn tensor_is_channel_first() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(1, 0, image::Rgb([10, 20, 30]));
        let tensor = to_tensor(&image, &Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), &[3, 1, 2]);
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![0.0, 10.0, 0.0, 20.0, 0.0, 30.0]);
    }
}
