//! Reader for `torch.save` checkpoints in both formats PyTorch writes.
//!
//! - Zip (PyTorch >= 1.6): `<archive>/data.pkl` contains the pickled object, and each
//!   storage is the raw little-endian bytes of the entry `<archive>/data/<key>`.
//! - Legacy stream (`_use_new_zipfile_serialization=False` and PyTorch < 1.6): five
//!   pickles back to back (magic number, protocol version 1001, system info, the
//!   object, the sorted list of storage keys), then for each key in that list an
//!   8-byte little-endian element count followed by the storage's raw bytes.
//!
//! The older tar-based format (PyTorch < 0.4) is not supported.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{Device, Tensor};
use half::{bf16, f16};

use super::pickle::{StorageDtype, StorageRef, TensorRef, Unpickler, Value};
use super::{read_checked, ImportError};

/// `MAGIC_NUMBER` of PyTorch's legacy serialization.
const LEGACY_MAGIC: i128 = 0x1950A86A20F9469CFC6C;
/// `PROTOCOL_VERSION` of PyTorch's legacy serialization.
const LEGACY_PROTOCOL: i128 = 1001;

/// Container format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    /// Zip archive (PyTorch >= 1.6 default).
    Zip,
    /// Pickle stream followed by raw storages (PyTorch < 1.6).
    Legacy,
}

/// A loaded checkpoint: the pickled object tree and every tensor in it.
#[derive(Debug)]
pub struct TorchFile {
    /// Format the file was written in.
    pub format: TorchFormat,
    /// The pickled object, with tensors as [`Value::Tensor`] references.
    pub root: Value,
    /// Every tensor in the tree, in pickle order, as contiguous f32 tensors on the CPU.
    /// Names join dict keys and list indices with `.`; a top-level state dict keeps its keys.
    pub tensors: Vec<(String, Tensor)>,
}

impl TorchFile {
    /// Looks up a tensor by its name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Loads a `torch.save` file in either format. Every tensor is converted to f32
/// (integer and bool storages included) and copied into a contiguous CPU tensor.
pub fn load_torch(path: &Path) -> Result<TorchFile, ImportError> {
    let data = read_checked(path)?;
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        load_zip(path, data)
    } else if data.starts_with(b"\x80") {
        load_legacy(path, &data)
    } else if data.len() > 262 && &data[257..262] == b"ustar" {
        Err(ImportError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "this is a tar archive, the format of PyTorch < 0.4, which is not supported; \
                     load and re-save it with a newer PyTorch"
                .into(),
        })
    } else {
        let head: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Err(ImportError::UnknownFormat {
            path: path.to_path_buf(),
            detail: format!("it starts with bytes {head}, neither a zip archive nor a pickle"),
        })
    }
}

fn load_zip(path: &Path, data: Vec<u8>) -> Result<TorchFile, ImportError> {
    let zip_error = |source| ImportError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).map_err(|source| match source {
        // A zip archive ends with its central directory, so a cut-off file loses it.
        zip::result::ZipError::InvalidArchive(_) => ImportError::Truncated {
            path: path.to_path_buf(),
            detail: format!("the zip archive has no readable central directory ({source})"),
        },
        source => zip_error(source),
    })?;

    let names: Vec<String> = archive
        .file_names()
        .map(|name| name.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(zip_error)?;
    let pickle_name = names
        .iter()
        .find(|name| name.ends_with("data.pkl") && name.matches('/').count() <= 1)
        .cloned()
        .ok_or_else(|| ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: "the zip archive has no data.pkl entry".into(),
        })?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();

    if let Some(byteorder) = read_optional_entry(path, &mut archive, &format!("{prefix}byteorder"))?
    {
        if byteorder.trim_ascii() != b"little" {
            return Err(ImportError::Checkpoint {
                path: path.to_path_buf(),
                detail: format!(
                    "storages are stored {}-endian; only little-endian files are supported",
                    String::from_utf8_lossy(&byteorder).trim()
                ),
            });
        }
    }

    let pickle = read_entry(path, &mut archive, &pickle_name)?;
    let mut unpickler = Unpickler::new(&pickle);
    let root = unpickler
        .load()
        .map_err(|err| ImportError::from_pickle(path, &pickle_name, err))?;

    let mut storages = HashMap::new();
    for storage in unpickler.storages() {
        if storages.contains_key(&storage.key) {
            continue;
        }
        let entry = format!("{prefix}data/{}", storage.key);
        let bytes = read_entry(path, &mut archive, &entry)?;
        check_storage_len(path, storage, bytes.len(), &entry)?;
        storages.insert(storage.key.clone(), bytes);
    }

    let tensors = collect_tensors(path, &root, &storages)?;
    Ok(TorchFile {
        format: TorchFormat::Zip,
        root,
        tensors,
    })
}

