//! Reading a network's shape off a state dict's keys: the helpers every family's
//! inference uses.

use crate::error::{Error, Result, Shape};
use crate::state_dict::StateDict;

/// The error for `key`, which does not fit the `family`.
pub(crate) fn arch(family: &str, key: &str, reason: impl Into<String>) -> Error {
    Error::Architecture {
        family: family.to_string(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Dimension `axis` of `key` (a non-empty rank-`rank` tensor), a width the network is
/// built with, checked against the `witnesses` that carry the same width (tensor and
/// axis; those absent are passed over): when every witness agrees on another value,
/// `key` is the odd one out and the error names it, not the tensors that follow it.
pub(crate) fn width_of(
    state: &StateDict,
    family: &str,
    (key, rank, axis): (&str, usize, usize),
    witnesses: &[(&str, usize)],
) -> Result<usize> {
    let width = shape_of(state, family, key, rank)?[axis];
    let seen: Vec<(&str, usize)> = witnesses
        .iter()
        .filter_map(|&(w, a)| Some((w, *state.get(w)?.shape.get(a)?)))
        .collect();
    match seen.first() {
        Some(&(_, other)) if other != width && seen.iter().all(|&(_, v)| v == other) => {
            let names: Vec<&str> = seen.iter().map(|&(w, _)| w).collect();
            Err(arch(
                family,
                key,
                format!(
                    "{width} along dimension {axis}, but {} {} {other}",
                    names.join(" and "),
                    if names.len() == 1 { "has" } else { "have" }
                ),
            ))
        }
        _ => Ok(width),
    }
}

/// The shape of `key`, which must be a non-empty rank-`rank` tensor.
pub(crate) fn shape_of<'s>(
    state: &'s StateDict,
    family: &str,
    key: &str,
    rank: usize,
) -> Result<&'s [usize]> {
    let t = state.get(key).ok_or_else(|| arch(family, key, "missing"))?;
    if t.shape.len() != rank {
        return Err(arch(
            family,
            key,
            format!(
                "expected a rank-{rank} tensor, found shape {}",
                Shape(t.shape.clone())
            ),
        ));
    }
    if t.shape.contains(&0) {
        return Err(arch(
            family,
            key,
            format!("a zero-sized tensor, shape {}", Shape(t.shape.clone())),
        ));
    }
    Ok(&t.shape)
}

/// The indices `i` for which `format(i)` is a key, counted from 0 while they last.
pub(crate) fn count_while(state: &StateDict, format: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| state.contains(&format(i))).count()
}

/// The tail of a family's `infer`: `config`, read off `state`'s keys, once it is
/// valid (`validate`) and needs no more parameters (`size`) than `state` holds values
/// (see [`check_size`]; the error names `key`).
pub(crate) fn inferred<C>(
    state: &StateDict,
    family: &str,
    key: &str,
    config: C,
    validate: impl Fn(&C) -> Result<()>,
    size: impl Fn(&C) -> usize,
) -> Result<C> {
    validate(&config)?;
    check_size(state, family, key, size(&config))?;
    Ok(config)
}

/// Refuses an architecture read off the keys that needs more parameters than `state`
/// holds values: a mis-shaped tensor or thousands of block keys must not make the
/// network, and its allocation, huge. The strict load names the keys otherwise.
pub(crate) fn check_size(state: &StateDict, family: &str, key: &str, needed: usize) -> Result<()> {
    let stored = state
        .iter()
        .map(|(_, t)| t.numel())
        .fold(0usize, usize::saturating_add);
    if needed > stored {
        return Err(arch(
            family,
            key,
            format!(
                "the architecture read off the keys needs {needed} parameters, but the file holds only {stored} values"
            ),
        ));
    }
    Ok(())
}
