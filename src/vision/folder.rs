//! Image folders: class subfolders, the train/validation split and the up-front check
//! that every image decodes.
//!
//! A folder with `train/` and `val/` (or `valid/`) subfolders is split that way, and each
//! of the two contains one subfolder per class. Any other folder's subfolders are the
//! classes, and a seeded random share of the images becomes the validation set. In both
//! layouts a `test/` subfolder beside `train/` is ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use rayon::prelude::*;

use super::image_data::read_rgb;
use super::{Result, VisionError};
use crate::rng::Rng;

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp"];

/// Default share of the images held out for validation when the folder has no
/// `val/` subfolder (fastai's `RandomSplitter` default).
pub const DEFAULT_VALID_FRACTION: f64 = 0.2;

/// Names of the validation subfolder, in the order they are looked for.
const VALID_NAMES: &[&str] = &["val", "valid"];

/// A file left out because it failed to decode, with the decoder's message.
pub type SkippedFile = (PathBuf, String);

/// One labelled image.
#[derive(Debug, Clone)]
pub struct ImageItem {
    /// The image file.
    pub path: PathBuf,
    /// Index into [`ImageDataset::classes`].
    pub label: u32,
    /// The decoded image, downscaled, when it was kept in memory.
    pub cached: Option<Arc<RgbImage>>,
}

/// A labelled image set split into training and validation items.
#[derive(Debug, Clone, Default)]
pub struct ImageDataset {
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Training images.
    pub train: Vec<ImageItem>,
    /// Validation images.
    pub valid: Vec<ImageItem>,
    /// Files that failed to decode and were left out.
    pub skipped: Vec<(PathBuf, String)>,
}

/// How [`read_image_folder`] splits and caches.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Share of the images held out when the folder has no `val/` subfolder.
    pub valid_fraction: f64,
    /// Seed of that random split.
    pub seed: u64,
    /// Decoded images are kept in memory downscaled so that their shorter side is at
    /// most this many pixels (`None` keeps nothing and decodes again at each use).
    pub cache_side: Option<u32>,
    /// Stop caching once the cached pixels take this many bytes.
    pub cache_bytes: usize,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            valid_fraction: DEFAULT_VALID_FRACTION,
            seed: 42,
            cache_side: None,
            cache_bytes: 2 << 30,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> VisionError + '_ {
    move |source| VisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Returns the sorted non-hidden subfolders of `dir`.
fn subfolders(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_dir() {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

/// Returns whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Returns the sorted image files directly inside `dir` (subfolders are not read).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn folder_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Lists `(class name, file)` pairs of a folder whose subfolders are classes.
fn class_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for folder in subfolders(dir)? {
        let class = folder_name(&folder);
        for file in image_files(&folder)? {
            files.push((class.clone(), file));
        }
    }
    Ok(files)
}

/// Finds the training and validation folders of a split layout, if `dir` has one.
fn split_layout(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let train = dir.join("train");
    if !train.is_dir() {
        return None;
    }
    VALID_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|valid| valid.is_dir())
        .map(|valid| (train, valid))
}

/// Decodes `path` and downscales it so its shorter side is at most `side` pixels.
pub fn decode_for_cache(path: &Path, side: Option<u32>) -> Result<RgbImage> {
    let image = read_rgb(path)?;
    match side {
        Some(side) if image.width().min(image.height()) > side => {
            let scale = f64::from(side) / f64::from(image.width().min(image.height()));
            let width = ((f64::from(image.width()) * scale).round() as u32).max(1);
            let height = ((f64::from(image.height()) * scale).round() as u32).max(1);
            Ok(image::imageops::resize(
                &image,
                width,
                height,
                image::imageops::FilterType::Triangle,
            ))
        }
        _ => Ok(image),
    }
}

/// Decodes every file in parallel. Returns, in input order, each decoded image or the
/// decoder's message for a file that failed.
fn decode_all(files: &[PathBuf], side: Option<u32>) -> Vec<std::result::Result<RgbImage, String>> {
    files
        .par_iter()
        .map(|path| decode_for_cache(path, side).map_err(|e| e.to_string()))
        .collect()
}