fn read_optional_entry(
    path: &Path,
    archive: &mut zip::ZipArchive<Cursor<Vec<u8>>>,
    name: &str,
) -> Result<Option<Vec<u8>>, ImportError> {
    match read_entry(path, archive, name) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ImportError::Zip {
            source: zip::result::ZipError::FileNotFound,
            ..
        }) => Ok(None),
        Err(err) => Err(err),
    }
}

fn read_entry(
    path: &Path,
    archive: &mut zip::ZipArchive<Cursor<Vec<u8>>>,
    name: &str,
) -> Result<Vec<u8>, ImportError> {
    let mut file = archive.by_name(name).map_err(|source| ImportError::Zip {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|err| ImportError::Truncated {
            path: path.to_path_buf(),
            detail: format!("failed to read zip entry {name}: {err}"),
        })?;
    Ok(bytes)
}

fn check_storage_len(
    path: &Path,
    storage: &StorageRef,
    len: usize,
    what: &str,
) -> Result<(), ImportError> {
    let expected = storage.numel.saturating_mul(storage.dtype.size_in_bytes());
    if len < expected {
        return Err(ImportError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "storage {what} has {len} bytes but its {} elements need {expected}",
                storage.numel
            ),
        });
    }
    Ok(())
}

fn load_legacy(path: &Path, data: &[u8]) -> Result<TorchFile, ImportError> {
    let mut unpickler = Unpickler::new(data);
    let mut next = |part: &str| {
        unpickler
            .load()
            .map_err(|err| ImportError::from_pickle(path, part, err))
    };
    let magic = next("magic number")?;
    if magic != Value::Int(LEGACY_MAGIC) {
        return Err(ImportError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "it is a pickle but not a PyTorch checkpoint (the magic number is missing)"
                .into(),
        });
    }
    let protocol = next("protocol version")?;
    if protocol != Value::Int(LEGACY_PROTOCOL) {
        return Err(ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("legacy protocol version {protocol:?} is not {LEGACY_PROTOCOL}"),
        });
    }
    let sys_info = next("system info")?;
    if sys_info.get("little_endian") == Some(&Value::Bool(false)) {
        return Err(ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: "the file was written on a big-endian machine, which is not supported".into(),
        });
    }
    let root = next("main object")?;
    let keys = next("storage key list")?;
    let Value::List(keys) = keys else {
        return Err(ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: "the storage key list is not a list".into(),
        });
    };

    let mut dtypes: HashMap<&str, &StorageRef> = HashMap::new();
    for storage in unpickler.storages() {
        dtypes.entry(storage.key.as_str()).or_insert(storage);
    }
    let mut pos = unpickler.position();
    let mut storages = HashMap::new();
    for key in &keys {
        let key = key.as_str().ok_or_else(|| ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("storage key {key:?} is not a string"),
        })?;
        let storage = dtypes.get(key).ok_or_else(|| ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("storage {key} is listed but no tensor uses it"),
        })?;
        let (bytes, next_pos) = read_legacy_storage(path, data, pos, key, storage)?;
        storages.insert(key.to_owned(), bytes);
        pos = next_pos;
    }

    let tensors = collect_tensors(path, &root, &storages)?;
    Ok(TorchFile {
        format: TorchFormat::Legacy,
        root,
        tensors,
    })
}

