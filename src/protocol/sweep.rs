//! Sweeps across machines: a study's test images split into shards, each evaluated by
//! a process of its own (`reflow prune --shard I/N`), and their partial reports merged
//! into exactly the report one process would have written (`reflow merge`).
//!
//! The unit of work is a *block* of test images: the signal images first, then the
//! others, each in runs of at most [`EVAL_BATCH`](super::EVAL_BATCH) — the batches the
//! protocol evaluates anyway. Shard `I` of `N` takes blocks `[I·B/N, (I+1)·B/N)` of the
//! `B`. Each block's results are a [`Tally`]: correct predictions and agreements (which
//! add), the sum of its KL divergences, and the batch-norm statistics of its signal
//! images (moments, which merge by Chan's formula). One process folds its blocks' tallies
//! in image order; so does the merge, over the shards' tallies in shard order — the same
//! additions in the same order, hence the same bits. The first shard's blocks begin the
//! fold, so it writes them folded; the others write one tally per block.
//!
//! Everything else — pruning, the calibration pass, REFLOW, the repair's choice and its
//! check — depends on the calibration images alone, and every shard computes it whole:
//! the network it evaluates must be the one finished with the whole calibration set,
//! and that pass is small next to an evaluation set of tens of thousands of images.
//!
//! ```
//! use reflow::protocol::sweep::Shard;
//!
//! let shard: Shard = "1/4".parse()?;
//! assert_eq!((shard.index(), shard.count()), (1, 4));
//! assert_eq!(shard.blocks(10), 2..5); // of 10 blocks: 0..2, 2..5, 5..7, 7..10
//! assert!("4/4".parse::<Shard>().is_err());
//! # Ok::<(), reflow::Error>(())
//! ```

use super::{Evaluation, Number, Pruned, Report, Run};
use crate::error::{Error, Result};
use crate::metrics::Accuracy;
use crate::stats::{LayerStats, Signal};
use crate::trust::Fidelity;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Which part of a sweep a process evaluates: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// The whole sweep in one process: shard 0 of 1.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count` (`index` counts from 0).
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::zero("shard count"));
        }
        if index >= count {
            return Err(Error::invalid(
                "shard",
                format!(
                    "{index}/{count}: the index counts from 0 and is below the count (0/{count} to {}/{count})",
                    count - 1
                ),
            ));
        }
        Ok(Shard { index, count })
    }

    /// Its index, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many shards the sweep has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The blocks it takes of `blocks`: `[index·blocks/count, (index+1)·blocks/count)`.
    pub fn blocks(&self, blocks: usize) -> Range<usize> {
        self.index * blocks / self.count..(self.index + 1) * blocks / self.count
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `I/N`, as `--shard` takes it.
impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Shard> {
        let bad = || {
            Error::invalid(
                "shard",
                format!("\"{s}\": expected INDEX/COUNT, e.g. 0/4 for the first of four"),
            )
        };
        let (index, count) = s.split_once('/').ok_or_else(bad)?;
        let number = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        Shard::new(number(index)?, number(count)?)
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The test images in blocks: the first `signal` (the signal images), then the rest,
/// each in runs of at most `batch`.
///
/// ```
/// use reflow::protocol::sweep::blocks;
///
/// assert_eq!(blocks(10, 3, 4), [0..3, 3..7, 7..10]);
/// ```
pub fn blocks(images: usize, signal: usize, batch: usize) -> Vec<Range<usize>> {
    let signal = signal.min(images);
    let runs = |start: usize, end: usize| {
        (start..end)
            .step_by(batch.max(1))
            .map(move |s| s..(s + batch).min(end))
    };
    runs(0, signal).chain(runs(signal, images)).collect()
}

/// One block's results (or several blocks', folded in image order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Images.
    pub images: usize,
    /// Correct top-1 predictions, with labels.
    pub correct: Option<usize>,
    /// Images whose top-1 agrees with the dense network's (not for the dense network).
    pub agree: Option<usize>,
    /// The sum of their KL divergences from the dense network, in image order.
    pub kl: Option<Number>,
    /// The batch-norm outputs' moments over its signal images (none past them).
    pub signal: LayerStats,
}

impl Tally {
    /// Folds `next` in after this one: counts and KL sums add, statistics merge.
    pub fn absorb(&mut self, next: &Tally) -> Result<()> {
        let mismatch = |what: &str| {
            Error::invalid(
                "tallies",
                format!("{what} in one part and not in the next: parts of different runs"),
            )
        };
        let add = |a: Option<usize>, b: Option<usize>, what: &str| match (a, b) {
            (Some(a), Some(b)) => Ok(Some(a + b)),
            (None, None) => Ok(None),
            _ => Err(mismatch(what)),
        };
        self.correct = add(self.correct, next.correct, "correct predictions")?;
        self.agree = add(self.agree, next.agree, "agreements")?;
        self.kl = match (self.kl, next.kl) {
            (Some(a), Some(b)) => Some(Number(a.0 + b.0)),
            (None, None) => None,
            _ => return Err(mismatch("KL sums")),
        };
        self.images += next.images;
        self.signal.merge(&next.signal)
    }

    /// `tallies` folded in order into one.
    pub fn fold<'t>(tallies: impl IntoIterator<Item = &'t Tally>) -> Result<Tally> {
        let mut tallies = tallies.into_iter();
        let mut folded = tallies.next().cloned().unwrap_or_default();
        for t in tallies {
            folded.absorb(t)?;
        }
        Ok(folded)
    }
}

