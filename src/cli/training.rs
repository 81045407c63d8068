//! Options shared by the training and inference commands: the device, and the run settings saved in
//! the output folder so that `--resume` continues with the same ones.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use candle_core::Device;
use serde::{de::DeserializeOwned, Serialize};

use crate::train::{TrainError, LOG_PATH_FILE};

/// Help text of every command's `--device` option.
pub const DEVICE_HELP: &str = "Device to run on: `cpu`, `cuda` (the first GPU) or `cuda:N` (GPU number N, counted from 0). CUDA needs a build with `--features cuda`";

/// A device named by `--device`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (0 for the first).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// Parses `cpu`, `cuda` or `cuda:N` (ASCII case ignored, surrounding spaces trimmed).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let name = text.trim().to_ascii_lowercase();
        if name == "cpu" {
            return Ok(Self::Cpu);
        }
        if name == "cuda" {
            return Ok(Self::Cuda(0));
        }
        let Some(ordinal) = name.strip_prefix("cuda:") else {
            return Err(format!(
                "invalid device `{text}`: expected cpu, cuda or cuda:N (N is the GPU number, from 0)"
            ));
        };
        match ordinal.parse::<usize>() {
            Ok(ordinal) => Ok(Self::Cuda(ordinal)),
            Err(_) => Err(format!(
                "invalid device `{text}`: the GPU number `{ordinal}` is not a non-negative integer; use cuda:0 for the first GPU"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. A CUDA device fails in a build without the `cuda` feature, when
    /// the driver cannot be loaded, or when the ordinal is beyond the GPUs present.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    bail!(
        "--device cuda:{ordinal} needs CUDA support, which this build of ulmfit lacks; rebuild it with `cargo build --release --features cuda` (see Install in the README) or use --device cpu"
    )
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;

    let count = CudaContext::device_count().map_err(|error| {
        anyhow::anyhow!(
            "--device cuda:{ordinal}: failed to query the CUDA driver for GPUs ({error}); check that `nvidia-smi` lists a GPU, or use --device cpu"
        )
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        bail!("--device cuda:{ordinal}: the CUDA driver reports no GPU on this machine; use --device cpu");
    }
    if ordinal >= count {
        bail!(
            "--device cuda:{ordinal}: this machine has {count} CUDA GPU(s), numbered from 0; choose cuda:0 to cuda:{} or use --device cpu",
            count.saturating_sub(1)
        );
    }
    Device::new_cuda(ordinal).with_context(|| format!("failed to open CUDA GPU {ordinal}"))
}

/// Returns the device named by `--device`.
pub fn select_device(spec: DeviceSpec) -> anyhow::Result<Device> {
    let device = spec.open()?;
    if !device.is_cpu() {
        tracing::info!("running on {spec}");
    }
    Ok(device)
}

/// Returns the run folder from `--out` and `--resume`, failing when they name different
/// folders, when neither is given, or when a new run would overwrite one that has
/// stage checkpoints (names starting with `checkpoint_prefix`).
pub fn run_folder(
    out: Option<&PathBuf>,
    resume: Option<&PathBuf>,
    checkpoint_prefix: &str,
) -> anyhow::Result<PathBuf> {
    let dir = match (resume, out) {
        (Some(resume), Some(out)) if resume != out => bail!(
            "--resume {} and --out {} name different folders; drop --out when resuming",
            resume.display(),
            out.display()
        ),
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => bail!("--out is required unless --resume is given"),
    };
    if resume.is_none() && has_checkpoints(&dir, checkpoint_prefix) {
        bail!(
            "{} already contains a training run; pass --resume {} to continue it, or choose another --out",
            dir.display(),
            dir.display()
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

/// Returns `path` made absolute against the working folder, so that a run resumed from
/// another folder finds its saved inputs.
pub fn absolute_path(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("invalid path {}", path.display()))
}

/// Returns whether `dir` has an entry named `prefix...`, or `.prefix...` as the trainer
/// leaves during a save.
fn has_checkpoints(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_prefix('.').unwrap_or(&name).starts_with(prefix)
        })
    })
}

