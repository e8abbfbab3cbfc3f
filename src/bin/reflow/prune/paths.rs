//! The paths of `reflow prune`, checked before any work: nothing given is ever
//! overwritten.

use super::super::protocol::{identity, invalid, writable_folder};
use super::Args;
use std::path::PathBuf;

/// Before any work: every input a regular file; every output's folder there and
/// writable; no output the same file as an input or as another output (so that
/// nothing given is ever overwritten). Makes `--save-dir` when it does not exist.
pub(super) fn check_paths(args: &Args, saved: &[String]) -> reflow::Result<()> {
    let mut inputs = vec![("weights", args.weights.clone())];
    let given = [
        ("test-images", &args.test_images),
        ("test-labels", &args.test_labels),
        ("test-npy", &args.test_npy),
        ("test-labels-npy", &args.test_labels_npy),
        ("calib-images", &args.calib_images),
        ("calib-npy", &args.calib_npy),
    ];
    inputs.extend(given.iter().filter_map(|(f, p)| Some((*f, (*p).clone()?))));
    if let Some(dir) = &args.cifar_dir {
        if !dir.is_dir() {
            return Err(invalid(
                "cifar-dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        let files = std::fs::read_dir(dir)
            .map_err(|e| invalid("cifar-dir", format!("{}: {e}", dir.display())))?;
        inputs.extend(
            files
                .filter_map(|f| Some(f.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "bin"))
                .map(|p| ("cifar-dir", p)),
        );
    }
    for (flag, path) in &inputs {
        let (flag, path) = (*flag, path);
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(flag, format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(invalid(
                flag,
                format!("{} is not a regular file", path.display()),
            ));
        }
    }
    let mut outputs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(dir) = &args.save_dir {
        if dir.exists() && !dir.is_dir() {
            return Err(invalid(
                "save-dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid("save-dir", format!("{}: {e}", dir.display())))?;
        writable_folder("save-dir", Some(dir))?;
        outputs.extend(saved.iter().map(|name| ("save-dir", dir.join(name))));
    }
    // After --save-dir is made: the report may go into it.
    if let Some(json) = &args.json {
        if json.is_dir() {
            return Err(invalid(
                "json",
                format!("{} is a folder; give a file name", json.display()),
            ));
        }
        writable_folder("json", json.parent())?;
        outputs.push(("json", json.clone()));
    }
    let mut taken: Vec<(String, PathBuf)> = inputs
        .iter()
        .filter_map(|(flag, p)| Some((format!("the --{flag} file"), identity(p)?)))
        .collect();
    for (flag, path) in outputs {
        let Some(id) = identity(&path) else {
            continue;
        };
        if let Some((what, _)) = taken.iter().find(|(_, other)| *other == id) {
            return Err(invalid(
                flag,
                format!("{} is {what}: it would be overwritten", path.display()),
            ));
        }
        taken.push((format!("the --{flag} output"), id));
    }
    Ok(())
}