/// Reads an image folder (see the module documentation), decodes every image once in
/// parallel, and leaves out the files that fail to decode (listed in
/// [`ImageDataset::skipped`]). Fails, naming the class, when a class has fewer than 2
/// training images or occurs only in validation.
pub fn read_image_folder(dir: &Path, options: &FolderOptions) -> Result<ImageDataset> {
    if !dir.is_dir() {
        return Err(VisionError::Dataset(format!(
            "image folder {} does not exist or is not a folder",
            dir.display()
        )));
    }
    if !(0.0..1.0).contains(&options.valid_fraction) {
        return Err(VisionError::Dataset(format!(
            "the validation fraction {} must be at least 0 and below 1",
            options.valid_fraction
        )));
    }
    let (train_files, valid_files) = match split_layout(dir) {
        Some((train, valid)) => (class_files(&train)?, class_files(&valid)?),
        None => {
            // A train/ folder without val/ contains the classes; test/ is never a class.
            let root = if dir.join("train").is_dir() {
                dir.join("train")
            } else {
                dir.to_path_buf()
            };
            let mut files = class_files(&root)?;
            if root == dir {
                files.retain(|(class, _)| class != "test");
            }
            let mut rng = Rng::seed(options.seed);
            rng.shuffle(&mut files);
            let n_valid = (files.len() as f64 * options.valid_fraction) as usize;
            let valid = files.split_off(files.len() - n_valid);
            (files, valid)
        }
    };
    build_dataset(dir, train_files, valid_files, options)
}

fn build_dataset(
    dir: &Path,
    train_files: Vec<(String, PathBuf)>,
    valid_files: Vec<(String, PathBuf)>,
    options: &FolderOptions,
) -> Result<ImageDataset> {
    let decode = |files: &[(String, PathBuf)]| {
        let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
        decode_all(&paths, options.cache_side)
    };
    let mut skipped = Vec::new();
    let mut cached_bytes = 0usize;
    let mut keep = |files: Vec<(String, PathBuf)>,
                    decoded: Vec<std::result::Result<RgbImage, String>>| {
        let mut kept = Vec::new();
        for ((class, path), image) in files.into_iter().zip(decoded) {
            match image {
                Ok(image) => {
                    let cached = match options.cache_side {
                        Some(_) if cached_bytes + image.len() <= options.cache_bytes => {
                            cached_bytes += image.len();
                            Some(Arc::new(image))
                        }
                        _ => None,
                    };
                    kept.push((class, path, cached));
                }
                Err(message) => skipped.push((path, message)),
            }
        }
        kept
    };
    let train_decoded = decode(&train_files);
    let train = keep(train_files, train_decoded);
    let valid_decoded = decode(&valid_files);
    let valid = keep(valid_files, valid_decoded);

    let train_labels: Vec<String> = train.iter().map(|(c, _, _)| c.clone()).collect();
    let valid_labels: Vec<String> = valid.iter().map(|(c, _, _)| c.clone()).collect();
    if train_labels.is_empty() {
        return Err(VisionError::Dataset(format!(
            "{} has no decodable training images in class subfolders ({} files skipped); \
             put each class's images in a subfolder named after the class",
            dir.display(),
            skipped.len()
        )));
    }
    let classes = crate::pipeline::classify::check_classes(&train_labels, &valid_labels)
        .map_err(|e| VisionError::Dataset(format!("{}: {e}", dir.display())))?;
    let index = |class: &str| classes.iter().position(|c| c == class).unwrap_or(0) as u32;
    let to_items = |items: Vec<(String, PathBuf, Option<Arc<RgbImage>>)>| {
        items
            .into_iter()
            .map(|(class, path, cached)| ImageItem {
                label: index(&class),
                path,
                cached,
            })
            .collect()
    };
    Ok(ImageDataset {
        train: to_items(train),
        valid: to_items(valid),
        classes,
        skipped,
    })
}

/// Lists and decodes the labelled images to evaluate in `dir`: its `val/` (or `valid/`)
/// subfolder in the split layout, else every class subfolder except `test/`. Labels are
/// indices into `classes`, and a class folder not in `classes` is an error naming it.
/// Returns the items (decoded, downscaled to `cache_side` when given) and the files
/// that failed to decode.
pub fn evaluation_items(
    dir: &Path,
    classes: &[String],
    cache_side: Option<u32>,
) -> Result<(Vec<ImageItem>, Vec<SkippedFile>)> {
    if !dir.is_dir() {
        return Err(VisionError::Dataset(format!(
            "image folder {} does not exist or is not a folder",
            dir.display()
        )));
    }
    let mut files = match split_layout(dir) {
        Some((_, valid)) => class_files(&valid)?,
        None => class_files(dir)?,
    };
    files.retain(|(class, _)| class != "test");
    if let Some((class, path)) = files.iter().find(|(class, _)| !classes.contains(class)) {
        return Err(VisionError::Dataset(format!(
            "class `{class}` ({}) is not one of the model's classes ({}); remove the folder or use a model trained on it",
            path.parent().unwrap_or(path).display(),
            classes.join(", ")
        )));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for ((class, path), image) in files.into_iter().zip(decode_all(&paths, cache_side)) {
        match image {
            Ok(image) => items.push(ImageItem {
                label: classes.iter().position(|c| *c == class).unwrap_or(0) as u32,
                path,
                cached: Some(Arc::new(image)),
            }),
            Err(message) => skipped.push((path, message)),
        }
    }
    Ok((items, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(has_image_extension(Path::new("a/b.webp")));
        assert!(!has_image_extension(Path::new("a/readme.txt")));
    }
}