/// Returns the settings of the run. A new run gets `given` with its defaults filled in
/// (`resolved`), saved as `dir/file`. A resumed run gets the saved settings, after a
/// check that every option given again (not null, false or empty) has its saved value.
pub fn settings_of_run<S: Serialize + DeserializeOwned>(
    dir: &Path,
    file: &str,
    given: &S,
    resolved: impl FnOnce(&S) -> S,
    resuming: bool,
) -> anyhow::Result<S> {
    let path = dir.join(file);
    if !resuming {
        let settings = resolved(given);
        let json = serde_json::to_string_pretty(&settings)?;
        fs::write(&path, json + "\n")
            .with_context(|| format!("failed to write {}", path.display()))?;
        return Ok(settings);
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "failed to read {}; is {} the output folder of an earlier run of this command?",
            path.display(),
            dir.display()
        )
    })?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    let serde_json::Value::Object(given) = serde_json::to_value(given)? else {
        bail!("the settings of this command are not a JSON object");
    };
    for (key, value) in given {
        let unset = match &value {
            serde_json::Value::Null | serde_json::Value::Bool(false) => true,
            serde_json::Value::Array(items) => items.is_empty(),
            _ => false,
        };
        let saved_value = saved.get(&key).unwrap_or(&serde_json::Value::Null);
        if !unset && saved_value != &value {
            return Err(TrainError::ResumeMismatch {
                setting: key,
                saved: saved_value.to_string(),
                given: value.to_string(),
            }
            .into());
        }
    }
    serde_json::from_value(saved).with_context(|| format!("invalid {}", path.display()))
}

