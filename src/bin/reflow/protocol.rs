//! What the `reflow` commands share beyond the library's
//! [`reflow::protocol`]: exit codes, one-line errors, the progress bar, path checks
//! and the checkpoint flags.

use indicatif::{ProgressBar, ProgressStyle};
use reflow::prelude::*;
use std::path::{Path, PathBuf};

pub use reflow::protocol::{Dense, Evaluation, Protocol, Run};

/// `println!` that does not panic when stdout is closed (`reflow inspect m | head`):
/// what cannot be written is dropped.
#[allow(unused_macros)] // the resnet example prints with println!
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// How a command ends: 0 on success, 1 with the error on one line of stderr.
pub fn exit_with(result: reflow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a command line that clap refused ends with: `--help` and `--version` print
/// and succeed; an error prints clap's message on one line (everything before the
/// usage text) and exits with 2.
pub fn clap_exit(e: clap::Error) -> std::process::ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return std::process::ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}", message.join(" "));
    std::process::ExitCode::from(2)
}

/// A progress bar on stderr for `steps` evaluations.
pub fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// The last batch-norm layer's signal relative to the dense network's.
pub fn last_ratio(signal: &Signal, dense: &Signal) -> f64 {
    signal.last_ratio_to(dense)
}

/// An invalid command-line argument `--flag`.
pub fn invalid(flag: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: format!("--{flag}"),
        reason: reason.into(),
    }
}

/// Where `path` is, whether or not it exists yet: its canonical form, or its folder's
/// with its name.
pub fn identity(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(dir.canonicalize().ok()?.join(path.file_name()?))
    })
}

/// `dir` (the current folder when empty or absent) exists, is a folder, and takes a
/// new file.
pub fn writable_folder(flag: &str, dir: Option<&Path>) -> reflow::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid(
            flag,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    let probe = dir.join(format!(".reflow-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| invalid(flag, format!("cannot write in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The checkpoint a command reads, and how to read it.
#[derive(clap::Args, Debug)]
pub struct Checkpoint {
    /// safetensors state dict in torchvision layout, dense or with pruned weights in
    /// compressed-tensors' bitmask layout (--save-format compressed).
    #[arg(value_name = "CHECKPOINT")]
    pub weights: PathBuf,
    /// Network family or torchvision preset; auto detects it from the keys.
    #[arg(long, default_value = "auto")]
    pub arch: String,
    /// ResNet stem kind: cifar or imagenet (the one thing a ResNet's keys do not say;
    /// the stem kernel is checked against it).
    #[arg(long, default_value = "imagenet")]
    pub stem: String,
}

impl Checkpoint {
    /// The network, its family and shape read off the keys.
    pub fn load(&self) -> reflow::Result<reflow::models::Model> {
        let arch: reflow::models::Arch = self.arch.parse()?;
        let stem: reflow::models::Stem = self.stem.parse()?;
        reflow::models::Model::load(&self.weights, arch, stem)
    }
}