impl Evaluation {
    /// The evaluation `tallies` make, folded in order (see the [module](self)).
    pub fn from_tallies(tallies: Vec<Tally>) -> Result<Evaluation> {
        let all = Tally::fold(&tallies)?;
        let accuracy = all.correct.map(|correct| Accuracy {
            correct,
            total: all.images,
        });
        let fidelity = match (all.agree, all.kl) {
            (Some(agree), Some(kl)) => Some(Fidelity::from_sums(all.images, agree, kl.0)),
            _ => None,
        };
        Ok(Evaluation {
            accuracy,
            signal: Signal::from_stats(&all.signal),
            fidelity,
            tallies,
        })
    }
}

/// A shard's report: the report as one process writes it, of the shard's images
/// alone, with what a merge needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialReport {
    /// Which shard, of what.
    pub partial: Part,
    /// The report of the shard's images.
    pub report: Report,
    /// The dense network's tallies, then each run's: pruned, repaired.
    pub tallies: Tallies,
}

/// What a partial report says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// `reflow partial report`, so that no other JSON is taken for one.
    pub format: String,
    /// `I/N`.
    pub shard: Shard,
    /// The test images it evaluated, `[start, end)`.
    pub images: [usize; 2],
    /// The sweep's test images.
    pub test_images: usize,
    /// What every shard of one sweep shares: the checkpoint, the options, the data's
    /// size (see [`Fingerprint`]).
    pub fingerprint: String,
}

/// The format name partial reports carry.
pub const PARTIAL_FORMAT: &str = "reflow partial report 1";

/// The tallies of a partial report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tallies {
    /// The dense network's.
    pub dense: Vec<Tally>,
    /// Each run's, pruned and repaired.
    pub runs: Vec<[Vec<Tally>; 2]>,
}

impl PartialReport {
    /// The partial report of `shard`, which evaluated `images` of `test_images`:
    /// `report` made of its evaluations (`dense`, `runs`) as one process makes it.
    pub fn new(
        (shard, images, test_images): (Shard, Range<usize>, usize),
        fingerprint: &Fingerprint,
        report: Report,
        dense: &Evaluation,
        runs: &[(Run, Pruned)],
    ) -> PartialReport {
        let runs = runs
            .iter()
            .map(|(run, _)| [run.pruned.tallies.clone(), run.repaired.tallies.clone()]);
        PartialReport {
            partial: Part {
                format: PARTIAL_FORMAT.to_string(),
                shard,
                images: [images.start, images.end],
                test_images,
                fingerprint: fingerprint.hex(),
            },
            report,
            tallies: Tallies {
                dense: dense.tallies.clone(),
                runs: runs.collect(),
            },
        }
    }
}