/// Returns the file that receives the run's per-epoch JSON log. A given `--log-json` is
/// opened for appending (its folder created) so that a bad path fails before training,
/// then recorded in the run folder as an absolute path. A resumed run without the option
/// appends to the recorded file, from any working folder. A new run without the option
/// removes an old record.
pub fn log_file_of_run(
    dir: &Path,
    given: Option<&Path>,
    resuming: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let record = dir.join(LOG_PATH_FILE);
    let Some(path) = given else {
        return recorded_log_file(&record, resuming);
    };
    let absolute =
        absolute_path(path).with_context(|| format!("invalid --log-json {}", path.display()))?;
    if let Some(parent) = absolute.parent() {
        fs::create_dir_all(parent).with_context(|| {
            format!(
                "failed to create the folder of --log-json {}",
                path.display()
            )
        })?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&absolute)
        .with_context(|| format!("failed to open --log-json {}", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    match path_bytes(&absolute) {
        // One newline ends the path, which may itself end in newlines.
        Some(mut bytes) => {
            bytes.push(b'\n');
            fs::write(&record, bytes)
                .with_context(|| format!("failed to write {}", record.display()))?
        }
        None => {
            remove_if_present(&record)?;
            tracing::warn!(
                "--log-json {} is not valid Unicode, so a resumed run needs it again",
                path.display()
            );
        }
    }
    Ok(Some(absolute))
}

/// Returns the log file recorded in `record` when resuming. A new run removes the record.
fn recorded_log_file(record: &Path, resuming: bool) -> anyhow::Result<Option<PathBuf>> {
    if !resuming {
        remove_if_present(record)?;
        return Ok(None);
    }
    let mut bytes = match fs::read(record) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", record.display()))
        }
    };
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    let Some(path) = path_from_bytes(bytes).filter(|path| !path.as_os_str().is_empty()) else {
        bail!(
            "{} does not contain a file path; give --log-json FILE or delete it",
            record.display()
        );
    };
    tracing::info!("appending the per-epoch log to {}", path.display());
    Ok(Some(path))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("failed to remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Returns the bytes of `path` as the operating system stores them. Unix paths are
/// arbitrary bytes; elsewhere only Unicode paths are stored.
#[cfg(unix)]
fn path_bytes(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    Some(path.as_os_str().as_bytes().to_vec())
}

#[cfg(not(unix))]
fn path_bytes(path: &Path) -> Option<Vec<u8>> {
    path.to_str().map(|text| text.as_bytes().to_vec())
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
    String::from_utf8(bytes).ok().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_is_recorded_for_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let log = dir.path().join("epochs.jsonl");
        let recorded = log_file_of_run(&run, Some(&log), false).unwrap();
        assert_eq!(recorded.as_deref(), Some(log.as_path()));
        // The record is the path and one newline, as runs have always written it.
        let text = std::fs::read_to_string(run.join(LOG_PATH_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", log.display()));
        let resumed = log_file_of_run(&run, None, true).unwrap();
        assert_eq!(resumed.as_deref(), Some(log.as_path()));

        // A log given on resume replaces the recorded one.
        let other = dir.path().join("other.jsonl");
        log_file_of_run(&run, Some(&other), true).unwrap();
        let resumed = log_file_of_run(&run, None, true).unwrap();
        assert_eq!(resumed.as_deref(), Some(other.as_path()));

        // A new run without a log removes the old record.
        assert_eq!(log_file_of_run(&run, None, false).unwrap(), None);
        assert!(!run.join(LOG_PATH_FILE).exists());
        assert_eq!(log_file_of_run(&run, None, true).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn unusual_log_file_names_survive_resume() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let names: [&[u8]; 3] = [b"log.jsonl\r", b"log\n.jsonl\n", b"log-\xff.jsonl"];
        for name in names {
            let log = dir.path().join(std::ffi::OsStr::from_bytes(name));
            log_file_of_run(&run, Some(&log), false).unwrap();
            let resumed = log_file_of_run(&run, None, true).unwrap();
            assert_eq!(resumed.as_deref(), Some(log.as_path()));
        }
    }

    #[test]
    fn log_file_folder_is_created_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs").join("epochs.jsonl");
        log_file_of_run(&dir.path().join("run"), Some(&log), false).unwrap();
        assert!(log.is_file(), "the log file is created before training");
        let blocked = dir.path().join("epochs.jsonl").join("x.jsonl");
        std::fs::write(dir.path().join("epochs.jsonl"), "").unwrap();
        let error = log_file_of_run(&dir.path().join("run"), Some(&blocked), false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--log-json"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn relative_log_file_is_recorded_absolute() {
        let dir = tempfile::tempdir().unwrap();
        // A path relative to the working folder that leads into the temporary folder, so
        // the test creates no file in the working folder.
        let cwd = std::env::current_dir().unwrap();
        let mut relative: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        relative.push(dir.path().strip_prefix("/").unwrap());
        relative.push("epochs.jsonl");
        assert!(relative.is_relative());
        let recorded = log_file_of_run(dir.path(), Some(&relative), false)
            .unwrap()
            .unwrap();
        assert!(recorded.is_absolute(), "{}", recorded.display());
        assert!(recorded.ends_with("epochs.jsonl"));
        assert!(recorded.is_file());
        let resumed = log_file_of_run(dir.path(), None, true).unwrap();
        assert_eq!(resumed, Some(recorded));
    }

    #[test]
    fn device_spec_parses_names() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:0".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("CUDA:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(" cpu ".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
    }

    #[test]
    fn device_spec_rejects_bad_ordinals() {
        for text in ["cuda:x", "cuda:-1", "cuda:", "cuda:1.5"] {
            let error = text.parse::<DeviceSpec>().unwrap_err();
            assert!(
                error.contains("is not a non-negative integer"),
                "{text}: {error}"
            );
            assert!(error.contains(text), "{text}: {error}");
        }
    }

    #[test]
    fn device_spec_rejects_unknown_names() {
        for text in ["gpu", "", "cuda0", "metal"] {
            let error = text.parse::<DeviceSpec>().unwrap_err();
            assert!(
                error.contains("expected cpu, cuda or cuda:N"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn device_spec_display_round_trips() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(7)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn device_spec_defaults_to_cpu() {
        assert_eq!(DeviceSpec::default(), DeviceSpec::Cpu);
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_rebuild() {
        let error = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(error.contains("--device cuda:1"), "{error}");
        assert!(error.contains("--features cuda"), "{error}");
    }
}
