//! Image decoding and image folders on inputs that often break other tools. Every file
//! is written by the test, with the `image` crate's encoders where they can write the
//! format and by hand (palette PNG, CMYK JPEG) where they cannot.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, ImageFormat, Rgb, RgbImage};
use ulmfit::vision::folder::{read_image_folder, FolderOptions};
use ulmfit::vision::image_data::read_rgb;
use ulmfit::vision::VisionError;

/// Writes a JPEG of `image` with a real EXIF APP1 segment carrying `orientation`.
fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
    // TIFF header (little endian), one IFD entry: tag 0x0112 Orientation, SHORT, 1 value.
    let mut exif = b"II*\0".to_vec();
    exif.extend_from_slice(&8u32.to_le_bytes());
    exif.extend_from_slice(&1u16.to_le_bytes());
    exif.extend_from_slice(&0x0112u16.to_le_bytes());
    exif.extend_from_slice(&3u16.to_le_bytes());
    exif.extend_from_slice(&1u32.to_le_bytes());
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0u32.to_le_bytes());
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
    encoder.set_exif_metadata(exif).unwrap();
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn solid(width: u32, height: u32, color: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(width, height, Rgb(color))
}

#[test]
fn exif_rotation_swaps_sides() {
    let dir = tempfile::tempdir().unwrap();
    // Orientation 6: the stored 4x2 pixels are shown rotated 90 degrees clockwise.
    let rotated = write(
        dir.path(),
        "rotated.jpg",
        &jpeg_with_orientation(&solid(4, 2, [200, 50, 50]), 6),
    );
    let image = read_rgb(&rotated).unwrap();
    assert_eq!(image.dimensions(), (2, 4));
    let upright = write(
        dir.path(),
        "upright.jpg",
        &jpeg_with_orientation(&solid(4, 2, [200, 50, 50]), 1),
    );
    assert_eq!(read_rgb(&upright).unwrap().dimensions(), (4, 2));
}

#[test]
fn exif_rotation_moves_pixels() {
    let dir = tempfile::tempdir().unwrap();
    // 16x8: left half black, right half white. Rotated clockwise, white is at the bottom.
    let image = RgbImage::from_fn(16, 8, |x, _| Rgb(if x < 8 { [0; 3] } else { [255; 3] }));
    let path = write(dir.path(), "a.jpg", &jpeg_with_orientation(&image, 6));
    let loaded = read_rgb(&path).unwrap();
    assert_eq!(loaded.dimensions(), (8, 16));
    assert!(
        loaded.get_pixel(4, 2)[0] < 40,
        "top is {:?}",
        loaded.get_pixel(4, 2)
    );
    assert!(
        loaded.get_pixel(4, 13)[0] > 215,
        "bottom is {:?}",
        loaded.get_pixel(4, 13)
    );
}

#[test]
fn greyscale_becomes_three_channels() {
    let dir = tempfile::tempdir().unwrap();
    let grey =
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([100])));
    let path = write(dir.path(), "grey.png", &encode(&grey, ImageFormat::Png));
    let image = read_rgb(&path).unwrap();
    assert_eq!(image.get_pixel(2, 1), &Rgb([100, 100, 100]));
}

#[test]
fn grey_alpha_is_composited_over_white() {
    let dir = tempfile::tempdir().unwrap();
    let mut grey = image::GrayAlphaImage::new(2, 1);
    grey.put_pixel(0, 0, image::LumaA([100, 0]));
    grey.put_pixel(1, 0, image::LumaA([100, 255]));
    let bytes = encode(&image::DynamicImage::ImageLumaA8(grey), ImageFormat::Png);
    let image = read_rgb(write(dir.path(), "la.png", &bytes)).unwrap();
    assert_eq!(image.get_pixel(0, 0), &Rgb([255, 255, 255]));
    assert_eq!(image.get_pixel(1, 0), &Rgb([100, 100, 100]));
}

#[test]
fn rgba_half_transparent_is_blended() {
    let dir = tempfile::tempdir().unwrap();
    let rgba = image::RgbaImage::from_pixel(1, 1, image::Rgba([200, 0, 0, 128]));
    let bytes = encode(&image::DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
    let image = read_rgb(write(dir.path(), "rgba.png", &bytes)).unwrap();
    // (200 * 128 + 255 * 127) / 255 = 227.4 and (255 * 127) / 255 = 127, rounded.
    assert_eq!(image.get_pixel(0, 0), &Rgb([227, 127, 127]));
}

#[test]
fn sixteen_bit_png_is_scaled_not_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let deep = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_pixel(2, 2, Rgb([65535, 32896, 257]));
    let bytes = encode(&image::DynamicImage::ImageRgb16(deep), ImageFormat::Png);
    let image = read_rgb(write(dir.path(), "deep.png", &bytes)).unwrap();
    // 65535 / 257 = 255, 32896 / 257 = 128 and 257 / 257 = 1; clipping would give 255s.
    assert_eq!(image.get_pixel(1, 1), &Rgb([255, 128, 1]));
}