/// Reads one legacy storage record at `pos`: an i64 element count, then the bytes.
fn read_legacy_storage(
    path: &Path,
    data: &[u8],
    pos: usize,
    key: &str,
    storage: &StorageRef,
) -> Result<(Vec<u8>, usize), ImportError> {
    let truncated = |detail: String| ImportError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let header = data.get(pos..pos + 8).ok_or_else(|| {
        truncated(format!(
            "the element count of storage {key} is missing at byte {pos}"
        ))
    })?;
    let mut count = [0u8; 8];
    count.copy_from_slice(header);
    let numel = u64::from_le_bytes(count);
    if numel != storage.numel as u64 {
        return Err(ImportError::Checkpoint {
            path: path.to_path_buf(),
            detail: format!(
                "storage {key} has {numel} elements on disk but {} in the pickle",
                storage.numel
            ),
        });
    }
    let start = pos + 8;
    let len = storage.numel.saturating_mul(storage.dtype.size_in_bytes());
    let available = data.len().saturating_sub(start);
    if available < len {
        return Err(truncated(format!(
            "storage {key} needs {len} bytes at byte {start} but only {available} remain"
        )));
    }
    Ok((data[start..start + len].to_vec(), start + len))
}

/// Converts every tensor reference in the tree, naming each by its path.
fn collect_tensors(
    path: &Path,
    root: &Value,
    storages: &HashMap<String, Vec<u8>>,
) -> Result<Vec<(String, Tensor)>, ImportError> {
    let mut refs = Vec::new();
    walk_tensors(root, String::new(), &mut refs);
    refs.into_iter()
        .map(|(name, tensor)| {
            let bytes =
                storages
                    .get(&tensor.storage_key)
                    .ok_or_else(|| ImportError::Checkpoint {
                        path: path.to_path_buf(),
                        detail: format!(
                            "tensor {name} uses storage {} that the file lacks",
                            tensor.storage_key
                        ),
                    })?;
            let converted = tensor_from_storage(path, &name, tensor, bytes)?;
            Ok((name, converted))
        })
        .collect()
}