/// Merges the partial reports of every shard of one sweep (`(name, report)`, the name
/// for errors — a file's path) into the report one process would have written: the
/// same bytes once serialised, but for each run's `secs` (the slowest shard's).
/// Refuses partials of different sweeps or runs, a shard missing or given twice.
pub fn merge(parts: &[(String, PartialReport)]) -> Result<Report> {
    let Some((first_name, first)) = parts.first() else {
        return Err(Error::empty("partial reports", "none given"));
    };
    let count = first.partial.shard.count();
    let mut by_index: Vec<Option<&(String, PartialReport)>> = vec![None; count];
    for part in parts {
        let (name, p) = part;
        let fail = |reason: String| Error::invalid(name.clone(), reason);
        if p.partial.format != PARTIAL_FORMAT {
            return Err(fail(format!(
                "format \"{}\", not \"{PARTIAL_FORMAT}\"",
                p.partial.format
            )));
        }
        if p.partial.shard.count() != count
            || p.partial.fingerprint != first.partial.fingerprint
            || p.partial.test_images != first.partial.test_images
        {
            return Err(fail(format!(
                "shard {} of a different sweep than {first_name} (shard {}): the checkpoint, the options or the test set differ",
                p.partial.shard, first.partial.shard
            )));
        }
        let slot = &mut by_index[p.partial.shard.index()];
        if let Some((other, _)) = slot {
            return Err(fail(format!(
                "shard {} given twice (also {other})",
                p.partial.shard
            )));
        }
        *slot = Some(part);
    }
    let missing: Vec<String> = (0..count)
        .filter(|&i| by_index[i].is_none())
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            "partial reports",
            format!("shard(s) {} missing", missing.join(", ")),
        ));
    }
    let parts: Vec<&(String, PartialReport)> = by_index.into_iter().flatten().collect();
    let skeleton = first.report.without_test_results();
    let mut next_image = 0;
    for (name, p) in &parts {
        let fail = |reason: String| Error::invalid(name.clone(), reason);
        if p.report.without_test_results() != skeleton {
            let at = first_difference(&p.report.without_test_results(), &skeleton);
            return Err(fail(format!(
                "a different run than {first_name}: the reports differ at {at}"
            )));
        }
        if p.tallies.runs.len() != skeleton.runs.len() {
            return Err(fail(format!(
                "tallies of {} runs, the report has {}",
                p.tallies.runs.len(),
                skeleton.runs.len()
            )));
        }
        if p.partial.images[0] != next_image || p.partial.images[1] < next_image {
            return Err(fail(format!(
                "shard {} evaluated images {}..{}, the shards before it end at {next_image}",
                p.partial.shard, p.partial.images[0], p.partial.images[1]
            )));
        }
        next_image = p.partial.images[1];
    }
    if next_image != first.partial.test_images {
        return Err(Error::invalid(
            "partial reports",
            format!(
                "the shards evaluated {next_image} of {} test images",
                first.partial.test_images
            ),
        ));
    }
    let concat = |pick: &dyn Fn(&Tallies) -> &Vec<Tally>| -> Vec<Tally> {
        parts
            .iter()
            .flat_map(|(_, p)| pick(&p.tallies).iter().cloned())
            .collect()
    };
    let mut report = first.report.clone();
    let dense = Evaluation::from_tallies(concat(&|t| &t.dense))?;
    report.dense = super::DenseReport::of(&dense, next_image);
    for (r, run) in report.runs.iter_mut().enumerate() {
        let pruned = Evaluation::from_tallies(concat(&|t| &t.runs[r][0]))?;
        let repaired = Evaluation::from_tallies(concat(&|t| &t.runs[r][1]))?;
        run.set_evaluations(&pruned, &repaired);
        run.secs = parts
            .iter()
            .map(|(_, p)| p.report.runs[r].secs)
            .fold(0.0, f64::max);
    }
    Ok(report)
}

/// The first place, as a JSON path, where `a` and `b` differ.
fn first_difference(a: &Report, b: &Report) -> String {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (key, va) in x {
                    let path = match at.is_empty() {
                        true => key.clone(),
                        false => format!("{at}.{key}"),
                    };
                    match y.get(key) {
                        Some(vb) => match walk(va, vb, path) {
                            Some(found) => return Some(found),
                            None => continue,
                        },
                        None => return Some(path),
                    }
                }
                (x.len() != y.len()).then_some(at)
            }
            (Value::Array(x), Value::Array(y)) => {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    if let Some(found) = walk(va, vb, format!("{at}[{i}]")) {
                        return Some(found);
                    }
                }
                (x.len() != y.len()).then_some(at)
            }
            _ => (a != b).then_some(at),
        }
    }
    let value = |r: &Report| serde_json::to_value(r).unwrap_or_default();
    walk(&value(a), &value(b), String::new()).unwrap_or_else(|| "the top".into())
}

/// A 64-bit FNV-1a hash of what makes a sweep one sweep (the checkpoint's bytes, the
/// options, the test set's size): shards whose fingerprints differ are not merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Nothing hashed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `bytes` in.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Sixteen hexadecimal digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_block_once_in_order() {
        for blocks in [1, 2, 7, 40] {
            for count in 1..=blocks {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard::new(index, count).unwrap().blocks(blocks);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty(), "{index}/{count} of {blocks}");
                    next = r.end;
                }
                assert_eq!(next, blocks);
            }
        }
        for bad in ["", "1", "1/0", "2/2", "a/3", "-1/3", "1/3/4"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(" 2 / 5".parse::<Shard>().unwrap().to_string(), "2/5");
    }

    #[test]
    fn the_fingerprint_is_fnv1a() {
        // FNV-1a 64 of "a", as published.
        assert_eq!(Fingerprint::new().add(b"a").hex(), "af63dc4c8601ec8c");
    }
}