/// Returns the CRC-32 of PNG chunks (polynomial 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A 2x1 palette PNG: entry 0 is opaque green, entry 1 is fully transparent red (tRNS).
fn palette_png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&2u32.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[8, 3, 0, 0, 0]); // 8-bit, palette, deflate, filter, no interlace
    png_chunk(&mut out, b"IHDR", &header);
    png_chunk(&mut out, b"PLTE", &[0, 200, 0, 255, 0, 0]);
    png_chunk(&mut out, b"tRNS", &[255, 0]);
    // One scanline: filter byte 0, then indices 0 and 1, as a stored (uncompressed)
    // deflate block inside a zlib stream.
    let raw = [0u8, 0, 1];
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn palette_transparency_is_composited() {
    let dir = tempfile::tempdir().unwrap();
    let image = read_rgb(write(dir.path(), "palette.png", &palette_png())).unwrap();
    assert_eq!(image.get_pixel(0, 0), &Rgb([0, 200, 0]));
    // The transparent red entry shows the white background, not red.
    assert_eq!(image.get_pixel(1, 0), &Rgb([255, 255, 255]));
}

/// Writes bits most significant first, stuffing a zero byte after each 0xFF.
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    count: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.current = (self.current << 1) | ((value >> i) & 1);
            self.count += 1;
            if self.count == 8 {
                self.push_byte();
            }
        }
    }

    fn push_byte(&mut self) {
        let byte = self.current as u8;
        self.bytes.push(byte);
        if byte == 0xFF {
            self.bytes.push(0);
        }
        self.current = 0;
        self.count = 0;
    }

    fn finish(mut self) -> Vec<u8> {
        while self.count != 0 {
            self.put(1, 1);
        }
        self.bytes
    }
}

