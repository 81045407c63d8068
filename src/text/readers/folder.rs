//! Folder reader: one subfolder of `.txt` files per class, or a flat folder of `.txt`
//! files.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{
    is_blank, Document, LabelRequirement, Origin, ReadError, ReadOptions, UNLABELLED_FOLDER,
};
use crate::text::encoding::{newlines_before, Encoding};

/// Number of files read in parallel before their documents are handed out in order,
/// which bounds the memory held at once.
const FILES_PER_BATCH: usize = 256;

/// A file to read and the label its documents get.
struct FileJob {
    path: PathBuf,
    label: Option<String>,
}

/// Documents from a folder, one per `.txt` file.
///
/// Classes come in the order of `ReadOptions::classes`, or sorted by name, and files
/// within a folder are sorted by name. Files other than `.txt` and top-level files
/// beside class subfolders are ignored.
pub(super) struct FolderDocuments {
    jobs: Vec<FileJob>,
    next_job: usize,
    ready: VecDeque<Result<Option<Document>, ReadError>>,
    encoding: Encoding,
    pub(super) skipped_empty: u64,
}

impl FolderDocuments {
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self, ReadError> {
        let listing = list_folder(path)?;
        let jobs = if listing.subfolders.is_empty() {
            flat_jobs(path, options, listing.text_files)?
        } else {
            class_jobs(path, options, &listing.subfolders)?
        };
        Ok(FolderDocuments {
            jobs,
            next_job: 0,
            ready: VecDeque::new(),
            encoding: options.encoding,
            skipped_empty: 0,
        })
    }

    pub(super) fn next_document(&mut self) -> Option<Result<Document, ReadError>> {
        loop {
            if self.ready.is_empty() {
                self.read_batch();
            }
            match self.ready.pop_front()? {
                Ok(Some(document)) => return Some(Ok(document)),
                Ok(None) => self.skipped_empty += 1,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Reads the next batch of files in parallel into `ready`, keeping file order.
    fn read_batch(&mut self) {
        let end = (self.next_job + FILES_PER_BATCH).min(self.jobs.len());
        let batch = &self.jobs[self.next_job..end];
        self.next_job = end;
        let encoding = self.encoding;
        let results: Vec<_> = batch
            .par_iter()
            .map(|job| read_document(job, encoding))
            .collect();
        self.ready.extend(results);
    }
}

/// Subfolders and `.txt` files of a folder, each sorted by name.
struct Listing {
    subfolders: Vec<String>,
    text_files: Vec<PathBuf>,
}

/// Lists a folder. Names starting with `.` (such as `.ipynb_checkpoints`) are skipped.
fn list_folder(path: &Path) -> Result<Listing, ReadError> {
    let entries = fs::read_dir(path).map_err(|source| ReadError::io(path, source))?;
    let mut listing = Listing {
        subfolders: Vec::new(),
        text_files: Vec::new(),
    };
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::io(path, source))?;
        let entry_path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry_path.is_dir() {
            listing.subfolders.push(name);
        } else if is_text_file(&entry_path) {
            listing.text_files.push(entry_path);
        }
    }
    listing.subfolders.sort();
    listing.text_files.sort();
    Ok(listing)
}

fn is_text_file(path: &Path) -> bool {
    let has_txt_extension = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("txt"));
    has_txt_extension && path.is_file()
}

/// Jobs for a folder of `.txt` files without subfolders: unlabelled documents.
fn flat_jobs(
    path: &Path,
    options: &ReadOptions,
    text_files: Vec<PathBuf>,
) -> Result<Vec<FileJob>, ReadError> {
    if let Some(class) = options.classes.as_ref().and_then(|classes| classes.first()) {
        return Err(ReadError::MissingClassFolder {
            path: path.to_path_buf(),
            class: class.clone(),
            available: Vec::new(),
        });
    }
    if options.labels == LabelRequirement::Required {
        return Err(ReadError::LabelsUnavailable {
            path: path.to_path_buf(),
            reason: "the folder has no class subfolders",
        });
    }
    if text_files.is_empty() {
        return Err(ReadError::NoTextFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(text_files
        .into_iter()
        .map(|path| FileJob { path, label: None })
        .collect())
}

/// Jobs for a folder with one subfolder per class, plus `unsup` unless labels are
/// required.
fn class_jobs(
    path: &Path,
    options: &ReadOptions,
    subfolders: &[String],
) -> Result<Vec<FileJob>, ReadError> {
    let classes: Vec<String> = match &options.classes {
        Some(classes) => classes.clone(),
        None => subfolders
            .iter()
            .filter(|name| name.as_str() != UNLABELLED_FOLDER)
            .cloned()
            .collect(),
    };
    if classes.is_empty() && options.labels == LabelRequirement::Required {
        return Err(ReadError::LabelsUnavailable {
            path: path.to_path_buf(),
            reason: "the folder has no class subfolders besides unsup",
        });
    }

    let mut jobs = Vec::new();
    for class in &classes {
        if class == UNLABELLED_FOLDER {
            return Err(ReadError::InvalidClass {
                path: path.to_path_buf(),
                class: class.clone(),
                reason: "the unsup folder holds unlabelled documents",
            });
        }
        if !subfolders.contains(class) {
            return Err(ReadError::MissingClassFolder {
                path: path.to_path_buf(),
                class: class.clone(),
                available: subfolders.to_vec(),
            });
        }
        let class_path = path.join(class);
        let files = list_folder(&class_path)?.text_files;
        if files.is_empty() {
            return Err(ReadError::NoTextFiles { path: class_path });
        }
        let label = (options.labels != LabelRequirement::Ignored).then(|| class.clone());
        jobs.extend(files.into_iter().map(|path| FileJob {
            path,
            label: label.clone(),
        }));
    }

    let has_unlabelled = subfolders.iter().any(|name| name == UNLABELLED_FOLDER);
    if has_unlabelled && options.labels != LabelRequirement::Required {
        let files = list_folder(&path.join(UNLABELLED_FOLDER))?.text_files;
        jobs.extend(files.into_iter().map(|path| FileJob { path, label: None }));
    }
    Ok(jobs)
}

/// Reads one file as one document, or returns `None` when its text is blank.
///
/// CRLF line endings become `\n`, and a UTF-8 byte order mark is removed.
fn read_document(job: &FileJob, encoding: Encoding) -> Result<Option<Document>, ReadError> {
    let bytes = fs::read(&job.path).map_err(|source| ReadError::io(&job.path, source))?;
    let bytes = encoding.strip_bom(&bytes);
    let text = encoding
        .decode(bytes)
        .map_err(|error| ReadError::InvalidUtf8 {
            path: job.path.clone(),
            line: newlines_before(bytes, error.valid_up_to) + 1,
        })?;
    if is_blank(&text) {
        return Ok(None);
    }
    let text = if text.contains("\r\n") {
        text.replace("\r\n", "\n")
    } else {
        text
    };
    Ok(Some(Document {
        text,
        label: job.label.clone(),
        origin: Origin {
            path: job.path.clone(),
            line: 1,
        },
    }))
}