fn walk_tensors<'v>(value: &'v Value, prefix: String, out: &mut Vec<(String, &'v TensorRef)>) {
    let child = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Tensor(tensor) => out.push((prefix, tensor)),
        Value::Dict(items) => {
            for (key, item) in items {
                let key = match key {
                    Value::String(text) => text.clone(),
                    Value::Int(number) => number.to_string(),
                    other => format!("{other:?}"),
                };
                walk_tensors(item, child(&key), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (index, item) in items.iter().enumerate() {
                walk_tensors(item, child(&index.to_string()), out);
            }
        }
        Value::Object { args, state, .. } => {
            for (index, item) in args.iter().enumerate() {
                walk_tensors(item, child(&index.to_string()), out);
            }
            if let Some(state) = state {
                walk_tensors(state, child("state"), out);
            }
        }
        _ => {}
    }
}

/// Copies a strided view of a storage into a contiguous f32 tensor of `tensor.shape`.
fn tensor_from_storage(
    path: &Path,
    name: &str,
    tensor: &TensorRef,
    bytes: &[u8],
) -> Result<Tensor, ImportError> {
    let out_of_bounds = |detail: String| ImportError::Checkpoint {
        path: path.to_path_buf(),
        detail: format!("tensor {name}: {detail}"),
    };
    let numel: usize = tensor.shape.iter().product();
    let storage_len = bytes.len() / tensor.dtype.size_in_bytes();
    if numel > 0 {
        // The largest element index the view reaches must lie inside the storage.
        let last = tensor
            .shape
            .iter()
            .zip(&tensor.strides)
            .try_fold(tensor.offset, |acc, (&size, &stride)| {
                (size - 1)
                    .checked_mul(stride)
                    .and_then(|step| acc.checked_add(step))
            })
            .ok_or_else(|| out_of_bounds("shape and strides overflow".into()))?;
        if last >= storage_len {
            return Err(out_of_bounds(format!(
                "the view reaches element {last} but the storage has {storage_len} elements"
            )));
        }
    }

    let mut values = Vec::with_capacity(numel);
    let mut index = vec![0usize; tensor.shape.len()];
    for _ in 0..numel {
        let element: usize = tensor.offset
            + index
                .iter()
                .zip(&tensor.strides)
                .map(|(&i, &stride)| i * stride)
                .sum::<usize>();
        values.push(read_element(bytes, tensor.dtype, element));
        for dim in (0..index.len()).rev() {
            index[dim] += 1;
            if index[dim] < tensor.shape[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
    Tensor::from_vec(values, tensor.shape.clone(), &Device::Cpu).map_err(|source| {
        ImportError::Tensor {
            context: format!("tensor {name} in {}", path.display()),
            source,
        }
    })
}

/// Reads element `index` of a little-endian storage as f32; the caller checks bounds.
fn read_element(bytes: &[u8], dtype: StorageDtype, index: usize) -> f32 {
    let size = dtype.size_in_bytes();
    let raw = &bytes[index * size..(index + 1) * size];
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        StorageDtype::F64 => {
            let mut wide = [0u8; 8];
            wide.copy_from_slice(raw);
            f64::from_le_bytes(wide) as f32
        }
        StorageDtype::F16 => f16::from_le_bytes([raw[0], raw[1]]).to_f32(),
        StorageDtype::BF16 => bf16::from_le_bytes([raw[0], raw[1]]).to_f32(),
        StorageDtype::I64 => {
            let mut wide = [0u8; 8];
            wide.copy_from_slice(raw);
            i64::from_le_bytes(wide) as f32
        }
        StorageDtype::I32 => i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as f32,
        StorageDtype::I16 => f32::from(i16::from_le_bytes([raw[0], raw[1]])),
        StorageDtype::I8 => f32::from(raw[0] as i8),
        StorageDtype::U8 | StorageDtype::Bool => f32::from(raw[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_view_is_copied_in_row_major_order() {
        // Storage 0..6 as f32, viewed as the transpose of a [2, 3] matrix from offset 0.
        let bytes: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let tensor = TensorRef {
            storage_key: "0".into(),
            dtype: StorageDtype::F32,
            storage_numel: 6,
            offset: 0,
            shape: vec![3, 2],
            strides: vec![1, 3],
        };
        let out = tensor_from_storage(Path::new("t.pth"), "w", &tensor, &bytes).unwrap();
        let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(values, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn storage_offset_and_half_precision() {
        let bytes: Vec<u8> = [1.0f32, 2.5, -3.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let tensor = TensorRef {
            storage_key: "0".into(),
            dtype: StorageDtype::F16,
            storage_numel: 3,
            offset: 1,
            shape: vec![2],
            strides: vec![1],
        };
        let out = tensor_from_storage(Path::new("t.pth"), "b", &tensor, &bytes).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![2.5, -3.0]);
    }

    #[test]
    fn view_past_storage_end_is_rejected() {
        let bytes = vec![0u8; 8];
        let tensor = TensorRef {
            storage_key: "0".into(),
            dtype: StorageDtype::F32,
            storage_numel: 2,
            offset: 1,
            shape: vec![2],
            strides: vec![1],
        };
        let err = tensor_from_storage(Path::new("t.pth"), "b", &tensor, &bytes).unwrap_err();
        assert!(err.to_string().contains("reaches element 2"), "{err}");
    }
}