fn jpeg_segment(out: &mut Vec<u8>, marker: u8, data: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// A baseline 8x8 JPEG with four components (CMYK, no Adobe marker), each a flat block
/// of the given value. Every component's block is DC-only: the DC difference
/// `(value - 128) * 8` is coded in category 10 (|difference| 512..=1023), so values
/// must be at most 64 or at least 192.
fn cmyk_jpeg(values: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    let mut quant = vec![0u8];
    quant.extend_from_slice(&[1; 64]);
    jpeg_segment(&mut out, 0xDB, &quant);
    let mut frame = vec![8, 0, 8, 0, 8, 4];
    for id in 1..=4u8 {
        frame.extend_from_slice(&[id, 0x11, 0]);
    }
    jpeg_segment(&mut out, 0xC0, &frame);
    // DC table 0: one code of length 1 ("0") for category 10. AC table 0: one code of
    // length 1 for end-of-block (0x00).
    let mut dc = vec![0x00, 1];
    dc.extend_from_slice(&[0; 15]);
    dc.push(10);
    jpeg_segment(&mut out, 0xC4, &dc);
    let mut ac = vec![0x10, 1];
    ac.extend_from_slice(&[0; 15]);
    ac.push(0);
    jpeg_segment(&mut out, 0xC4, &ac);
    let mut scan = vec![4];
    for id in 1..=4u8 {
        scan.extend_from_slice(&[id, 0x00]);
    }
    scan.extend_from_slice(&[0, 63, 0]);
    jpeg_segment(&mut out, 0xDA, &scan);
    let mut bits = BitWriter {
        bytes: Vec::new(),
        current: 0,
        count: 0,
    };
    for value in values {
        let difference = (i32::from(value) - 128) * 8;
        assert!((512..=1023).contains(&difference.abs()));
        // Category-10 amplitude bits: the value itself when positive, else value + 1023.
        let amplitude = if difference > 0 {
            difference
        } else {
            difference + 1023
        };
        bits.put(0, 1);
        bits.put(amplitude as u32, 10);
        bits.put(0, 1);
    }
    out.extend_from_slice(&bits.finish());
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

#[test]
fn cmyk_jpeg_converts_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cmyk.jpg", &cmyk_jpeg([200, 64, 250, 240]));
    let image = read_rgb(&path).unwrap();
    assert_eq!(image.dimensions(), (8, 8));
    // The decoder (zune-jpeg) reads the stored values as inverted CMYK, as Adobe
    // writes them: red = c * k / 255 and so on.
    let expected = [
        200.0 * 240.0 / 255.0,
        64.0 * 240.0 / 255.0,
        250.0 * 240.0 / 255.0,
    ];
    let pixel = image.get_pixel(3, 5);
    for (channel, want) in expected.iter().enumerate() {
        let got = f64::from(pixel[channel]);
        assert!(
            (got - want).abs() <= 2.0,
            "channel {channel}: {got} vs {want}"
        );
    }
}

/// Writes class images for a folder test: `count` flat JPEGs per class.
fn fill_class(dir: &Path, class: &str, count: usize) {
    for i in 0..count {
        let bytes = jpeg_with_orientation(&solid(8, 8, [10 * i as u8, 100, 50]), 1);
        write(dir, &format!("{class}/{i}.jpg"), &bytes);
    }
}

fn options(fraction: f64) -> FolderOptions {
    FolderOptions {
        valid_fraction: fraction,
        seed: 1,
        ..FolderOptions::default()
    }
}

#[test]
fn split_layout_ignores_test_folder() {
    let dir = tempfile::tempdir().unwrap();
    fill_class(&dir.path().join("train"), "ants", 3);
    fill_class(&dir.path().join("train"), "bees", 2);
    fill_class(&dir.path().join("valid"), "ants", 1);
    fill_class(&dir.path().join("valid"), "bees", 1);
    fill_class(&dir.path().join("test"), "wasps", 2);
    let data = read_image_folder(dir.path(), &options(0.2)).unwrap();
    assert_eq!(data.classes, vec!["ants", "bees"]);
    assert_eq!(data.train.len(), 5);
    assert_eq!(data.valid.len(), 2);
}

#[test]
fn class_folders_split_by_fraction() {
    let dir = tempfile::tempdir().unwrap();
    fill_class(dir.path(), "a", 5);
    fill_class(dir.path(), "b", 5);
    fill_class(dir.path(), "test", 3);
    let data = read_image_folder(dir.path(), &options(0.2)).unwrap();
    assert_eq!(data.classes, vec!["a", "b"]);
    assert_eq!(data.valid.len(), 2);
    assert_eq!(data.train.len(), 8);
    let again = read_image_folder(dir.path(), &options(0.2)).unwrap();
    let names = |items: &[ulmfit::vision::folder::ImageItem]| {
        items.iter().map(|i| i.path.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&data.valid), names(&again.valid));
}

#[test]
fn undecodable_files_are_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    fill_class(&train, "a", 2);
    fill_class(&train, "b", 2);
    fill_class(&dir.path().join("val"), "a", 1);
    // A GIF, a PNG and a BMP among the JPEGs are used like JPEGs.
    let image = image::DynamicImage::ImageRgb8(solid(6, 6, [1, 2, 3]));
    write(&train, "a/x.gif", &encode(&image, ImageFormat::Gif));
    write(&train, "b/y.png", &encode(&image, ImageFormat::Png));
    write(&train, "b/z.bmp", &encode(&image, ImageFormat::Bmp));
    // Text with an image extension, and a JPEG cut off before its scan data.
    write(&train, "a/notes.jpg", b"not an image at all");
    let full = jpeg_with_orientation(&solid(32, 32, [9, 9, 9]), 1);
    write(&train, "b/cut.jpg", &full[..full.len() / 4]);
    let data = read_image_folder(dir.path(), &options(0.2)).unwrap();
    assert_eq!(data.train.len(), 7);
    let skipped: Vec<String> = data
        .skipped
        .iter()
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, vec!["notes.jpg", "cut.jpg"]);
}

#[test]
fn single_image_class_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill_class(&dir.path().join("train"), "common", 3);
    fill_class(&dir.path().join("train"), "rare", 1);
    fill_class(&dir.path().join("val"), "common", 1);
    let error = read_image_folder(dir.path(), &options(0.2)).unwrap_err();
    assert!(matches!(error, VisionError::Dataset(_)), "{error}");
    assert!(error.to_string().contains("`rare`"), "{error}");
}

#[test]
fn validation_only_class_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill_class(&dir.path().join("train"), "a", 2);
    fill_class(&dir.path().join("train"), "b", 2);
    fill_class(&dir.path().join("val"), "ghost", 1);
    let error = read_image_folder(dir.path(), &options(0.2)).unwrap_err();
    assert!(error.to_string().contains("`ghost`"), "{error}");
    assert!(error.to_string().contains("validation"), "{error}");
}
